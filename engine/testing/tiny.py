"""Tiny random-weight diffusers pipelines built locally, for tests and benchmarks.

Shapes follow diffusers' own tests (``get_dummy_components``). Weights are random
but reproducible: every model is initialised under a seeded, forked RNG, so the
global RNG is left as it was.
"""

from __future__ import annotations

import string

import torch

VOCAB_CHARS = string.ascii_lowercase + string.digits + ".,!?'-"


def tiny_vocab() -> dict[str, int]:
    """A character-level CLIP vocabulary: each character alone and as a word end."""
    tokens = ["<|startoftext|>", "<|endoftext|>"]
    for c in VOCAB_CHARS:
        tokens += [c, f"{c}</w>"]
    return {tok: i for i, tok in enumerate(tokens)}


def tiny_tokenizer(model_max_length: int = 32):
    from transformers import CLIPTokenizer

    return CLIPTokenizer(vocab=tiny_vocab(), merges=[], model_max_length=model_max_length)


def tiny_sd_components(seed: int = 0, *, sample_size: int = 32, model_max_length: int = 32) -> dict:
    """UNet2DConditionModel, AutoencoderKL, CLIP text encoder/tokenizer and a PNDM scheduler."""
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            block_out_channels=(32, 64),
            layers_per_block=2,
            sample_size=sample_size,
            in_channels=4,
            out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=32,
        )
        vae = AutoencoderKL(
            block_out_channels=[32, 64],
            in_channels=3,
            out_channels=3,
            down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
            up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
            latent_channels=4,
        )
        tokenizer = tiny_tokenizer(model_max_length)
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                bos_token_id=0,
                eos_token_id=1,
                pad_token_id=1,
                hidden_size=32,
                intermediate_size=37,
                layer_norm_eps=1e-05,
                num_attention_heads=4,
                num_hidden_layers=5,
                vocab_size=len(tokenizer.get_vocab()),
                max_position_embeddings=model_max_length,
            )
        )
    scheduler = PNDMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True,
        set_alpha_to_one=False, steps_offset=1,
    )
    for m in (unet, vae, text_encoder):
        m.eval()
    return {
        "unet": unet,
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "scheduler": scheduler,
        "safety_checker": None,
        "feature_extractor": None,
        "image_encoder": None,
    }


def tiny_sd_pipeline(seed: int = 0, **kwargs):
    from diffusers import StableDiffusionPipeline

    components = tiny_sd_components(seed, **kwargs)
    return StableDiffusionPipeline(**components, requires_safety_checker=False)


def tiny_ddpm_pipeline(seed: int = 0, *, sample_size: int = 16, channels: int = 3, num_train_timesteps: int = 1000):
    """A UNet2DModel + DDPMScheduler in DDPMPipeline layout."""
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DModel(
            sample_size=sample_size,
            in_channels=channels,
            out_channels=channels,
            layers_per_block=1,
            block_out_channels=(16, 32),
            norm_num_groups=8,
            down_block_types=("DownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        )
    unet.eval()
    scheduler = DDPMScheduler(num_train_timesteps=num_train_timesteps)
    return DDPMPipeline(unet=unet, scheduler=scheduler)
