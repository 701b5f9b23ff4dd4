"""Models in the shapes people bring, with random weights built here (no download), for the GPU bench.

``sd15``: Stable Diffusion 1.5's UNet2DConditionModel, AutoencoderKL and CLIP text encoder (the shapes of
``stable-diffusion-v1-5``'s configs; the tokenizer is the tiny character one, 77 tokens, which costs the
same a step). ``cat256``: ``google/ddpm-cat-256``'s UNet2DModel and DDPMScheduler. ``tiny``: the smallest
model of each kind (one UNet block), so that the bench's tiny mode compiles in seconds, not minutes, on a CPU.
``tiny-vae8``: the tiny text-to-image model with a tiny VAE that downsamples 8x as SD's does, so that it makes
SD's 512 px images from 64x64 latents at a fraction of the cost (bench/realsize.py's history figures).
Weights are drawn under ``torch.manual_seed(seed)`` on the device they are built on (a GPU builds SD 1.5 in
about a second), in a forked RNG so that the caller's generators are left as they were.
"""

from __future__ import annotations

import contextlib

import torch

from engine.testing.tiny import tiny_sd_components, tiny_tokenizer

# stable-diffusion-v1-5/unet/config.json: the rest are UNet2DConditionModel's defaults
SD15_UNET = dict(sample_size=64, cross_attention_dim=768, attention_head_dim=8,
                 block_out_channels=(320, 640, 1280, 1280))
SD15_VAE = dict(block_out_channels=(128, 256, 512, 512), latent_channels=4, sample_size=512, layers_per_block=2,
                down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
SD15_TEXT = dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
                 max_position_embeddings=77)
SD15_SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True,
                      set_alpha_to_one=False, steps_offset=1)
# google/ddpm-cat-256: unet/config.json and scheduler/scheduler_config.json
CAT256_UNET = dict(
    sample_size=256, in_channels=3, out_channels=3, layers_per_block=2, block_out_channels=(128, 128, 256, 256, 512, 512),
    down_block_types=("DownBlock2D", "DownBlock2D", "DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D"),
    downsample_padding=0, flip_sin_to_cos=False, freq_shift=1, norm_eps=1e-6, norm_num_groups=32,
    mid_block_scale_factor=1, act_fn="silu", center_input_sample=False, time_embedding_type="positional",
)
CAT256_SCHEDULER = dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=0.0001, beta_end=0.02,
                        variance_type="fixed_small", clip_sample=True)
# The prompt's cross-attention in the mid block only: a quarter of the attention layers that torch.compile traces
# and generates code for (on the 2-core dev CPU: a cold compile of this UNet alone 54 s -> 45 s, a cached one ~1 s less)
TINY_SD_UNET = dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32,),
                    down_block_types=("DownBlock2D",), up_block_types=("UpBlock2D",),
                    cross_attention_dim=32, norm_num_groups=8, attention_head_dim=8)
# Attention at 32x32, not at the 64x64 latents' 4096 tokens (a step 16x cheaper: 150 steps in seconds, not minutes)
TINY_VAE8_UNET = dict(TINY_SD_UNET, sample_size=64, block_out_channels=(32, 32),
                      down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                      up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"))
TINY_VAE8 = dict(block_out_channels=(32, 32, 32, 32), latent_channels=4, layers_per_block=1, sample_size=512,
                 down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)  # 3 halvings
TINY_DDPM_UNET = dict(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(16,),
                      norm_num_groups=8, down_block_types=("DownBlock2D",), up_block_types=("UpBlock2D",))
SHAPES = {"txt2img": ("sd15", "tiny", "tiny-vae8"), "unconditional": ("cat256", "tiny")}


def sd_pipeline(shape: str = "sd15", *, device="cpu", dtype=torch.float32, seed: int = 0):
    """A StableDiffusionPipeline of ``shape`` ("sd15", "tiny" or "tiny-vae8") with random weights, on ``device`` in
    ``dtype``."""
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    device = torch.device(device)
    with _seeded(device, seed), device:
        if shape == "sd15":
            tokenizer = tiny_tokenizer(77)
            unet, vae = UNet2DConditionModel(**SD15_UNET), AutoencoderKL(**SD15_VAE)
            text_encoder = CLIPTextModel(CLIPTextConfig(**SD15_TEXT, vocab_size=len(tokenizer.get_vocab()),
                                                        bos_token_id=0, eos_token_id=1, pad_token_id=1))
        elif shape in ("tiny", "tiny-vae8"):
            parts = tiny_sd_components(seed)  # its VAE, text encoder and tokenizer; a one-block UNet
            unet, vae, text_encoder, tokenizer = (UNet2DConditionModel(**TINY_SD_UNET), parts["vae"],
                                                  parts["text_encoder"], parts["tokenizer"])
            if shape == "tiny-vae8":  # SD's latent size: 512 px from 64x64
                unet, vae = UNet2DConditionModel(**TINY_VAE8_UNET), AutoencoderKL(**TINY_VAE8)
        else:
            raise ValueError(f"unknown text-to-image shape {shape!r}; known: {', '.join(SHAPES['txt2img'])}")
    pipe = StableDiffusionPipeline(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                                   scheduler=PNDMScheduler(**SD15_SCHEDULER), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    for module in (unet, vae, text_encoder):
        module.eval()
    pipe.set_progress_bar_config(disable=True)
    return pipe if dtype == torch.float32 else pipe.to(dtype=dtype)  # built on the device already


def ddpm_pipeline(shape: str = "cat256", *, device="cpu", dtype=torch.float32, seed: int = 0):
    """A DDPMPipeline of ``shape`` ("cat256" or "tiny") with random weights, on ``device`` in ``dtype``."""
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    configs = {"cat256": CAT256_UNET, "tiny": TINY_DDPM_UNET}
    if shape not in configs:
        raise ValueError(f"unknown unconditional shape {shape!r}; known: {', '.join(SHAPES['unconditional'])}")
    device = torch.device(device)
    with _seeded(device, seed), device:
        unet = UNet2DModel(**configs[shape]).eval()
    pipe = DDPMPipeline(unet=unet, scheduler=DDPMScheduler(**CAT256_SCHEDULER))
    pipe.set_progress_bar_config(disable=True)
    return pipe if dtype == torch.float32 else pipe.to(dtype=dtype)


@contextlib.contextmanager
def _seeded(device: torch.device, seed: int):
    """A forked RNG (the CPU's and ``device``'s) seeded with ``seed``."""
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        yield
