"""Export a diffusers ``StableDiffusionPipeline`` as one single-file checkpoint in the original LDM layout.

Only tests and tooling use it (to make files for :func:`engine.models.single_file.load_single_file`).
``save_single_file`` writes the UNet, VAE and CLIP text encoder as one ``.safetensors``
file whose keys read as the original latent-diffusion code names them::

    model.diffusion_model.*                   UNet
    first_stage_model.*                       VAE
    cond_stage_model.transformer.text_model.* CLIP text encoder

The key mapping is the inverse of diffusers' loader
(``diffusers/loaders/single_file_utils.py::convert_ldm_unet_checkpoint``,
``convert_ldm_vae_checkpoint``, ``convert_ldm_clip_checkpoint``); it ports diffusers'
``scripts/convert_diffusers_to_original_stable_diffusion.py``, generalised from SD 1.x's
four blocks of two layers to the block count and ``layers_per_block`` in the model
configs, so the tiny test pipelines round-trip as well as full-size ones.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from engine.errors import InputError
from engine.files import atomic_write
from engine.models.single_file import SUFFIX, TEXT_ENCODER_PREFIX, UNET_PREFIX, VAE_PREFIX

if TYPE_CHECKING:
    from diffusers import StableDiffusionPipeline

log = logging.getLogger(__name__)

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
        with atomic_write(path) as tmp:
            save_file(tensors, str(tmp), metadata={"format": "pt"})
    except OSError as exc:
        raise InputError(f"cannot write {str(path)!r}: {exc}") from exc
