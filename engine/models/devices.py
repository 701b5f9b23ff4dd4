"""Pick the device and dtype a model runs on."""

from __future__ import annotations

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
