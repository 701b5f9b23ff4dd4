"""Unconditional's steps carry eps, x0 and v of the same step whatever the model predicts, as Text to image's do."""

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler
from diffusers.utils.torch_utils import randn_tensor

from engine.events import Step
from engine.sampling.preview import PixelPreviewer
from engine.sampling.unconditional import UnconditionalRequest, iter_unconditional, sample_shape
from engine.testing.tiny import tiny_ddpm_pipeline

STEPS, SEED, BATCH = 3, 5, 2


def reference_predictions(pipe):
    """Each step's (eps, x0, v) from a plain diffusers DDIM loop over the same UNet and noise, computed from the
    scheduler's alphas: x_t = a x0 + s eps (Ho et al. 2020, eq. 4) and v = a eps - s x0 (Salimans & Ho 2022)."""
    scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    generator = torch.Generator("cpu").manual_seed(SEED)
    x = randn_tensor(sample_shape(pipe.unet.config, BATCH), generator=generator)
    scheduler.set_timesteps(STEPS)
    found = []
    with torch.no_grad():
        for t in scheduler.timesteps:
            output = pipe.unet(x, t).sample
            alpha_bar = scheduler.alphas_cumprod[int(t)]
            a, s = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
            kind = scheduler.config.prediction_type
            if kind == "epsilon":
                eps = output
                x0 = (x - s * eps) / a
            elif kind == "v_prediction":
                x0 = a * x - s * output
                eps = a * output + s * x
            else:
                x0 = output
                eps = (x - a * x0) / s
            found.append((eps, x0, a * eps - s * x0))
            x = scheduler.step(output, t, x).prev_sample
    return found


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_unconditional_views_are_the_steps_eps_x0_and_v(prediction_type):
    pipe = tiny_ddpm_pipeline(seed=0, sample_size=16)
    pipe.scheduler = DDPMScheduler.from_config(pipe.scheduler.config, prediction_type=prediction_type)
    steps = [e for e in iter_unconditional(UnconditionalRequest(scheduler="DDIM", num_inference_steps=STEPS,
                                                                seed=SEED, batch_size=BATCH), pipe=pipe)
             if isinstance(e, Step)]
    draw = PixelPreviewer()
    assert len(steps) == STEPS
    for step, (eps, x0, v) in zip(steps, reference_predictions(pipe)):
        for name, drawn, expected in (("eps", step.views["eps"].array(), eps), ("x0", step.preview_x0.array(), x0),
                                      ("v", step.views["v"].array(), v)):
            difference = np.abs(drawn.astype(int) - draw(expected).astype(int)).max()
            assert difference <= 1, (prediction_type, step.step, name, difference)
        assert not np.array_equal(step.views["eps"].array(), step.views["v"].array())
