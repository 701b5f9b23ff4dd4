"""LoRA for text to image: teach a Stable Diffusion model new words without changing its weights.

The recipe of diffusers' ``examples/text_to_image/train_text_to_image_lora.py``, written for the shared
training loop: the base model (a ``StableDiffusionPipeline`` folder) is loaded and frozen; peft adds
low-rank adapters W + (alpha / r) B A (Hu et al. 2021, eq. 3; B starts at zero, so step 0 is the base
model) to the UNet's attention projections (and, where asked, the text encoder's); the loss is the
noise-prediction MSE in the VAE's latents with the model's own noise scheduler, optionally Min-SNR
weighted. Checkpoints hold the adapters only, in the layout ``pipe.load_lora_weights`` reads, and each one
is published as ``<models-dir>/loras/<run name>.safetensors`` with the base model, settings and steps in its
metadata. The base model's files are only read.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from pathlib import Path

import numpy as np
import torch

from engine.cancel import CancelToken
from engine.errors import Cancelled, DataError, InputError, ModelLoadError
from engine.models.loras import METADATA_KEY, architecture, loras_dir
from engine.sampling.preview import spaced_grid
from engine.training.base import BaseModel, check_loaded_kind
from engine.training.checkpoints import LORA_FILE, TRAINER_DIR, load_tensors, save_tensors
from engine.training.objectives.pixel import prediction_target
from engine.training.objectives.terms import LossTerms, mse_terms
from engine.training.request import LORA_LAYERS, LORA_TEXT_LAYERS

log = logging.getLogger(__name__)

ADAPTERS_FILE = "lora.safetensors"  # in trainer/: the adapters by parameter name, for an exact resume
ADAPTER = "default"  # peft's adapter name inside the run
GRID_PROMPTS = 4  # validation prompts taken from the captions when none are given
PANEL_GAP = 40  # pixels between the scale-0 and the scale-1 panel of a grid
PANEL_GAP_COLOUR = (31, 41, 55)  # dark, apart from the light gaps inside each panel
GRID_MIN_TILE = 96
GRID_GAP = 6
GRID_GAP_COLOUR = (229, 231, 235)
SAMPLE_GUIDANCE = 7.5  # the Text to image tab's default
GRID_CAPTION = "left: LoRA scale 0 (the base model) · right: LoRA scale 1 · a row a prompt, the same seeds on both"


class LoraModel(torch.nn.Module):
    """The base model's UNet and text encoder with adapters, as one module for the loop; only the adapters train."""

    def __init__(self, unet, text_encoder):
        super().__init__()
        self.unet = unet
        self.text_encoder = text_encoder
        self.config = {}  # EMAModel asks for a config; the parts keep their own


class LoraTextToImage:
    """diffusers' train_text_to_image_lora.py recipe as an objective of the shared loop."""

    def __init__(self, base: BaseModel, request, data):
        # 1. The base model's parts, frozen; the run trains at the model's own resolution.
        self.base, self.request = base, request
        self._load_base(base)
        side = self.unet.config.sample_size * self.vae_scale_factor
        if request.resolution != side:
            raise InputError(f"resolution {request.resolution} differs from {base.name!r}'s {side} px: a LoRA trains "
                             f"at the base model's own resolution; set resolution to {side}", field="resolution")
        # 2. The adapters must fit the layers they adapt.
        self._check_rank(request)
        # 3. The grid's prompts: the ones given, or the data's first distinct captions.
        self.prompts = request.prompts or _first_captions(data, GRID_PROMPTS)
        self.channels = 3
        self.architecture = architecture(base.location) if base.local else None
        self.info = {"start_from": base.name, "method": "lora", "resolution": side, "prompts": list(self.prompts),
                     "grid_caption": GRID_CAPTION}

    def _load_base(self, base: BaseModel) -> None:
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        kw = base.load_kwargs()
        try:
            self.unet = UNet2DConditionModel.from_pretrained(base.location, subfolder="unet", **kw)
            check_loaded_kind(base, self.unet, "lora")
            self.vae = AutoencoderKL.from_pretrained(base.location, subfolder="vae", **kw)
            self.text_encoder = CLIPTextModel.from_pretrained(base.location, subfolder="text_encoder", **kw)
            self.tokenizer = CLIPTokenizer.from_pretrained(base.location, subfolder="tokenizer",
                                                           local_files_only=base.local)
            self.noise_scheduler = DDPMScheduler.from_pretrained(base.location, subfolder="scheduler",
                                                                 local_files_only=base.local)
            self.scheduler_config = DDPMScheduler.load_config(base.location, subfolder="scheduler",
                                                              local_files_only=base.local)
        except InputError:
            raise
        except Exception as exc:  # diffusers and transformers raise many kinds; all mean "could not load"
            raise ModelLoadError(f"could not load {base.name!r} to train a LoRA on: {type(exc).__name__}: "
                                 f"{exc}") from exc
        for part in (self.unet, self.vae, self.text_encoder):
            part.requires_grad_(False)
        self.vae.eval()
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)

    def _check_rank(self, request) -> None:
        """A rank above the narrowest adapted layer's width adds nothing but weights: refused, with the width."""
        widths = [min(m.in_features, m.out_features) for name, m in self.unet.named_modules()
                  if isinstance(m, torch.nn.Linear) and _targeted(name, LORA_LAYERS[request.lora_layers])]
        if request.lora_text_encoder:
            widths += [min(m.in_features, m.out_features) for name, m in self.text_encoder.named_modules()
                       if isinstance(m, torch.nn.Linear) and _targeted(name, LORA_TEXT_LAYERS)]
        if not widths:
            raise InputError(f"{self.base.name!r} has no layers named {', '.join(LORA_LAYERS[request.lora_layers])} "
                             "to adapt", field="LoRA layers")
        if request.lora_rank > min(widths):
            raise InputError(f"LoRA rank {request.lora_rank} is more than the {min(widths)} features of the narrowest "
                             f"adapted layer of {self.base.name!r}; a rank is at most its layer's width: use 1 to "
                             f"{min(widths)}", field="LoRA rank")

    @property
    def num_train_timesteps(self) -> int:
        return self.noise_scheduler.config.num_train_timesteps

    def build_model(self, seed: int) -> LoraModel:
        """The base parts with fresh adapters (A Gaussian under ``seed``, B zero: the base model's output).

        peft injects them directly (``inject_adapter_in_model``, what diffusers' ``add_adapter`` calls): the
        text encoder's ``add_adapter`` in transformers asks for a newer peft than the project can install."""
        from peft import LoraConfig, inject_adapter_in_model

        request = self.request
        self.lora_configs = {"unet": LoraConfig(r=request.lora_rank, lora_alpha=request.lora_alpha,
                                                init_lora_weights="gaussian",
                                                target_modules=list(LORA_LAYERS[request.lora_layers]))}
        if request.lora_text_encoder:
            self.lora_configs["text_encoder"] = LoraConfig(r=request.lora_rank, lora_alpha=request.lora_alpha,
                                                           init_lora_weights="gaussian",
                                                           target_modules=list(LORA_TEXT_LAYERS))
        model = LoraModel(self.unet, self.text_encoder)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for part, config in self.lora_configs.items():
                inject_adapter_in_model(config, getattr(model, part), adapter_name=ADAPTER)
        model.train()
        return model

    # -- training -------------------------------------------------------------------------------
    def loss(self, model: LoraModel, batch: dict, generator: torch.Generator) -> LossTerms:
        images = batch["images"]  # (B, 3, H, W) in [-1, 1]
        self.vae.to(images.device)
        # 1. Latents of the clean images, scaled as the model was trained (Rombach et al. 2022).
        with torch.no_grad():
            latents = self.vae.encode(images).latent_dist.sample(generator=generator)
            latents = latents * self.vae.config.scaling_factor  # (B, 4, h, w)
        # 2. The captions' embeddings (with gradients only where the text encoder has adapters).
        ids = self.tokenizer(list(batch["texts"]), padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids.to(images.device)
        with torch.set_grad_enabled(self.request.lora_text_encoder and torch.is_grad_enabled()):
            embeds = model.text_encoder(ids, return_dict=False)[0]  # (B, seq, dim)
        # 3. Noise at random timesteps (the model's own scheduler), the UNet predicts it; MSE (or Min-SNR).
        noise = torch.randn(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
        timesteps = torch.randint(0, self.num_train_timesteps, (latents.shape[0],), generator=generator,
                                  device=latents.device, dtype=torch.int64)
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        prediction = model.unet(noisy, timesteps, encoder_hidden_states=embeds, return_dict=False)[0]
        target = prediction_target(self.noise_scheduler, latents, noise, timesteps)
        return mse_terms(prediction, target, timesteps, self.noise_scheduler, self.request.snr_gamma)

    # -- the grid ----------------------------------------------------------------------------------
    def pipeline(self, model: LoraModel):
        from diffusers import StableDiffusionPipeline

        from engine.sampling.schedulers import make_scheduler
        from engine.sampling.txt2img import Txt2ImgRequest

        scheduler = make_scheduler(Txt2ImgRequest(prompt="").scheduler, self.scheduler_config)
        pipe = StableDiffusionPipeline(vae=self.vae, text_encoder=model.text_encoder, tokenizer=self.tokenizer,
                                       unet=model.unet, scheduler=scheduler, safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def seeds_per_prompt(self, num_images: int) -> int:
        """Seeds a prompt gets on each side, so that the two sides hold about ``num_images`` together."""
        return max(1, math.ceil(num_images / (2 * len(self.prompts))))

    @torch.no_grad()
    def sample(self, model: LoraModel, *, num_images: int, seed: int, num_inference_steps: int,
               cancel: CancelToken | None = None) -> torch.Tensor:
        """Each validation prompt from the same seeds, with the adapters off (scale 0: the base model) and on
        (scale 1): (2 * P * S, 3, H, W) in [-1, 1], the scale-0 images first, prompt by prompt."""
        pipe = self.pipeline(model)
        per_prompt = self.seeds_per_prompt(num_images)
        prompts = [p for p in self.prompts for _ in range(per_prompt)]

        def on_step(p, i, t, kwargs):
            if cancel is not None and cancel.cancelled:
                raise Cancelled("sampling stopped")
            return kwargs

        sides = []
        for on in (False, True):
            _enable_adapters(model, on)
            try:
                generator = torch.Generator("cpu").manual_seed(seed)  # the same noise on both sides
                images = pipe(prompts, num_inference_steps=num_inference_steps, guidance_scale=SAMPLE_GUIDANCE,
                              generator=generator, output_type="pt", callback_on_step_end=on_step).images
            finally:
                _enable_adapters(model, True)
            sides.append(images * 2 - 1)  # (P * S, 3, H, W)
        return torch.cat(sides)

    def grid(self, samples: np.ndarray) -> np.ndarray:
        """(2 * P * S, h, w, 3) uint8 from :meth:`sample` -> the scale-0 panel and the scale-1 panel side by side,
        a row a prompt, a dark gap between the panels."""
        half = len(samples) // 2
        cols = half // len(self.prompts)
        panels = [spaced_grid(samples[i * half:(i + 1) * half], min_tile=GRID_MIN_TILE, gap=GRID_GAP,
                              colour=GRID_GAP_COLOUR, cols=cols) for i in range(2)]
        gap = np.empty((panels[0].shape[0], PANEL_GAP, 3), dtype=np.uint8)
        gap[:] = PANEL_GAP_COLOUR
        return np.concatenate([panels[0], gap, panels[1]], axis=1)

    # -- checkpoints ---------------------------------------------------------------------------------
    def save_pretrained(self, model: LoraModel, folder: Path) -> None:
        """The adapters in the layout ``pipe.load_lora_weights(folder)`` reads (diffusers' own writer), with the
        base model and settings in the metadata; and by parameter name in ``trainer/`` for a resume."""
        write_lora_file(model, self.lora_configs, folder / LORA_FILE, self.lora_info())
        trainer_dir = folder / TRAINER_DIR
        trainer_dir.mkdir(exist_ok=True)
        save_tensors(trainer_dir / ADAPTERS_FILE, {n: p for n, p in model.named_parameters() if p.requires_grad})

    def load_saved_weights(self, folder: Path) -> dict[str, torch.Tensor]:
        return load_tensors(folder / TRAINER_DIR / ADAPTERS_FILE)

    def lora_info(self, steps: int | None = None) -> dict:
        from dataclasses import asdict

        settings = {k: v for k, v in asdict(self.request).items()
                    if k not in ("resume", "num_workers", "log_every")}
        info = {"base_model": self.base.name, "architecture": self.architecture, "settings": settings,
                "format": "diffusers StableDiffusionPipeline.load_lora_weights"}
        if steps is not None:
            info["steps"] = steps
        return info

    def publish(self, run_dir: Path, models_dir: Path, run_name: str, step: int) -> Path:
        """Copy the checkpoint's LoRA to ``<models-dir>/loras/<run name>.safetensors`` atomically, its steps added
        to the metadata: the Text to image tab lists it from there."""
        from safetensors import safe_open
        from safetensors.torch import save_file

        from engine.files import atomic_write

        with safe_open(str(run_dir / LORA_FILE), framework="pt") as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        metadata[METADATA_KEY] = json.dumps({**json.loads(metadata.get(METADATA_KEY, "{}")), "steps": step,
                                             "run_name": run_name})
        target = loras_dir(models_dir) / f"{run_name}.safetensors"
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(target) as tmp:
            save_file(tensors, str(tmp), metadata=metadata)
        return target


def write_lora_file(model: LoraModel, configs: dict, path: Path, info: dict) -> None:
    """``StableDiffusionPipeline.save_lora_weights`` (as train_text_to_image_lora.py calls it), then the file
    rewritten with ``info`` as JSON under :data:`METADATA_KEY` beside diffusers' own metadata. ``configs``:
    part ("unet", "text_encoder") -> its LoraConfig."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict
    from safetensors import safe_open
    from safetensors.torch import save_file

    layers = {part: convert_state_dict_to_diffusers(get_peft_model_state_dict(getattr(model, part),
                                                                              adapter_name=ADAPTER))
              for part in configs}
    meta = {part: config.to_dict() for part, config in configs.items()}
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".lora-") as tmp:
        StableDiffusionPipeline.save_lora_weights(
            tmp, unet_lora_layers=layers["unet"], text_encoder_lora_layers=layers.get("text_encoder"),
            safe_serialization=True, unet_lora_adapter_metadata=meta["unet"],
            text_encoder_lora_adapter_metadata=meta.get("text_encoder"))
        with safe_open(str(Path(tmp) / LORA_FILE), framework="pt") as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    metadata[METADATA_KEY] = json.dumps(info)
    save_file(tensors, str(path), metadata=metadata)


def _enable_adapters(model: LoraModel, on: bool) -> None:
    """Switch every adapter layer on or off (off: the base model's output exactly)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            module.enable_adapters(on)


def _targeted(name: str, targets) -> bool:
    """peft's rule for a target module name: the name itself, or its ending after a dot."""
    return any(name == t or name.endswith("." + t) for t in targets)


def _first_captions(data, n: int) -> tuple[str, ...]:
    """The first ``n`` distinct captions of the data, in its order."""
    seen: list[str] = []
    for text in data.dataset.with_format(None)["text"]:
        if text not in seen:
            seen.append(text)
            if len(seen) == n:
                break
    if not seen:
        raise DataError("the data has no captions to draw validation prompts from; give validation prompts")
    return tuple(seen)
