"""The initial noise's hash, which a loop puts in its ``Done`` for the run's record (engine.records.runrecord):
a replay checks that it draws the same noise."""

from __future__ import annotations

import hashlib

import torch


def tensor_sha256(tensor: torch.Tensor) -> str:
    """SHA-256 of a tensor's dtype, shape and bytes, read on the CPU."""
    t = tensor.detach().to("cpu").contiguous()
    digest = hashlib.sha256(f"{t.dtype} {tuple(t.shape)}\n".encode())
    digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
