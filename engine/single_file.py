"""Single-file Stable Diffusion 1.x checkpoints, in the original LDM (CompVis / A1111) key layout.

``save_single_file`` writes the UNet, VAE and CLIP text encoder of a diffusers
``StableDiffusionPipeline`` as one ``.safetensors`` file whose keys read as the
original latent-diffusion code names them::

    model.diffusion_model.*                   UNet
    first_stage_model.*                       VAE
    cond_stage_model.transformer.text_model.* CLIP text encoder

``load_single_file`` reads such a file back through diffusers' ``from_single_file``,
offline, with the model configs, tokenizer and scheduler taken from a
diffusers-format folder (``pipe.save_pretrained(config_dir)``).

The key mapping is the inverse of diffusers' loader
(``diffusers/loaders/single_file_utils.py::convert_ldm_unet_checkpoint``,
``convert_ldm_vae_checkpoint``, ``convert_ldm_clip_checkpoint``); it ports diffusers'
``scripts/convert_diffusers_to_original_stable_diffusion.py``, generalised from SD 1.x's
four blocks of two layers to the block count and ``layers_per_block`` in the model
configs, so the tiny test pipelines round-trip as well as full-size ones.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from engine.errors import InputError, ModelLoadError

if TYPE_CHECKING:
    from diffusers import StableDiffusionPipeline

log = logging.getLogger(__name__)

SUFFIX = ".safetensors"  # exact and lower case: diffusers picks torch.load (pickle) for any other ending
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

# Inside a ResNet block the LDM names differ from diffusers' (in_layers = norm, act, conv; ...).
UNET_RESNET_RENAMES = {
    "norm1.": "in_layers.0.",
    "conv1.": "in_layers.2.",
    "norm2.": "out_layers.0.",
    "conv2.": "out_layers.3.",
    "time_emb_proj.": "emb_layers.1.",
    "conv_shortcut.": "skip_connection.",
}
VAE_RESNET_RENAMES = {"conv_shortcut.": "nin_shortcut."}
VAE_ATTENTION_RENAMES = {
    "group_norm.": "norm.",
    "to_q.": "q.",
    "to_k.": "k.",
    "to_v.": "v.",
    "to_out.0.": "proj_out.",
}


@dataclass(frozen=True)
class _Rule:
    """Keys under ``diffusers`` go under ``ldm``, their remainder renamed by ``renames``."""

    diffusers: str  # prefix, ends with "."
    ldm: str  # prefix, ends with "."
    renames: dict[str, str] = field(default_factory=dict)  # remainder prefix -> LDM remainder prefix
    conv_weights: bool = False  # LDM holds these linear weights as 1x1 convs: (O, I) -> (O, I, 1, 1)


# -- save ------------------------------------------------------------------------------------


def save_single_file(pipe: StableDiffusionPipeline, path: str | os.PathLike) -> Path:
    """Write ``pipe``'s unet, vae and text_encoder as one LDM-layout ``.safetensors`` file.

    Tensors keep their dtype and are copied to the CPU. The file is written under a
    temporary name beside ``path`` and moved into place, so a reader never sees half a
    file. Returns the path written.
    """
    path = Path(path)
    if path.suffix != SUFFIX:
        raise InputError(f"cannot export to {str(path)!r}: the name must end in {SUFFIX} (safetensors only)")
    for name in ("unet", "vae", "text_encoder"):
        if getattr(pipe, name, None) is None:
            raise InputError(
                f"cannot export {type(pipe).__name__} as a single file: it has no {name}; "
                "a Stable Diffusion 1.x pipeline (unet, vae, text_encoder) is needed"
            )
    # 1. Map each component's state dict to LDM keys.
    tensors: dict[str, torch.Tensor] = {}
    parts = (
        (UNET_PREFIX, _unet_rules(pipe.unet), pipe.unet.state_dict()),
        (VAE_PREFIX, _vae_rules(pipe.vae), pipe.vae.state_dict()),
        (TEXT_ENCODER_PREFIX, None, _text_encoder_state_dict(pipe.text_encoder)),
    )
    for prefix, rules, state_dict in parts:
        for key, tensor in _to_ldm(state_dict, rules).items():
            tensors[prefix + key] = tensor.detach().to("cpu").contiguous()
    # 2. Write it atomically.
    _write_atomically(tensors, path)
    log.info("exported %d tensors to %s", len(tensors), path)
    return path


def _unet_rules(unet) -> list[_Rule]:
    """UNet2DConditionModel -> ``model.diffusion_model`` (openaimodel.UNetModel).

    LDM numbers the UNet's blocks flat: ``input_blocks.0`` is conv_in, then each down
    block takes ``layers_per_block`` slots (resnet ``.0``, attention ``.1``) plus one for
    its downsampler; ``middle_block`` is resnet, attention, resnet; ``output_blocks``
    take ``layers_per_block + 1`` slots per up block, the upsampler sharing the last.
    """
    config = unet.config
    per_block = config.layers_per_block + 1
    n_blocks = len(config.block_out_channels)
    keys = unet.state_dict().keys()
    rules = [
        _Rule("time_embedding.linear_1.", "time_embed.0."),
        _Rule("time_embedding.linear_2.", "time_embed.2."),
        _Rule("conv_in.", "input_blocks.0.0."),
        _Rule("conv_norm_out.", "out.0."),
        _Rule("conv_out.", "out.2."),
        _Rule("mid_block.attentions.0.", "middle_block.1."),
    ]
    for j in range(2):
        rules.append(_Rule(f"mid_block.resnets.{j}.", f"middle_block.{2 * j}.", UNET_RESNET_RENAMES))
    for i in range(n_blocks):
        for j in range(config.layers_per_block):
            slot = per_block * i + j + 1
            rules.append(_Rule(f"down_blocks.{i}.resnets.{j}.", f"input_blocks.{slot}.0.", UNET_RESNET_RENAMES))
            rules.append(_Rule(f"down_blocks.{i}.attentions.{j}.", f"input_blocks.{slot}.1."))
        rules.append(_Rule(f"down_blocks.{i}.downsamplers.0.conv.", f"input_blocks.{per_block * (i + 1)}.0.op."))
        for j in range(per_block):
            slot = per_block * i + j
            rules.append(_Rule(f"up_blocks.{i}.resnets.{j}.", f"output_blocks.{slot}.0.", UNET_RESNET_RENAMES))
            rules.append(_Rule(f"up_blocks.{i}.attentions.{j}.", f"output_blocks.{slot}.1."))
        # The upsampler follows the last resnet, and its attention where the block has one.
        has_attention = any(k.startswith(f"up_blocks.{i}.attentions.") for k in keys)
        last = f"output_blocks.{per_block * i + config.layers_per_block}.{2 if has_attention else 1}."
        rules.append(_Rule(f"up_blocks.{i}.upsamplers.0.conv.", f"{last}conv."))
    return rules


def _vae_rules(vae) -> list[_Rule]:
    """AutoencoderKL -> ``first_stage_model`` (ldm AutoencoderKL).

    LDM numbers the decoder's up blocks from the lowest resolution's end
    (``decoder.up.{n-1}`` runs first), diffusers in the order they run.
    """
    n_blocks = len(vae.config.block_out_channels)
    layers = vae.config.layers_per_block
    rules = [_Rule(f"{k}.", f"{k}.") for k in ("quant_conv", "post_quant_conv")]
    for part in ("encoder", "decoder"):
        rules += [
            _Rule(f"{part}.conv_in.", f"{part}.conv_in."),
            _Rule(f"{part}.conv_out.", f"{part}.conv_out."),
            _Rule(f"{part}.conv_norm_out.", f"{part}.norm_out."),
            _Rule(f"{part}.mid_block.attentions.0.", f"{part}.mid.attn_1.", VAE_ATTENTION_RENAMES, conv_weights=True),
        ]
        for j in range(2):
            rules.append(_Rule(f"{part}.mid_block.resnets.{j}.", f"{part}.mid.block_{j + 1}.", VAE_RESNET_RENAMES))
    for i in range(n_blocks):
        down, up = f"encoder.down.{i}", f"decoder.up.{n_blocks - 1 - i}"
        for j in range(layers):
            rules.append(_Rule(f"encoder.down_blocks.{i}.resnets.{j}.", f"{down}.block.{j}.", VAE_RESNET_RENAMES))
        for j in range(layers + 1):  # the decoder has one resnet more per block
            rules.append(_Rule(f"decoder.up_blocks.{i}.resnets.{j}.", f"{up}.block.{j}.", VAE_RESNET_RENAMES))
        rules.append(_Rule(f"encoder.down_blocks.{i}.downsamplers.0.conv.", f"{down}.downsample.conv."))
        rules.append(_Rule(f"decoder.up_blocks.{i}.upsamplers.0.conv.", f"{up}.upsample.conv."))
    return rules


def _text_encoder_state_dict(text_encoder) -> dict[str, torch.Tensor]:
    """CLIPTextModel keys relative to ``text_model.``, whichever transformers version built it.

    transformers >= 5.6 flattened CLIPTextModel (``embeddings.*``); older ones wrap it
    (``text_model.embeddings.*``). The LDM layout always has the ``text_model.`` level.
    """
    if type(text_encoder).__name__ != "CLIPTextModel":
        raise InputError(
            f"cannot export a {type(text_encoder).__name__} text encoder; "
            "the SD 1.x single-file layout holds a CLIPTextModel"
        )
    return {k.removeprefix("text_model."): v for k, v in text_encoder.state_dict().items()}


def _to_ldm(state_dict: dict[str, torch.Tensor], rules: list[_Rule] | None) -> dict[str, torch.Tensor]:
    """Rename every key by the longest matching rule; ``rules=None`` keeps keys as they are."""
    if rules is None:
        return dict(state_dict)
    out: dict[str, torch.Tensor] = {}
    unmapped = []
    for key, tensor in state_dict.items():
        matches = [r for r in rules if key.startswith(r.diffusers)]
        if not matches:
            unmapped.append(key)
            continue
        rule = max(matches, key=lambda r: len(r.diffusers))
        rest = key[len(rule.diffusers):]
        for old, new in rule.renames.items():
            if rest.startswith(old):
                rest = new + rest[len(old):]
                break
        if rule.conv_weights and rest.endswith("weight") and tensor.ndim == 2:
            tensor = tensor.reshape(*tensor.shape, 1, 1)  # (O, I) -> (O, I, 1, 1)
        ldm_key = rule.ldm + rest
        if ldm_key in out:
            raise InputError(f"two weights map to the single-file key {ldm_key!r}; this model layout is not SD 1.x")
        out[ldm_key] = tensor
    if unmapped:
        shown = ", ".join(unmapped[:5]) + (f" and {len(unmapped) - 5} more" if len(unmapped) > 5 else "")
        raise InputError(
            f"cannot export as an SD 1.x single file: no LDM name for {shown}; "
            "only Stable Diffusion 1.x-style UNet/VAE layouts can be exported"
        )
    return out


def _write_atomically(tensors: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Same folder, so os.replace is a rename; the ".tmp" ending keeps it out of model lists.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
    except OSError as exc:
        raise InputError(f"cannot write {str(path)!r}: {exc}") from exc
    try:
        save_file(tensors, tmp, metadata={"format": "pt"})
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise InputError(f"cannot write {str(path)!r}: {exc}") from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


# -- load ------------------------------------------------------------------------------------


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
    if path.suffix != SUFFIX:
        raise ModelLoadError(
            f"{str(path)!r} is not a {SUFFIX} file; safetensors only (pickle checkpoints such as "
            ".ckpt, .pt and .bin can run code when loaded: convert them to .safetensors first)"
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
    """Read the header only (no tensors) and name the parts a whole SD checkpoint lacks."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
    except Exception as exc:  # SafetensorError for garbage, OSError for unreadable files
        raise ModelLoadError(
            f"could not read single-file checkpoint {str(path)!r} (with configs {str(config_dir)!r}): "
            f"not a valid safetensors file ({type(exc).__name__}: {exc})"
        ) from exc
    missing = [part for part, prefixes in REQUIRED_PARTS.items() if not any(k.startswith(prefixes) for k in keys)]
    if missing:
        looked_for = ", ".join(f"{p}*" for m in missing for p in REQUIRED_PARTS[m])
        raise ModelLoadError(
            f"{str(path)!r} is not a whole Stable Diffusion checkpoint in the original (LDM/A1111) layout: "
            f"it has no {' and no '.join(missing)} weights ({looked_for}). "
            "A VAE-only, LoRA or diffusers-layout file cannot be loaded as a model"
        )


def _check_all_weights_loaded(pipe, path: Path, config_dir: Path) -> None:
    for name in ("unet", "vae", "text_encoder"):
        missing = [n for n, p in getattr(pipe, name).named_parameters() if p.is_meta]
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise ModelLoadError(
                f"single-file checkpoint {str(path)!r} lacks {name} weights the configs in {str(config_dir)!r} "
                f"call for: {shown}; the file and the config folder must be of the same architecture"
            )
