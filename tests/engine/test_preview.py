"""Previews: x0 drawn lazily from (eps, x_t) equals the scheduler's own pred_original_sample."""

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler

from engine.sampling.preview import LatentRGBPreviewer, PixelPreviewer, X0Previewer, to_uint8


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
