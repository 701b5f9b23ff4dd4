"""Pick the device and dtype a model runs on."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from engine.errors import InputError

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


@dataclass(frozen=True)
class Placement:
    device: torch.device
    dtype: torch.dtype  # fp16 on CUDA (half the memory, tensor cores), fp32 elsewhere


def resolve_device(choice: str = "auto") -> Placement:
    """``auto`` takes cuda, then mps, then cpu."""
    if choice not in DEVICE_CHOICES:
        raise InputError(f"unknown device {choice!r}; allowed: {', '.join(DEVICE_CHOICES)}")
    if choice == "auto":
        if torch.cuda.is_available():
            choice = "cuda"
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            choice = "mps"
        else:
            choice = "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        raise InputError("device 'cuda' was asked for, but torch sees no CUDA device; use --device cpu")
    dtype = torch.float16 if choice == "cuda" else torch.float32
    return Placement(torch.device(choice), dtype)


def default_torch_threads(placement: Placement) -> int | None:
    """Intra-op threads for sampling: on a CPU all cores but one, which the server keeps (an OpenMP team
    whose threads share a core with the server's slows every step); elsewhere torch's own default."""
    if placement.device.type != "cpu":
        return None
    return max(1, (os.cpu_count() or 1) - 1)
