"""Turning any image PIL opens into 8-bit pixels, the one way every wing does it; and bringing an image to a size
by AUTOMATIC1111's resize modes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from engine.errors import InputError
from engine.validation import check_choice

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
        with Image.open(source) as im:
            im.load()  # the pixels, read before the file closes (an RGB image is returned as it is)
            return to_rgb(im)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        name = Path(str(source)).name
        cause = str(exc).replace(str(source), name)  # PIL quotes the whole path: the file's name is enough
        raise InputError(f"{name!r} is not an image PIL can read (PNG, JPEG, WebP, ...): {cause}",
                         field="image") from None


# AUTOMATIC1111's img2img resize modes, by its names (``modules/images.py::resize_image``; resampled with Lanczos as
# it does with no upscaler set). Each function needs only PIL's ``Image``: the code box shows its source as it is.
# An image already at width x height comes back unchanged in every mode.
def just_resize(image: Image.Image, width: int, height: int) -> Image.Image:
    """``image`` stretched to ``width`` x ``height``, its aspect not kept (A1111's "Just resize")."""
    return image.resize((width, height), Image.LANCZOS)


def crop_and_resize(image: Image.Image, width: int, height: int) -> Image.Image:
    """``image`` scaled to cover ``width`` x ``height``, its aspect kept, what overflows cropped about the centre
    (A1111's "Crop and resize")."""
    if width * image.height > image.width * height:  # the frame is wider: the width fits, the height overflows
        size = (width, image.height * width // image.width)
    else:
        size = (image.width * height // image.height, height)
    left, top = size[0] // 2 - width // 2, size[1] // 2 - height // 2
    return image.resize(size, Image.LANCZOS).crop((left, top, left + width, top + height))


def resize_and_fill(image: Image.Image, width: int, height: int) -> Image.Image:
    """``image`` scaled to fit inside ``width`` x ``height``, its aspect kept, centred; the bands left over are
    filled by drawing its edge rows (or columns) out across them (A1111's "Resize and fill")."""
    wide = width * image.height < image.width * height  # the image is wider: bands above and below it
    size = (width, image.height * width // image.width) if wide else (image.width * height // image.height, height)
    fitted = image.resize(size, Image.LANCZOS)
    left, top = width // 2 - size[0] // 2, height // 2 - size[1] // 2
    out = Image.new("RGB", (width, height))
    out.paste(fitted, (left, top))
    # Each band: a box of no thickness on the fitted image's edge, resized to the band (bicubic), as A1111 draws it.
    w, h = size
    if wide:
        bands = [((0, 0, w, 0), (0, 0), top), ((0, h, w, h), (0, top + h), height - top - h)]
    else:
        bands = [((0, 0, 0, h), (0, 0), left), ((w, 0, w, h), (left + w, 0), width - left - w)]
    for box, at, thickness in bands:
        if thickness > 0:
            band = (width, thickness) if wide else (thickness, height)
            out.paste(fitted.resize(band, Image.BICUBIC, box=box), at)
    return out


RESIZE_MODES = {"Just resize": just_resize, "Crop and resize": crop_and_resize, "Resize and fill": resize_and_fill}


def resize_image(image: Image.Image, width: int, height: int, mode: str = "Just resize") -> Image.Image:
    """``image`` brought to ``width`` x ``height`` as resize ``mode`` (a key of ``RESIZE_MODES``) says."""
    check_choice("resize mode", mode, RESIZE_MODES)
    return RESIZE_MODES[mode](image, width, height)
