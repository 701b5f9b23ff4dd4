"""Previewers: turn a latent or pixel tensor into a small uint8 RGB image.

A previewer is any callable ``(tensor (B, C, h, w)) -> (H, W, 3) uint8``. It is
called off the denoising loop (see :class:`engine.events.Preview`).
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import numpy as np
import torch
from diffusers import SchedulerMixin

from engine.events import Previewer

# Linear latent-to-RGB for SD 1.x latents; rows: latent channels, columns: R, G, B.
# ComfyUI's refit (comfy/latent_formats.py, SD15), applied to the unscaled latents.
SD15_LATENT_RGB = (
    (0.3512, 0.2297, 0.3227),
    (0.3250, 0.4974, 0.2350),
    (-0.2829, 0.1762, 0.2721),
    (-0.2120, -0.2616, -0.7177),
)
LATENT_RGB_FILE = "latent_rgb.json"  # stored beside a model's vae/ when fitted for it


def as_array(x) -> np.ndarray:
    """A float32 numpy copy of a tensor (any device) or array.

    Preview math runs in the consumer's thread on numpy, not torch: a torch op there
    would start a second OpenMP team beside the denoising loop's, which halves the
    loop's speed on a 2-core machine (measured: bench/txt2img.py).
    """
    if isinstance(x, np.ndarray):
        return x.astype(np.float32, copy=False)
    x = x.detach()
    if x.device.type != "cpu":
        x = x.to("cpu")
    if x.dtype == torch.bfloat16:
        x = x.float()
    return x.numpy().astype(np.float32, copy=False)


def images_to_uint8(images) -> np.ndarray:
    """(B, 3|1, H, W) in [-1, 1] -> (B, H, W, 3) uint8, each image on its own."""
    images = as_array(images)
    if images.shape[1] == 1:
        images = np.repeat(images, 3, axis=1)
    # Clamp and round before casting (ComfyUI latent_preview.py::preview_to_image).
    images = np.round(np.clip(images / 2 + 0.5, 0, 1) * 255).astype(np.uint8)
    return np.ascontiguousarray(images.transpose(0, 2, 3, 1))


def spaced_grid(images: np.ndarray, *, min_tile: int, gap: int, colour: tuple[int, int, int],
                cols: int | None = None) -> np.ndarray:
    """(B, h, w, 3) uint8 -> (H, W, 3) uint8: as square as the batch allows (or ``cols`` a row), row by row, each
    image enlarged (nearest, an integer factor) to at least ``min_tile`` pixels a side, ``gap`` pixels of
    ``colour`` between neighbours and none around the edge. An empty cell in the last row stays ``colour``."""
    b, h, w, _ = images.shape
    factor = max(1, math.ceil(min_tile / max(1, min(h, w))))
    th, tw = h * factor, w * factor
    cols = cols or math.ceil(math.sqrt(b))
    rows = math.ceil(b / cols)
    grid = np.empty((rows * th + (rows - 1) * gap, cols * tw + (cols - 1) * gap, 3), dtype=np.uint8)
    grid[:] = np.asarray(colour, dtype=np.uint8)
    for i in range(b):
        r, k = divmod(i, cols)
        y, x = r * (th + gap), k * (tw + gap)
        grid[y:y + th, x:x + tw] = images[i].repeat(factor, axis=0).repeat(factor, axis=1)
    return grid


def to_uint8(images) -> np.ndarray:
    """(B, 3|1, H, W) in [-1, 1] -> (H, W, 3) uint8 of the first image (or a grid)."""
    images = as_array(images)
    if images.shape[1] == 1:
        images = np.repeat(images, 3, axis=1)
    grid = make_grid(images)  # (3, H, W)
    # Clamp and round before casting (ComfyUI latent_preview.py::preview_to_image).
    grid = np.round(np.clip(grid / 2 + 0.5, 0, 1) * 255).astype(np.uint8)
    return np.ascontiguousarray(grid.transpose(1, 2, 0))


def make_grid(images: np.ndarray) -> np.ndarray:
    """(B, C, H, W) -> (C, rows*H, cols*W), as square as the batch allows."""
    b, c, h, w = images.shape
    if b == 1:
        return images[0]
    cols = math.ceil(math.sqrt(b))
    rows = math.ceil(b / cols)
    grid = np.zeros((c, rows * h, cols * w), dtype=images.dtype)
    for i in range(b):
        r, k = divmod(i, cols)
        grid[:, r * h : (r + 1) * h, k * w : (k + 1) * w] = images[i]
    return grid


def upscale_nearest(image: np.ndarray, min_side: int) -> np.ndarray:
    """Repeat pixels by an integer factor so the short side reaches ``min_side``."""
    factor = max(1, math.ceil(min_side / max(1, min(image.shape[:2]))))
    if factor == 1:
        return image
    return image.repeat(factor, axis=0).repeat(factor, axis=1)


class LatentRGBPreviewer:
    """x -> x @ M + b at latent resolution, then a nearest upscale (A1111/ComfyUI style)."""

    def __init__(self, matrix=SD15_LATENT_RGB, bias=(0.0, 0.0, 0.0), min_side: int = 256):
        self.matrix = np.asarray(matrix, dtype=np.float32)  # (C, 3)
        self.bias = np.asarray(bias, dtype=np.float32)  # (3,)
        self.min_side = min_side

    @classmethod
    def for_model(cls, model_dir: str | Path | None, latent_channels: int) -> "LatentRGBPreviewer":
        """The fitted matrix stored with a model, else SD 1.x's (4 channels), else a channel mean."""
        if model_dir is not None:
            path = Path(model_dir) / LATENT_RGB_FILE
            if path.is_file():
                data = json.loads(path.read_text())
                return cls(data["matrix"], data.get("bias", (0.0, 0.0, 0.0)))
        if latent_channels == 4:
            return cls()
        return cls([[1.0 / latent_channels] * 3] * latent_channels)

    def __call__(self, latents, scale: float = 1.0) -> np.ndarray:
        x = as_array(latents[:4]) * scale  # (B, C, h, w)
        rgb = np.einsum("bchw,cd->bdhw", x, self.matrix) + self.bias[None, :, None, None]
        return upscale_nearest(to_uint8(rgb), self.min_side)


class PixelPreviewer:
    """For pixel-space models (UNet2DModel): the tensor already is an image in [-1, 1]."""

    def __init__(self, min_side: int = 256):
        self.min_side = min_side

    def __call__(self, images, scale: float = 1.0) -> np.ndarray:
        return upscale_nearest(to_uint8(as_array(images[:16]) * scale), self.min_side)


class VaePreviewer:
    """Full VAE decode: exact but costly; used every N steps when asked for."""

    def __init__(self, vae, min_side: int = 256):
        self.vae = vae
        self.min_side = min_side

    @torch.no_grad()
    def __call__(self, latents) -> np.ndarray:
        latents = torch.from_numpy(as_array(latents[:4])).to(self.vae.device, self.vae.dtype)
        images = self.vae.decode(latents / self.vae.config.scaling_factor).sample
        return upscale_nearest(to_uint8(images), self.min_side)

    @torch.no_grad()
    def many(self, latents: list, min_side: int | None = None) -> list[np.ndarray]:
        """Several single-image previews in one decode (a run's history: one call, not one a step)."""
        min_side = self.min_side if min_side is None else min_side
        batch = torch.from_numpy(np.concatenate([as_array(x[:1]) for x in latents])).to(self.vae.device,
                                                                                        self.vae.dtype)
        images = self.vae.decode(batch / self.vae.config.scaling_factor).sample  # (N, 3, H, W)
        return [upscale_nearest(to_uint8(images[i:i + 1]), min_side) for i in range(len(latents))]


def vp_scale(scheduler: SchedulerMixin) -> float:
    """1 / sqrt(sigma^2 + 1) for sigma-parameterised schedulers (Karras et al. 2022, eq. 7), else 1.

    Their x_t carries noise of std sigma; scaled this way it reads like the
    variance-preserving x_t of the alpha-parameterised schedulers. A scalar read
    of the CPU ``sigmas`` at the scheduler's current step: no device sync.
    """
    sigmas, index = getattr(scheduler, "sigmas", None), getattr(scheduler, "step_index", None)
    if float(scheduler.init_noise_sigma) == 1.0 or sigmas is None or index is None:
        return 1.0
    sigma = float(sigmas[min(index, len(sigmas) - 1)])
    return 1.0 / math.sqrt(sigma**2 + 1.0)


def scaled(previewer, factor: float):
    """``previewer`` drawing its input times ``factor`` (itself when the factor is 1)."""
    return previewer if factor == 1.0 else functools.partial(previewer, scale=factor)


def x0_from(model_output, sample, alpha_bar_t: float, prediction_type: str = "epsilon"):
    """The predicted clean sample x0, for tensors or numpy arrays alike.

    Ho et al. 2020, eq. 15: x0 = (x_t - sqrt(1 - alpha_bar_t) * eps) / sqrt(alpha_bar_t);
    for v-prediction (Salimans & Ho 2022, sec. 4): x0 = sqrt(alpha_bar_t) x_t - sqrt(1 - alpha_bar_t) v.
    """
    a, s = alpha_bar_t**0.5, (1 - alpha_bar_t) ** 0.5
    if prediction_type == "v_prediction":
        return a * sample - s * model_output
    if prediction_type == "sample":
        return model_output
    return (sample - s * model_output) / a


class X0Previewer:
    """Draws x0 from (model_output, x_t) when the preview is looked at, not in the loop.

    For schedulers whose ``step`` returns no ``pred_original_sample`` (DPM++, UniPC, PNDM).
    Numpy only (see :func:`as_array`); ``inner`` draws the resulting x0.
    """

    def __init__(self, scheduler: SchedulerMixin, timestep: float, inner: Previewer):
        # The alpha_bar table never changes during a run; it is read when the preview is drawn,
        # so building a previewer in the loop reads nothing from any tensor.
        self.alphas_cumprod = scheduler.alphas_cumprod
        self.timestep = timestep
        self.prediction_type = scheduler.config.get("prediction_type", "epsilon")
        self.inner = inner

    def __getstate__(self) -> dict:
        """Crossing to another process (see engine.worker): the table as numpy, no tensor."""
        table = self.alphas_cumprod
        return {**self.__dict__, "alphas_cumprod": table.cpu().numpy() if hasattr(table, "cpu") else table}

    @property
    def alpha_bar(self) -> float:
        t = min(max(int(self.timestep), 0), len(self.alphas_cumprod) - 1)
        return float(self.alphas_cumprod[t])

    def __call__(self, pair) -> np.ndarray:
        model_output, sample = (as_array(x) for x in pair)
        return self.inner(x0_from(model_output, sample, self.alpha_bar, self.prediction_type))
