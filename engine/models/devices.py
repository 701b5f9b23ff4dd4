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


CACHE_FRACTION = 0.4  # of the memory holding the models: two SD 1.5s in fp32 (2 x 4.3 GB) fit 24 GiB, with room to run


def total_memory(placement: Placement) -> int:
    """Bytes of the memory the models live in: the GPU's on CUDA, else the machine's RAM."""
    if placement.device.type == "cuda":
        return torch.cuda.get_device_properties(placement.device).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def default_cache_bytes(placement: Placement) -> int:
    """The model cache's budget when --model-cache-gb is not given: a fraction of :func:`total_memory`."""
    return int(total_memory(placement) * CACHE_FRACTION)


def pipeline_bytes(pipe) -> int:
    """Bytes of a pipeline's weights: every parameter and buffer of its torch modules, each counted once."""
    seen, total = set(), 0
    for component in getattr(pipe, "components", {}).values():
        if not isinstance(component, torch.nn.Module):
            continue
        for tensor in (*component.parameters(), *component.buffers()):
            if tensor.data_ptr() in seen or tensor.is_meta:
                continue
            seen.add(tensor.data_ptr())
            total += tensor.numel() * tensor.element_size()
    return total


def free_memory() -> None:
    """Return dropped pipelines' memory now: collect their reference cycles, empty the CUDA cache."""
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
