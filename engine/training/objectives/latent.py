"""Objectives for latent text-to-image models, on the same training loop as the UNet2DModel recipe.

:class:`VaeReconstruction` trains an ``AutoencoderKL``; :class:`TextToImage` then trains a
``UNet2DConditionModel`` and a small ``CLIPTextModel`` together in that VAE's latent space
(Rombach et al. 2022), with captions made from class labels. Both plug into
:func:`engine.training.loop.iter_train` through its ``objective`` argument, like
:class:`engine.objectives.NoisePrediction`: data, loop, EMA and checkpoints are shared.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from engine.cancel import CancelToken, check
from engine.errors import Cancelled, DataError
from engine.sampling.preview import LATENT_RGB_FILE
from engine.training.objectives.terms import LossTerms

VAE_CONFIG = dict(  # 32 px -> 8x8x4 latents: a factor of 4, three levels
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=16,
    block_out_channels=(32, 64, 64),
    down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
)
UNET_CONFIG = dict(  # on 8x8 latents: two levels, cross-attention at both
    in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(64, 96), norm_num_groups=16,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=64, attention_head_dim=8,
)
TEXT_CONFIG = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_hidden_layers=3)
MODEL_MAX_LENGTH = 16  # the longest caption is 9 tokens with BOS/EOS
KL_WEIGHT = 1e-5  # small: sharp reconstructions, latents still near unit scale
CAPTION_DROP = 0.1  # captions dropped to "" so the model also learns p(x): classifier-free guidance
SAMPLE_GUIDANCE = 5.0


def as_rgb(images: torch.Tensor) -> torch.Tensor:
    """(B, 1|3, H, W) -> (B, 3, H, W): grey digits become RGB, as SD's VAE expects."""
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images


class VaeReconstruction:
    """AutoencoderKL (Kingma & Welling 2014, eq. 10): reconstruction MSE plus a small KL to N(0, I)."""

    def __init__(self, resolution: int):
        self.config = dict(VAE_CONFIG, sample_size=resolution)

    @classmethod
    def from_request(cls, request, data) -> "VaeReconstruction":
        return cls(request.resolution)

    def build_model(self, seed: int):
        from diffusers import AutoencoderKL

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return AutoencoderKL(**self.config)

    def loss(self, model, batch: dict, generator: torch.Generator) -> torch.Tensor:
        images = as_rgb(batch["images"])  # (B, 3, H, W)
        posterior = model.encode(images).latent_dist
        latents = posterior.sample(generator=generator)  # (B, 4, H/4, W/4)
        reconstruction = model.decode(latents).sample
        return F.mse_loss(reconstruction.float(), images.float()) + KL_WEIGHT * posterior.kl().mean()

    @torch.no_grad()
    def sample(self, model, *, num_images: int, seed: int, num_inference_steps: int,
               cancel: CancelToken | None = None) -> torch.Tensor:
        """Decodes of latents drawn from the prior: what the VAE makes of N(0, I)."""
        check(cancel)
        factor = 2 ** (len(model.config.block_out_channels) - 1)
        side = model.config.sample_size // factor
        generator = torch.Generator("cpu").manual_seed(seed)
        latents = torch.randn((num_images, model.config.latent_channels, side, side), generator=generator)
        return model.decode(latents.to(model.device, model.dtype)).sample

    def save_pretrained(self, model, folder: Path) -> None:
        model.save_pretrained(folder / "vae")

    def load_saved_weights(self, folder: Path) -> dict[str, torch.Tensor]:
        from diffusers import AutoencoderKL

        return AutoencoderKL.from_pretrained(folder / "vae").state_dict()


class TextAndUNet(torch.nn.Module):
    """The trained parts of a text-to-image model, as one module for the loop, EMA and checkpoints."""

    def __init__(self, unet, text_encoder):
        super().__init__()
        self.unet = unet
        self.text_encoder = text_encoder
        self.config = {}  # EMAModel asks for a config; the parts keep their own


@dataclass(frozen=True)
class TextToImageSetup:
    """What :class:`TextToImage` needs besides the request: the trained VAE and the captions."""

    vae_dir: Path  # a folder holding vae/ (a VaeReconstruction run)
    captions: Callable[[int, int], str]  # (label, template draw) -> caption
    prompts: Callable[[int], str]  # label -> the prompt the sample grids draw it with
    tokenizer: Callable[[], object]  # builds the CLIP tokenizer
    num_templates: int

    def from_request(self, request, data) -> "TextToImage":
        return TextToImage(self, request, data)


class TextToImage:
    """Latent diffusion: x0 = VAE latents * scaling_factor; eps-prediction MSE (Ho et al. 2020, eq. 14),
    the UNet conditioned on the text encoder's last hidden state, captions dropped for CFG."""

    def __init__(self, setup: TextToImageSetup, request, data):
        from diffusers import AutoencoderKL, DDPMScheduler

        if "label" not in data.dataset.column_names:
            raise DataError(f"text-to-image training needs labelled images (the built-in digits); "
                            f"{request.data!r} has no labels")
        self.setup = setup
        self.tokenizer = setup.tokenizer()
        self.vae = AutoencoderKL.from_pretrained(setup.vae_dir / "vae").eval().requires_grad_(False)
        self.vae.register_to_config(scaling_factor=self._scaling_factor(data, request.resolution))
        self.noise_scheduler = DDPMScheduler(  # SD 1.x's training schedule
            num_train_timesteps=request.num_train_timesteps, beta_schedule="scaled_linear",
            beta_start=0.00085, beta_end=0.012, clip_sample=False, steps_offset=1,
        )
        self.latent_side = request.resolution // 2 ** (len(self.vae.config.block_out_channels) - 1)

    @torch.no_grad()
    def _scaling_factor(self, data, resolution: int) -> float:
        """1 / std of the latents over (up to) 512 training images, as SD's 0.18215 was found."""
        from engine.training.data import recipe_transform, to_mode

        preprocess = recipe_transform(resolution, data.channels, flip=False)
        rows = data.dataset.with_format(None)[: min(len(data), 512)]["image"]
        images = as_rgb(torch.stack([preprocess(to_mode(im, data.channels)) for im in rows]))
        latents = self.vae.encode(images).latent_dist.mean
        scale = float(1.0 / latents.std())
        self.data_latents = latents[:256] * scale  # (n, 4, h, w), for the preview fit
        return scale

    def build_model(self, seed: int) -> TextAndUNet:
        from diffusers import UNet2DConditionModel
        from transformers import CLIPTextConfig, CLIPTextModel

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            unet = UNet2DConditionModel(**UNET_CONFIG, sample_size=self.latent_side)
            text_encoder = CLIPTextModel(CLIPTextConfig(
                **TEXT_CONFIG, vocab_size=len(self.tokenizer.get_vocab()), max_position_embeddings=MODEL_MAX_LENGTH,
                bos_token_id=0, eos_token_id=1, pad_token_id=1,
            ))
        return TextAndUNet(unet, text_encoder)

    def _captions(self, labels: torch.Tensor, generator: torch.Generator) -> list[str]:
        draws = torch.randint(0, self.setup.num_templates, (len(labels),), generator=generator,
                              device=generator.device).tolist()
        drop = (torch.rand((len(labels),), generator=generator, device=generator.device) < CAPTION_DROP).tolist()
        return ["" if d else self.setup.captions(int(k), t) for k, t, d in zip(labels.tolist(), draws, drop)]

    def _embed(self, model: TextAndUNet, captions: list[str], device) -> torch.Tensor:
        ids = self.tokenizer(captions, padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids
        return model.text_encoder(ids.to(device))[0]  # (B, seq, dim)

    def loss(self, model: TextAndUNet, batch: dict, generator: torch.Generator) -> torch.Tensor:
        images = as_rgb(batch["images"])
        self.vae.to(images.device)
        # 1. Latents of the clean images, scaled to unit variance.
        with torch.no_grad():
            latents = self.vae.encode(images).latent_dist.sample(generator=generator)
            latents = latents * self.vae.config.scaling_factor  # (B, 4, h, w)
        # 2. Captions from the labels, some dropped; their embeddings (the text encoder trains too).
        embeds = self._embed(model, self._captions(batch["labels"], generator), images.device)
        # 3. Noise at random timesteps, the UNet predicts it.
        noise = torch.randn(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
        timesteps = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (latents.shape[0],),
                                  generator=generator, device=latents.device, dtype=torch.int64)
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        noise_pred = model.unet(noisy, timesteps, encoder_hidden_states=embeds, return_dict=False)[0]
        per_sample = (noise_pred.detach().float() - noise.float()).pow(2).flatten(1).mean(1)  # (B,)
        return LossTerms(F.mse_loss(noise_pred.float(), noise.float()), per_sample, timesteps,
                         self.num_train_timesteps)

    @property
    def num_train_timesteps(self) -> int:
        return self.noise_scheduler.config.num_train_timesteps

    def pipeline(self, model: TextAndUNet):
        from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

        return StableDiffusionPipeline(
            vae=self.vae, text_encoder=model.text_encoder, tokenizer=self.tokenizer, unet=model.unet,
            scheduler=DPMSolverMultistepScheduler.from_config(self.noise_scheduler.config),
            safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )

    @torch.no_grad()
    def sample(self, model: TextAndUNet, *, num_images: int, seed: int, num_inference_steps: int,
               cancel: CancelToken | None = None) -> torch.Tensor:
        """Labels 0-9 in turn from their prompts, CFG, fixed seeds, ``num_inference_steps`` steps:
        comparable grids through training."""
        pipe = self.pipeline(model)
        pipe.set_progress_bar_config(disable=True)
        prompts = [self.setup.prompts(i % 10) for i in range(num_images)]

        def on_step(p, i, t, kwargs):
            if cancel is not None and cancel.cancelled:
                raise Cancelled("sampling stopped")
            return kwargs

        images = pipe(prompts, num_inference_steps=num_inference_steps, guidance_scale=SAMPLE_GUIDANCE,
                      generator=torch.Generator("cpu").manual_seed(seed), output_type="pt",
                      callback_on_step_end=on_step).images  # (B, 3, H, W) in [0, 1]
        return images * 2 - 1

    def save_pretrained(self, model: TextAndUNet, folder: Path) -> None:
        """StableDiffusionPipeline layout, plus the latent-to-RGB preview matrix fitted for this VAE."""
        self.pipeline(model).save_pretrained(folder)
        (folder / LATENT_RGB_FILE).write_text(json.dumps(fit_latent_rgb(self.vae, self.data_latents)))

    def load_saved_weights(self, folder: Path) -> dict[str, torch.Tensor]:
        from diffusers import UNet2DConditionModel
        from transformers import CLIPTextModel

        unet = UNet2DConditionModel.from_pretrained(folder / "unet").state_dict()
        text = CLIPTextModel.from_pretrained(folder / "text_encoder").state_dict()
        return {**{f"unet.{k}": v for k, v in unet.items()}, **{f"text_encoder.{k}": v for k, v in text.items()}}


@torch.no_grad()
def fit_latent_rgb(vae, latents: torch.Tensor) -> dict:
    """Least squares from latents as the denoising loop holds them (scaled, (n, C, h, w)) to the
    decoded image averaged down to latent resolution: RGB ~ latents @ M + b, the linear preview
    REFERENCE.md describes for a project's own VAE."""
    side = latents.shape[-1]
    images = vae.decode(latents.to(vae.device, vae.dtype) / vae.config.scaling_factor).sample
    small = F.adaptive_avg_pool2d(images.float().cpu(), side)  # (n, 3, h, w)
    x = latents.float().cpu().permute(0, 2, 3, 1).reshape(-1, latents.shape[1])  # (n*h*w, C)
    y = small.permute(0, 2, 3, 1).reshape(-1, 3)  # (n*h*w, 3)
    x1 = torch.cat([x, torch.ones(len(x), 1)], dim=1)
    solution = torch.linalg.lstsq(x1, y).solution  # (C+1, 3)
    return {"matrix": solution[:-1].tolist(), "bias": solution[-1].tolist()}
