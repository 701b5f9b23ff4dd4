"""Training objectives: what a model learns (noise prediction in pixels, VAE and text to image in latents)."""
