"""eps, x0 and v of a step, drawn from the model's output whatever it predicts."""

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

from engine.events import Step
from engine.sampling.txt2img import Txt2ImgRequest, iter_txt2img
from engine.sampling.views import PredictionView


def identity(array):
    return np.asarray(array)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_eps_x0_and_v_are_recovered_from_any_prediction(prediction_type):
    scheduler = DDPMScheduler(prediction_type=prediction_type)
    t = 600
    generator = torch.Generator().manual_seed(0)
    x0, eps = torch.randn((1, 4, 8, 8), generator=generator), torch.randn((1, 4, 8, 8), generator=generator)
    timesteps = torch.tensor([t])
    x_t = scheduler.add_noise(x0, eps, timesteps)  # diffusers' own forward process
    v = scheduler.get_velocity(x0, eps, timesteps)  # and its own v
    output = {"epsilon": eps, "v_prediction": v, "sample": x0}[prediction_type]
    for what, expected in (("eps", eps), ("x0", x0), ("v", v)):
        drawn = PredictionView(scheduler, t, what, identity)((output, x_t))
        assert np.allclose(drawn, expected.numpy(), atol=1e-4), what


def test_text_to_image_steps_carry_eps_and_v_views(tiny_sd):
    steps = [e for e in iter_txt2img(Txt2ImgRequest("a seven", num_inference_steps=2, scheduler="DDIM", seed=1),
                                     pipe=tiny_sd) if isinstance(e, Step)]
    for name in ("eps", "v"):
        image = steps[0].views[name].array()
        assert image.dtype == np.uint8 and image.ndim == 3
    assert not np.array_equal(steps[0].views["eps"].array(), steps[0].views["v"].array())
