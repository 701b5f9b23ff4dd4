"""A run's record: everything a replay needs to run it again and to tell whether it came out the same.

Whoever holds the outputs dir builds one per run from the loop's ``Done`` (:func:`run_record`, through
:mod:`engine.records.runs`) and saves it in each PNG, as the ``workbench`` text chunk beside A1111's
``parameters``; "Export run" writes it out as a small JSON file (the replay bundle, see
:mod:`engine.records.replay`)::

    {"format": "diffusion-workbench-run", "version": 1, "kind": "txt2img",
     "request": {...the resolved request: seed drawn, size and steps filled in...},
     "model": {"name": "digits-sd", "source": "builtin", "sha256": "...", "files": {"unet/...": "..."}},
     "environment": {"torch": "2.14.1", "diffusers": "0.42.1", "transformers": "5.24.0", "gradio": "6.31.0",
                     "device": "cpu", "device_name": "cpu", "dtype": "float32"},
     "noise_sha256": "...", "images_sha256": ["..."],
     "state": {"lora": null, "lora_scale": null, "attention": ["AttnProcessor2_0"], "compiled": false},
     "lora": {"name": "...", "sha256": "..."},     # only where the request switched a LoRA on
     "init_sha256": "..."}  # img2img and SDEdit: the hash of the image they started from (kept in the outputs
                            # dir's .inits/ folder, engine.records.runs), which the request does not hold
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from engine.models.identity import file_sha256, resolved
from engine.sampling.fast import run_state

FORMAT = "diffusion-workbench-run"
VERSION = 1  # bumped when a field changes meaning; a replay refuses newer bundles
LIBRARIES = ("torch", "diffusers", "transformers", "gradio")  # versions that can change an image's pixels


def image_sha256(image: Image.Image | np.ndarray) -> str:
    """SHA-256 of an image's pixels (mode, size and bytes): the same for the image and its PNG read back."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    digest = hashlib.sha256(f"{image.mode} {image.width}x{image.height}\n".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


def library_versions() -> dict[str, str]:
    """The installed versions of the libraries that can change an image ("not installed" where absent)."""
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def environment(device: torch.device, dtype: torch.dtype) -> dict[str, str]:
    """Library versions, the device (and its name: which GPU) and the dtype a run used."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    return {**library_versions(), "device": device.type, "device_name": name, "dtype": str(dtype).removeprefix("torch.")}


def run_record(kind: str, request, pipe, noise_sha256: str, images: Sequence[Image.Image]) -> dict:
    """The record of a finished run of ``kind`` ("txt2img", "unconditional", "img2img" or "sdedit"): ``request``
    resolved (an img2img request's image as its hash, ``init_sha256``), the model's identity (set on ``pipe`` by
    the registry; waited for here if still hashing), environment, the initial noise's hash
    (:func:`engine.sampling.hashes.tensor_sha256`) and the images hashed."""
    fields = {f.name: getattr(request, f.name) for f in dataclasses.fields(request)}
    init = fields.pop("image", None)  # img2img's image: a picture, not a setting
    model = resolved(getattr(pipe, "workbench_identity", None)) or {"name": request.model, "source": "unknown"}
    record = {
        "format": FORMAT,
        "version": VERSION,
        "kind": kind,
        "request": fields,
        "model": model,
        "environment": environment(pipe.device, pipe.unet.dtype),
        "noise_sha256": noise_sha256,
        "images_sha256": [image_sha256(im) for im in images],
        "state": run_state(pipe, compile=getattr(request, "compile", False)),  # set by the run (run_events)
    }
    if init is not None:
        record["init_sha256"] = image_sha256(init)
    if getattr(request, "lora", ""):  # the LoRA switched on changes the image as the model's weights do
        _, _, path = getattr(pipe, "workbench_lora", ("", 1.0, None))
        record["lora"] = {"name": request.lora, "sha256": file_sha256(path) if path is not None else None}
    return record
