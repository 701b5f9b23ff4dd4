"""Turning any image PIL opens into 8-bit pixels, the one way every wing does it."""

from __future__ import annotations

import struct
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from engine.errors import InputError

# The largest image read from a person (an upload, a PNG to read or replay, training data): 8192 x 8192. A
# model here works at 2048 px at most; a 12000 x 12000 PNG of 445 KB took 2.3 GiB and 16 s to decode whole.
MAX_PIXELS = 8192 * 8192
PNG_HEADER = struct.Struct(">8sI4sII")  # signature, IHDR's length and type, width, height
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


def check_pixels(path: str | Path, field: str = "image", name: str | None = None) -> tuple[int, int]:
    """The (width, height) of the image file at ``path``, read from its header alone; :class:`InputError` (for
    ``field``) where it has more than :data:`MAX_PIXELS` pixels, before anything decodes it whole. A file PIL
    cannot open passes: the decode that follows names what is wrong with it. ``name``: the file as the message
    calls it (its own name by default)."""
    name = name or Path(str(path)).name
    with open(path, "rb") as f:
        head = f.read(PNG_HEADER.size)
    if len(head) == PNG_HEADER.size and head.startswith(b"\x89PNG\r\n\x1a\n") and head[12:16] == b"IHDR":
        size = PNG_HEADER.unpack(head)[3:]  # PIL's own check would refuse one past twice its limit unmeasured
    else:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(path) as im:  # the header only
                    size = im.size
        except Image.DecompressionBombError:
            raise InputError(f"{field} {name!r} has more than {2 * Image.MAX_IMAGE_PIXELS} pixels by its header; "
                             f"images of at most {MAX_PIXELS} pixels (8192 x 8192) are read", field=field) from None
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
            return 0, 0
    width, height = size
    if width * height > MAX_PIXELS:
        raise InputError(f"{field} {name!r} is {width} x {height} pixels ({width * height}); images of at most "
                         f"{MAX_PIXELS} pixels (8192 x 8192) are read", field=field)
    return width, height


def open_rgb(source: str | Path | Image.Image | np.ndarray) -> Image.Image:
    """An RGB PIL image from a path, a PIL image or a uint8 array; :class:`InputError` for anything else."""
    if isinstance(source, Image.Image):
        return to_rgb(source)
    if isinstance(source, np.ndarray):
        if source.ndim not in (2, 3) or source.dtype != np.uint8:
            raise InputError(f"an image array must be (H, W) or (H, W, C) uint8; got {source.shape} {source.dtype}",
                             field="image")
        return to_rgb(Image.fromarray(source))
    if not isinstance(source, (str, Path)):
        raise InputError(f"image must be an image file, a PIL image or a uint8 array; got {type(source).__name__}",
                         field="image")
    try:
        check_pixels(source)
        with Image.open(source) as im:
            im.load()  # the pixels, read before the file closes (an RGB image is returned as it is)
            return to_rgb(im)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        name = Path(str(source)).name
        cause = str(exc).replace(str(source), name)  # PIL quotes the whole path: the file's name is enough
        raise InputError(f"{name!r} is not an image PIL can read (PNG, JPEG, WebP, ...): {cause}",
                         field="image") from None


def fit(image: Image.Image, width: int, height: int) -> Image.Image:
    """``image`` cropped about its centre to the aspect of ``width`` x ``height``, then resized to it (bicubic)."""
    scale = max(width / image.width, height / image.height)
    crop_w, crop_h = round(width / scale), round(height / scale)
    left, top = (image.width - crop_w) // 2, (image.height - crop_h) // 2
    return image.crop((left, top, left + crop_w, top + crop_h)).resize((width, height), Image.BICUBIC)
