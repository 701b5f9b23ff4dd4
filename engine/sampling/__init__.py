"""Sampling: the denoising loops (text to image, unconditional), schedulers, previews and saved outputs."""
