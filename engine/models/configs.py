"""Read a model's configs without loading its weights: scheduler settings, native image size."""

from __future__ import annotations

import json
from pathlib import Path

from engine.errors import ModelLoadError


def read_scheduler_config(location: str | Path) -> dict:
    """A model's ``scheduler/scheduler_config.json``: a diffusers folder or a cached hub id. No weights are read."""
    from diffusers import DDPMScheduler

    try:
        return dict(DDPMScheduler.load_config(str(location), subfolder="scheduler"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(
            f"no readable scheduler config for {str(location)!r}: {type(exc).__name__}: {exc}"
        ) from None


def native_size(folder: str | Path) -> tuple[int, int] | None:
    """(width, height) a text-to-image model in diffusers layout was trained at:
    ``unet.sample_size * 2 ** (number of VAE blocks - 1)``; None where the configs are not readable."""
    folder = Path(folder)
    try:
        unet = json.loads((folder / "unet" / "config.json").read_text())
        vae = json.loads((folder / "vae" / "config.json").read_text())
        side = int(unet["sample_size"]) * 2 ** (len(vae["block_out_channels"]) - 1)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return side, side


def unet_side(folder: str | Path) -> int | None:
    """The side an unconditional model in diffusers layout was trained at: its UNet's square ``sample_size``;
    None where the config is not readable or not square."""
    folder = Path(folder)
    config = folder / "unet" / "config.json"
    if not config.is_file():  # google/ddpm-cat-256's early layout: the UNet's config in the folder itself
        config = folder / "config.json"
    try:
        size = json.loads(config.read_text())["sample_size"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if isinstance(size, list) and len(set(size)) == 1:
        size = size[0]
    return size if isinstance(size, int) else None


def latent_shape(folder: str | Path, width: int, height: int) -> tuple[int, int, int, int] | None:
    """(1, C, h, w): the initial noise of one ``width`` x ``height`` text-to-image run of the model in ``folder``
    (the UNet's in_channels; the VAE's downscaling, 2 ** (number of VAE blocks - 1)); None where unreadable."""
    folder = Path(folder)
    try:
        unet = json.loads((folder / "unet" / "config.json").read_text())
        vae = json.loads((folder / "vae" / "config.json").read_text())
        scale = 2 ** (len(vae["block_out_channels"]) - 1)
        return 1, int(unet["in_channels"]), int(height) // scale, int(width) // scale
    except (OSError, ValueError, KeyError, TypeError):
        return None
