"""Previews: x0 drawn lazily from (eps, x_t) equals the scheduler's own pred_original_sample; the VAE
preview is the VAE's own decode."""

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler

from engine.sampling.preview import LatentRGBPreviewer, PixelPreviewer, VaePreviewer, X0Previewer, to_uint8


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_x0_previewer_matches_ddim_pred_original_sample(prediction_type):
    scheduler = DDIMScheduler(prediction_type=prediction_type, beta_schedule="scaled_linear",
                              beta_start=0.00085, beta_end=0.012, clip_sample=False)
    scheduler.set_timesteps(10)
    g = torch.Generator().manual_seed(0)
    sample, model_output = torch.randn(1, 3, 8, 8, generator=g), torch.randn(1, 3, 8, 8, generator=g)
    t = scheduler.timesteps[3]
    expected = scheduler.step(model_output, t, sample).pred_original_sample
    seen = {}

    def keep(x0):
        seen["x0"] = x0
        return np.zeros((1, 1, 3), np.uint8)

    X0Previewer(scheduler, t, keep)((model_output, sample))
    assert np.allclose(seen["x0"], expected.numpy(), atol=1e-5)


def test_uint8_rounds_and_clamps_and_grids():
    images = torch.tensor([-2.0, -1.0, 0.0, 1.0]).reshape(4, 1, 1, 1)
    grid = to_uint8(images)  # 2x2 grid of single pixels, grey to RGB
    assert grid.shape == (2, 2, 3) and grid.dtype == np.uint8
    assert grid[:, :, 0].ravel().tolist() == [0, 0, 128, 255]


def test_previewers_upscale_to_a_visible_size():
    latents = torch.randn(1, 4, 8, 8)
    assert LatentRGBPreviewer()(latents).shape == (256, 256, 3)
    assert PixelPreviewer()(torch.zeros(2, 3, 32, 32)).shape == (256, 512, 3)


def decoded_uint8(vae, latents) -> np.ndarray:
    """``vae.decode(latents / scaling_factor)`` as uint8 (B, H, W, 3): [-1, 1] -> [0, 1], clamp, round, cast."""
    with torch.no_grad():
        images = vae.decode(latents / vae.config.scaling_factor).sample  # (B, 3, H, W)
    images = ((images / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
    return images.permute(0, 2, 3, 1).numpy()


def test_vae_previewer_is_the_vae_decode(tiny_sd):
    vae = tiny_sd.vae
    assert vae.config.scaling_factor == 0.18215  # the tiny VAE keeps SD 1.x's factor
    latents = torch.randn(2, 4, 32, 32, generator=torch.Generator().manual_seed(0))  # (B, 4, h, w), as the loop's
    (first,), both = decoded_uint8(vae, latents[:1]), decoded_uint8(vae, latents)
    assert first.shape == (64, 64, 3)
    # One latent: its decode, shown at the image's own resolution when min_side asks for no more.
    assert np.array_equal(VaePreviewer(vae, min_side=64)(latents[:1]), first)
    # As the loop builds it: upscaled by whole pixels to a 256 px short side; a batch side by side.
    shown = VaePreviewer(vae)(latents[:1])
    assert np.array_equal(shown, first.repeat(4, axis=0).repeat(4, axis=1))
    assert np.array_equal(VaePreviewer(vae, min_side=64)(latents), np.concatenate(list(both), axis=1))
    # The comparison can fail: decoding without the scaling factor gives a visibly different image.
    with torch.no_grad():
        unscaled = vae.decode(latents[:1]).sample
    assert np.abs(to_uint8(unscaled).astype(int) - first.astype(int)).max() > 10
