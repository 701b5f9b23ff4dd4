"""Seed blend: a run's initial noise as the spherical interpolation of two seeds' noise.

The slerp is the one of diffusers' community interpolation pipeline
(``examples/community/interpolate_stable_diffusion.py``, ``slerp``): over the whole tensor, the angle from the normalised dot product,
plain lerp where |dot| > 0.9995 (the two are nearly parallel), computed in float64 and cast back. Each seed's noise
is drawn exactly as a single run draws it, before ``init_noise_sigma``. Why not lerp: two independent Gaussians of
dimension d each have norm about sqrt(d) and are nearly orthogonal, so their lerp midpoint has norm about
sqrt(d / 2): a sample the model never saw, and its image comes out washed out (:func:`noise_norms`).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from engine.errors import InputError
from engine.validation import check_float, check_int

DOT_THRESHOLD = 0.9995  # the community pipeline's: above it the vectors are parallel enough for lerp


def slerp(t: float, v0: torch.Tensor, v1: torch.Tensor, dot_threshold: float = DOT_THRESHOLD) -> torch.Tensor:
    """Spherical interpolation of ``v0`` and ``v1`` (any shape, the whole tensor one vector) at ``t``."""
    a, b = v0.double(), v1.double()
    dot = float((a * b).sum() / (a.norm() * b.norm()))
    if abs(dot) > dot_threshold:
        out = (1 - t) * a + t * b
    else:
        theta_0 = math.acos(dot)
        theta_t = theta_0 * t
        out = (math.sin(theta_0 - theta_t) / math.sin(theta_0)) * a + (math.sin(theta_t) / math.sin(theta_0)) * b
    return out.to(v0.dtype)


def lerp(t: float, v0: torch.Tensor, v1: torch.Tensor) -> torch.Tensor:
    """Linear interpolation, for comparison: (1 - t) v0 + t v1."""
    return ((1 - t) * v0.double() + t * v1.double()).to(v0.dtype)


def seed_noise(seed: int, shape: Sequence[int], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The noise a single run of ``seed`` starts from (before ``init_noise_sigma``): randn on a CPU generator."""
    from diffusers.utils.torch_utils import randn_tensor

    return randn_tensor(tuple(shape), generator=torch.Generator("cpu").manual_seed(seed), dtype=dtype)


def noise_norms(seed: int, seed_b: int, shape: Sequence[int], ts: Sequence[float]) -> dict[str, list[float]]:
    """||noise|| / sqrt(d) along ``ts`` for lerp and for slerp of the two seeds' noise: {"t", "lerp", "slerp"}.
    About 0.707 against 1.0 at t = 0.5 for independent Gaussians."""
    v0, v1 = seed_noise(seed, shape), seed_noise(seed_b, shape)
    d = math.sqrt(v0.numel())
    return {"t": [float(t) for t in ts],
            "lerp": [float(lerp(t, v0, v1).double().norm()) / d for t in ts],
            "slerp": [float(slerp(t, v0, v1).double().norm()) / d for t in ts]}


def check_blend(seed_b, seed_blend) -> None:
    """A request's second seed (-1: none) and blend (0 to 1; above 0 only with a second seed)."""
    check_int("seed_b", seed_b, -1, 2**63 - 1)
    check_float("seed blend", seed_blend, 0.0, 1.0)
    if seed_blend and seed_b < 0:
        raise InputError(f"seed blend {seed_blend:g} needs a second seed (seed_b) to blend toward; got none",
                         field="seed_b")


def blended_noise(t: float, latents: torch.Tensor, seed_b: int) -> torch.Tensor:
    """``latents`` (a seed's noise, as drawn) slerped at ``t`` toward ``seed_b``'s noise of the same shape."""
    other = seed_noise(seed_b, latents.shape, latents.dtype).to(latents.device)
    return slerp(t, latents.cpu(), other.cpu()).to(latents.device)
