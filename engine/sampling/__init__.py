"""Sampling: the denoising loops (text to image, img2img, unconditional), schedulers and previews. A loop yields
its ``Done`` and saves nothing: engine.records records and saves it."""
