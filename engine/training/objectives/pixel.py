"""What a training run optimises: the model it builds, its loss, how it samples and saves.

The training loop (:mod:`engine.training.request`) only calls the methods of an objective, so
another model family (a conditional UNet with a VAE, say) plugs in as another class
with the same methods. :class:`NoisePrediction` is the diffusers "train a diffusion
model" tutorial: a UNet2DModel learns to predict the noise a DDPMScheduler added.
"""

from __future__ import annotations

from pathlib import Path

import torch

from engine.cancel import CancelToken, check
from engine.training.objectives.terms import LossTerms, mse_terms

# UNet2DModel settings per preset; sample_size and channels come from the request and the data.
PRESETS: dict[str, dict] = {
    # The shape of diffusers' own test UNet: about 0.1-0.2 s a step on one CPU core at 16-32 px, batch 16.
    "tiny": dict(
        layers_per_block=1,
        block_out_channels=(16, 32),
        norm_num_groups=8,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    ),
    # 4M parameters for 32-64 px: about 500 images/s at 64 px on an H200 (bf16, batch 32).
    "small": dict(
        layers_per_block=2,
        block_out_channels=(32, 64, 128),
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    ),
    # The built-in digits-ddpm: three levels, attention at the two coarsest, about 1.2M weights (5 MB).
    "digits": dict(
        layers_per_block=1,
        block_out_channels=(32, 64, 96),
        norm_num_groups=16,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    ),
    # The tutorial's 128 px butterflies model as written there (114M parameters): about 200 images/s on an
    # H200 at batch 16, bf16 no faster than fp32: decoding images with num_workers=0 is the likely limit.
    "ddpm-128": dict(
        layers_per_block=2,
        block_out_channels=(128, 128, 256, 256, 512, 512),
        down_block_types=("DownBlock2D", "DownBlock2D", "DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D"),
    ),
}


def size_multiple(preset: str) -> int:
    """Sides must divide by 2 for every downsampling level of the preset."""
    return 2 ** (len(PRESETS[preset]["block_out_channels"]) - 1)


def unet_config(preset: str, resolution: int, channels: int) -> dict:
    return dict(PRESETS[preset], sample_size=resolution, in_channels=channels, out_channels=channels)


def prediction_target(noise_scheduler, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """What the model learns to output, as its scheduler's ``prediction_type`` says: the noise (DDPM), the
    velocity v = sqrt(a_bar) eps - sqrt(1 - a_bar) x0 (Salimans & Ho 2022, eq. 2), or x0 itself."""
    kind = noise_scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return noise_scheduler.get_velocity(x0, noise, timesteps)
    if kind == "sample":
        return x0
    from engine.errors import InputError

    raise InputError(f"the model's scheduler predicts {kind!r}, which training does not know; "
                     "known: epsilon, v_prediction, sample")


class NoisePrediction:
    """Ho et al. 2020, Algorithm 1: x_t = sqrt(a_bar_t) x0 + sqrt(1 - a_bar_t) eps, loss |eps - eps_theta(x_t, t)|^2.

    From scratch the UNet is new, of the request's preset; a fine-tune (:meth:`from_pretrained`) starts from a
    trained model's UNet and keeps its scheduler config (so its beta schedule and prediction type)."""

    def __init__(self, *, preset: str, resolution: int, channels: int, num_train_timesteps: int, beta_schedule: str,
                 snr_gamma: float = 0.0, prediction_type: str = "", rescale_betas_zero_snr: bool = False):
        from diffusers import DDPMScheduler

        self.config = unet_config(preset, resolution, channels)
        self.noise_scheduler = DDPMScheduler(num_train_timesteps=num_train_timesteps, beta_schedule=beta_schedule,
                                             prediction_type=prediction_type or "epsilon",
                                             rescale_betas_zero_snr=rescale_betas_zero_snr)
        self.pretrained = None  # the base model's UNet for a fine-tune
        self.channels = channels  # what the data is converted to
        self.snr_gamma = snr_gamma

    @classmethod
    def from_request(cls, request, data) -> "NoisePrediction":
        return cls(preset=request.preset, resolution=request.resolution, channels=data.channels,
                   num_train_timesteps=request.num_train_timesteps, beta_schedule=request.beta_schedule,
                   snr_gamma=request.snr_gamma, prediction_type=request.prediction_type,
                   rescale_betas_zero_snr=request.rescale_betas_zero_snr)

    @classmethod
    def from_pretrained(cls, base, request) -> "NoisePrediction":
        """A fine-tune of ``base`` (an unconditional :class:`engine.training.base.BaseModel`): its UNet's config
        and weights, its scheduler config. The data is trained at the model's resolution and channels."""
        from diffusers import DDPMScheduler, UNet2DModel

        from engine.errors import InputError
        from engine.training.base import check_loaded_kind

        unet = UNet2DModel.from_pretrained(base.location, subfolder="unet", **base.load_kwargs())
        check_loaded_kind(base, unet, "full")
        size = unet.config.sample_size
        side = size if isinstance(size, int) else size[0] if len(set(size)) == 1 else None
        if side != request.resolution:
            raise InputError(f"resolution {request.resolution} differs from {base.name!r}'s {size} px: a fine-tune "
                             f"trains at the model's own resolution, which its UNet was trained for; set "
                             f"resolution to {side if side else size}", field="resolution")
        self = cls.__new__(cls)
        self.config = dict(unet.config)
        self.noise_scheduler = DDPMScheduler.from_pretrained(base.location, subfolder="scheduler",
                                                             local_files_only=base.local)
        overrides = {**({"prediction_type": request.prediction_type} if request.prediction_type else {}),
                     **({"rescale_betas_zero_snr": True} if request.rescale_betas_zero_snr else {})}
        if overrides:  # as diffusers' training scripts override the base model's scheduler
            self.noise_scheduler = DDPMScheduler.from_config(self.noise_scheduler.config, **overrides)
        self.pretrained = unet
        self.channels = unet.config.in_channels
        self.snr_gamma = request.snr_gamma
        self.info = {"start_from": base.name, "resolution": side, "channels": self.channels,
                     "prediction_type": self.noise_scheduler.config.prediction_type}
        return self

    @property
    def num_train_timesteps(self) -> int:
        return self.noise_scheduler.config.num_train_timesteps

    def build_model(self, seed: int) -> torch.nn.Module:
        """A fresh UNet2DModel, initialised under ``seed`` without touching the global RNG; or the base model's."""
        from diffusers import UNet2DModel

        if self.pretrained is not None:
            return self.pretrained.train()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return UNet2DModel(**self.config)

    def loss(self, model, batch: dict, generator: torch.Generator) -> LossTerms:
        """The recipe's loss for a batch of clean images (B, C, H, W) in [-1, 1]."""
        images = batch["images"]
        # 1. Noise and a random timestep per image, from the run's generator.
        noise = torch.randn(images.shape, generator=generator, device=images.device, dtype=images.dtype)
        timesteps = torch.randint(
            0, self.num_train_timesteps, (images.shape[0],),
            generator=generator, device=images.device, dtype=torch.int64,
        )  # (B,)
        # 2. The forward process q(x_t | x_0) (Ho et al. 2020, eq. 4).
        noisy = self.noise_scheduler.add_noise(images, noise, timesteps)  # (B, C, H, W)
        # 3. The UNet predicts the noise (or what the model's scheduler says it predicts); mean squared error (eq. 14).
        prediction = model(noisy, timesteps, return_dict=False)[0]
        target = prediction_target(self.noise_scheduler, images, noise, timesteps)
        return mse_terms(prediction, target, timesteps, self.noise_scheduler, self.snr_gamma)

    @torch.no_grad()
    def sample(self, model, *, num_images: int, seed: int, num_inference_steps: int,
               cancel: CancelToken | None = None) -> torch.Tensor:
        """DDIM (eta 0) from noise drawn with ``seed``: what ``DDIMPipeline`` gives for the same inputs.

        Returns (B, C, H, W) in about [-1, 1].
        """
        from diffusers import DDIMScheduler
        from diffusers.utils.torch_utils import randn_tensor

        scheduler = DDIMScheduler.from_config(self.noise_scheduler.config)
        scheduler.set_timesteps(num_inference_steps)
        generator = torch.Generator("cpu").manual_seed(seed)
        config = model.config
        shape = (num_images, config.in_channels, config.sample_size, config.sample_size)
        images = randn_tensor(shape, generator=generator, device=model.device, dtype=model.dtype)
        for i, t in enumerate(scheduler.timesteps):
            check(cancel, i)
            noise_pred = model(images, t).sample
            images = scheduler.step(noise_pred, t, images, eta=0.0, generator=generator).prev_sample
        return images

    def save_pretrained(self, model, folder: Path) -> None:
        """DDPMPipeline layout: ``model_index.json``, ``unet/``, ``scheduler/``."""
        from diffusers import DDPMPipeline

        DDPMPipeline(unet=model, scheduler=self.noise_scheduler).save_pretrained(folder)

    def load_saved_weights(self, folder: Path) -> dict[str, torch.Tensor]:
        """The model's weights as :meth:`save_pretrained` wrote them (the EMA weights when EMA is on)."""
        from engine.training.checkpoints import load_tensors

        return load_tensors(folder / "unet" / "diffusion_pytorch_model.safetensors")
