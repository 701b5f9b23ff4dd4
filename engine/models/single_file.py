"""Load single-file Stable Diffusion 1.x checkpoints (original LDM / CompVis / A1111 key layout), offline.

``load_single_file`` reads such a file through diffusers' ``from_single_file``, with the
model configs, tokenizer and scheduler taken from a diffusers-format folder
(``pipe.save_pretrained(config_dir)``), so nothing is fetched from the hub. The export
the tests use to make such files is :mod:`engine.testing.ldm_export`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from engine.errors import InputError, ModelLoadError

if TYPE_CHECKING:
    from diffusers import StableDiffusionPipeline

log = logging.getLogger(__name__)

SUFFIX = ".safetensors"  # exact and lower case: diffusers picks torch.load for any other ending
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")  # read through torch.load(weights_only=True), never unpickled
UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_ENCODER_PREFIX = "cond_stage_model.transformer.text_model."
# What a full SD checkpoint must hold; the text encoder may also be SD 2.x's OpenCLIP,
# which diffusers converts as well (only the SD 1.x layout is written and tested here).
REQUIRED_PARTS = {
    "UNet": ("model.diffusion_model.",),
    "VAE": ("first_stage_model.", "vae."),
    "text encoder": ("cond_stage_model.transformer.", "cond_stage_model.model."),
}
MAX_CAUSE_CHARS = 800  # diffusers' messages can list hundreds of keys; the head says what went wrong

def load_single_file(
    path: str | os.PathLike,
    config_dir: str | os.PathLike,
    *,
    torch_dtype: torch.dtype | None = None,
) -> StableDiffusionPipeline:
    """A ``StableDiffusionPipeline`` from a single-file checkpoint, without the network.

    ``config_dir`` is a diffusers-format folder (``model_index.json``, ``unet/``,
    ``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``) describing the same
    architecture; its configs, tokenizer and scheduler are used, its weights are not.
    Every failure to load is a :class:`ModelLoadError` naming the file and the folder
    (a ``torch_dtype`` that is not a ``torch.dtype`` is an :class:`InputError`).
    """
    path, config_dir = Path(path), Path(config_dir)
    # 1. Check what diffusers would otherwise treat as hub ids (and try to download).
    _check_inputs(path, config_dir, torch_dtype)
    # 2. Check the file is readable safetensors holding a whole SD model.
    _check_checkpoint_keys(path, config_dir)
    # 3. Convert and load.
    from diffusers import StableDiffusionPipeline

    try:
        pipe = StableDiffusionPipeline.from_single_file(
            str(path),
            config=str(config_dir),
            local_files_only=True,
            safety_checker=None,
            requires_safety_checker=False,
            torch_dtype=torch_dtype,
        )
    except Exception as exc:  # diffusers, transformers and safetensors raise many kinds; all mean "could not load"
        log.warning("loading single file %s failed", path, exc_info=True)  # the whole traceback, for bugs
        cause = f"{type(exc).__name__}: {exc}"
        if len(cause) > MAX_CAUSE_CHARS:
            cause = cause[:MAX_CAUSE_CHARS] + " ..."
        if "meta tensor" in str(exc):  # a UNet/VAE weight the file lacks, met when diffusers moves the model
            cause = "the file lacks weights the configs call for (a partial file, or configs of another model)"
        raise ModelLoadError(
            f"could not load single-file checkpoint {str(path)!r} with the configs in {str(config_dir)!r} "
            f"(they must describe the same architecture): {cause}"
        ) from exc
    # 4. diffusers leaves text-encoder weights the file lacks on the meta device, silently.
    _check_all_weights_loaded(pipe, path, config_dir)
    return pipe


def _check_inputs(path: Path, config_dir: Path, torch_dtype) -> None:
    if path.suffix != SUFFIX and path.suffix.lower() not in PICKLE_SUFFIXES:
        raise ModelLoadError(
            f"{str(path)!r} is not a checkpoint file: a single-file model ends in {SUFFIX} "
            f"(or {', '.join(PICKLE_SUFFIXES)}, read weights-only)"
        )
    if not path.is_file():
        raise ModelLoadError(f"single-file checkpoint {str(path)!r} does not exist or is not a file")
    if not (config_dir / "model_index.json").is_file():
        raise ModelLoadError(
            f"cannot load {str(path)!r}: config folder {str(config_dir)!r} has no model_index.json; "
            "it must be a diffusers-format folder of the same architecture (pipe.save_pretrained(folder))"
        )
    if torch_dtype is not None and not isinstance(torch_dtype, torch.dtype):
        raise InputError(f"torch_dtype must be a torch.dtype or None, got {torch_dtype!r}")


def _check_checkpoint_keys(path: Path, config_dir: Path) -> None:
    """Read the keys only (a safetensors header; a pickle weights-only, memory-mapped) and name the parts a whole
    SD checkpoint lacks. A pickle the weights-only loader refuses is named, and nothing in it runs."""
    if path.suffix == SUFFIX:
        keys = _safetensors_keys(path, config_dir)
    else:
        keys = _pickle_keys(path, config_dir)
    missing = [part for part, prefixes in REQUIRED_PARTS.items() if not any(k.startswith(prefixes) for k in keys)]
    if missing:
        looked_for = ", ".join(f"{p}*" for m in missing for p in REQUIRED_PARTS[m])
        raise ModelLoadError(
            f"{str(path)!r} is not a whole Stable Diffusion checkpoint in the original (LDM/A1111) layout: "
            f"it has no {' and no '.join(missing)} weights ({looked_for}). "
            "A VAE-only, LoRA or diffusers-layout file cannot be loaded as a model"
        )


def _safetensors_keys(path: Path, config_dir: Path) -> list[str]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return list(f.keys())
    except Exception as exc:  # SafetensorError for garbage, OSError for unreadable files
        raise ModelLoadError(
            f"could not read single-file checkpoint {str(path)!r} (with configs {str(config_dir)!r}): "
            f"not a valid safetensors file ({type(exc).__name__}: {exc})"
        ) from exc


def _pickle_keys(path: Path, config_dir: Path) -> list[str]:
    """The keys of a pickle checkpoint, read through torch's weights-only unpickler (A1111's ``state_dict`` nesting
    looked into), memory-mapped where the file allows it, so the tensors are not read twice."""
    import pickle
    import zipfile

    from engine.models.loading import not_plain_weights

    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as exc:
        raise not_plain_weights(repr(str(path)), path.name, exc) from None
    except Exception as exc:  # a truncated or foreign file
        raise ModelLoadError(f"could not read single-file checkpoint {str(path)!r} (with configs "
                             f"{str(config_dir)!r}): {type(exc).__name__}: {exc}") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    return [k for k in state if isinstance(k, str)] if isinstance(state, dict) else []


def _check_all_weights_loaded(pipe, path: Path, config_dir: Path) -> None:
    for name in ("unet", "vae", "text_encoder"):
        missing = [n for n, p in getattr(pipe, name).named_parameters() if p.is_meta]
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise ModelLoadError(
                f"single-file checkpoint {str(path)!r} lacks {name} weights the configs in {str(config_dir)!r} "
                f"call for: {shown}; the file and the config folder must be of the same architecture"
            )
