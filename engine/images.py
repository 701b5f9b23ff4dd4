"""Turning any image PIL opens into 8-bit pixels, the one way every wing does it."""

from __future__ import annotations

import numpy as np
from PIL import Image

WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # 16-bit (and 32-bit integer) greyscale
FLOAT_MODE = "F"


def to_8bit(image: Image.Image) -> Image.Image:
    """``image`` with 8 bits a channel: 16-bit greyscale is scaled by 255/65535 (PIL's own ``convert`` clips
    it at 255, so a 16-bit PNG came out almost all white), float images by their 0..1 (or 0..max) range."""
    if image.mode in WIDE_MODES:
        values = np.asarray(image, dtype=np.float64)
        return Image.fromarray(np.round(np.clip(values, 0, 65535) * (255.0 / 65535.0)).astype(np.uint8), "L")
    if image.mode == FLOAT_MODE:
        values = np.asarray(image, dtype=np.float64)
        top = 1.0 if values.max(initial=0.0) <= 1.0 else values.max()
        return Image.fromarray(np.round(np.clip(values / top, 0, 1) * 255).astype(np.uint8), "L")
    return image


def to_rgb(image: Image.Image) -> Image.Image:
    """An RGB image; transparency is laid on white, not dropped; wide greyscale is scaled, not clipped."""
    image = to_8bit(image)
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")
