"""Inside a step: the predicted noise and the guidance delta are the loop's own tensors (no extra UNet call), the
measures say what those tensors hold, and across the worker the default views cost nothing extra."""

import math

import numpy as np
import pytest
import torch

from engine.events import Done, Step
from engine.sampling.preview import LatentRGBPreviewer
from engine.sampling.txt2img import Txt2ImgRequest, encode_prompt, iter_txt2img
from engine.sampling.views import DEFAULT_VIEWS, GuidanceHeatmap, heat_colors, step_measures, view_array
from engine.worker.child import PortableRun

REQUEST = dict(prompt="a cat", negative_prompt="blurry", num_inference_steps=5, guidance_scale=6.0, seed=3,
               width=32, height=32)


def run(pipe, **kw):
    events = list(iter_txt2img(Txt2ImgRequest(**{**REQUEST, **kw}), pipe=pipe))
    return [e for e in events if isinstance(e, Step)], events[-1]


class CountCalls:
    def __init__(self, module):
        self.count = 0
        self.handle = module.register_forward_hook(self)

    def __call__(self, module, args, output):
        self.count += 1


def test_every_view_of_every_step_costs_no_extra_unet_call(tiny_sd):
    calls = CountCalls(tiny_sd.unet)
    try:
        steps, done = run(tiny_sd, scheduler="DDIM")
        for step in done.steps:
            for name in ("x0", "xt", "eps", "guidance"):
                assert view_array(step, name).dtype == np.uint8
            assert step_measures(step) is not None
    finally:
        calls.handle.remove()
    assert calls.count == len(steps) == 5  # one batched [uncond, text] evaluation a step, as before


@pytest.mark.parametrize("scheduler", ["DDIM", "Euler"])
def test_guidance_and_eps_are_the_steps_own(tiny_sd, scheduler):
    """Recomputed from the step's input x_t with the UNet, outside the loop: the same guidance delta and guided eps."""
    steps, done = run(tiny_sd, scheduler=scheduler)
    k = 2  # step 3 starts from step 2's x_t
    latents = done.steps[k - 1].preview_xt.tensor
    from engine.sampling.schedulers import make_scheduler

    sched = make_scheduler(scheduler, tiny_sd.scheduler.config)
    sched.set_timesteps(REQUEST["num_inference_steps"])
    sched._step_index = k  # where the loop stood (Euler scales its input by this step's sigma)
    t = sched.timesteps[k]
    with torch.no_grad():
        embeds = encode_prompt(tiny_sd, REQUEST["prompt"], REQUEST["negative_prompt"], True)
        model_input = sched.scale_model_input(torch.cat([latents] * 2), t)
        uncond, text = tiny_sd.unet(model_input, t, encoder_hidden_states=embeds).sample.chunk(2)
    step = done.steps[k]
    guided = uncond + REQUEST["guidance_scale"] * (text - uncond)
    torch.testing.assert_close(step.views["eps"].tensor, guided, rtol=1e-4, atol=1e-5)
    measured = step_measures(step)
    assert measured["guidance rms"] == pytest.approx(float((text - uncond).pow(2).mean().sqrt()), rel=1e-4)
    assert measured["latent std"] == pytest.approx(float(step.preview_xt.tensor.std(correction=0)), rel=1e-4)
    alpha_bar = float(sched.alphas_cumprod[int(round(float(t)))])
    assert measured["sigma"] == pytest.approx(math.sqrt((1 - alpha_bar) / alpha_bar), rel=1e-4)
    assert measured["t"] == pytest.approx(float(t)) and measured["step"] == k + 1
    # the eps view is drawn from it, the way x_t is drawn (the model's latent-to-RGB)
    np.testing.assert_array_equal(view_array(step, "eps"), LatentRGBPreviewer()(guided))


def test_without_guidance_there_is_no_guidance_view(tiny_sd):
    steps, done = run(tiny_sd, scheduler="DDIM", guidance_scale=1.0)
    assert view_array(done.steps[0], "guidance") is None
    assert math.isnan(step_measures(done.steps[0])["guidance rms"])
    assert view_array(done.steps[0], "eps").shape[2] == 3


def test_heat_map_is_brightest_where_guidance_pushes_most():
    uncond = torch.zeros((1, 4, 8, 8))
    text = torch.zeros((1, 4, 8, 8))
    text[0, :, 2, 5] = 3.0  # one latent pixel pushed hard
    text[0, 0, 6, 1] = 0.5  # one a little
    image = GuidanceHeatmap(min_side=8)((uncond, text))  # (8, 8, 3), one pixel per latent pixel
    brightness = image.astype(int).sum(axis=2)
    assert np.unravel_index(brightness.argmax(), brightness.shape) == (2, 5)
    assert brightness[2, 5] > brightness[6, 1] > brightness[0, 0]
    np.testing.assert_array_equal(heat_colors(np.array([[0.0, 1.0]])), [[[0, 0, 4], [252, 255, 164]]])


def test_streamed_steps_carry_only_the_views_asked_for_and_the_history_all(tiny_sd):
    """The worker's side: with the default views a streamed step carries no eps or guidance tensors (its measures
    are drawn there, four numbers); the run's history carries every view of every step."""
    events = list(iter_txt2img(Txt2ImgRequest(**REQUEST, scheduler="DDIM"), pipe=tiny_sd))
    steps, done = [e for e in events if isinstance(e, Step)], events[-1]

    default = PortableRun("streamed", DEFAULT_VIEWS)
    sent = [m for e in steps for m in default.events(e)]
    assert all(set(s.views) == {"measures"} for s in sent)
    assert all(isinstance(s.views["measures"].tensor, np.ndarray) and s.views["measures"].tensor.shape == (4,)
               for s in sent)
    (history,) = list(default.events(done))
    assert all(set(s.views) == {"eps", "guidance", "measures", "v"} for s in history.steps)
    assert all(isinstance(s.views["eps"].tensor, np.ndarray) for s in history.steps)
    np.testing.assert_array_equal(view_array(history.steps[2], "guidance"), view_array(done.steps[2], "guidance"))

    asked = PortableRun("streamed", ("eps", "guidance"))
    sent = [m for e in steps for m in asked.events(e)]
    assert all(set(s.views) == {"eps", "guidance", "measures"} for s in sent)
    np.testing.assert_array_equal(view_array(sent[1], "eps"), view_array(steps[1], "eps"))


def test_views_survive_the_trip_to_another_process(tiny_sd):
    import pickle

    steps, done = run(tiny_sd, scheduler="DPM++ 2M Karras")
    (portable,) = list(PortableRun("drawn").events(done))
    back = pickle.loads(pickle.dumps(portable))
    assert isinstance(back, Done)
    for name in ("x0", "xt", "eps", "guidance"):
        np.testing.assert_array_equal(view_array(back.steps[3], name), view_array(done.steps[3], name))
    assert step_measures(back.steps[3]) == pytest.approx(step_measures(done.steps[3]))
