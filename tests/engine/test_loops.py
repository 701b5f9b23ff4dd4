"""What the two denoising loops share: the meaning of their previews, and no host read of their own per step."""

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode

from engine.events import Done, Started, Step
from engine.sampling.schedulers import make_scheduler
from engine.sampling.txt2img import Txt2ImgRequest, iter_txt2img
from engine.sampling.unconditional import UnconditionalRequest, iter_unconditional


@pytest.fixture(scope="module")
def tiny_ddpm():
    from engine.testing.tiny import tiny_ddpm_pipeline

    pipe = tiny_ddpm_pipeline(seed=0)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def events(generator):
    out = list(generator)
    assert isinstance(out[0], Started) and isinstance(out[-1], Done)
    return [e for e in out if isinstance(e, Step)], out[-1]


def test_txt2img_xt_preview_is_the_sample_after_the_step(tiny_sd):
    steps, done = events(iter_txt2img(Txt2ImgRequest(prompt="a cat", num_inference_steps=4, scheduler="DDIM",
                                                     seed=3, width=32, height=32), pipe=tiny_sd))
    last = steps[-1].preview_xt.tensor  # (1, 4, h, w)
    with torch.no_grad():
        image = tiny_sd.vae.decode(last / tiny_sd.vae.config.scaling_factor, return_dict=False)[0]
    decoded = tiny_sd.image_processor.postprocess(image, output_type="np", do_denormalize=[True])[0]
    np.testing.assert_array_equal(np.round(decoded * 255).astype(np.uint8), np.asarray(done.images[0]))
    assert not torch.equal(steps[-2].preview_xt.tensor, last)


@pytest.mark.parametrize("scheduler", ["DDIM", "DDPM"])
def test_unconditional_xt_preview_is_the_sample_after_the_step(tiny_ddpm, scheduler):
    """Before, the Unconditional tab showed the scaled UNet input (x before the step) under the same name."""
    steps, done = events(iter_unconditional(UnconditionalRequest(scheduler=scheduler, num_inference_steps=5, seed=2),
                                            pipe=tiny_ddpm))
    last = steps[-1].preview_xt.tensor  # (1, 3, H, W)
    final = np.round((last / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()[0] * 255).astype(np.uint8)
    np.testing.assert_array_equal(final, np.asarray(done.images[0]))


class HostReads(TorchFunctionMode):
    """Counts reads of tensor values into Python (``float(t)``, ``.item()``, ...): on a GPU each waits
    for the device."""

    NAMES = {"__float__", "__int__", "__bool__", "__index__", "item", "tolist"}

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in self.NAMES:
            self.count += 1
        return func(*args, **(kwargs or {}))


def per_step_reads(iterate) -> list[int]:
    """Host reads between consecutive step boundaries of a loop; ``iterate(mark)`` calls mark() at each."""
    marks = []
    with HostReads() as reads:
        iterate(lambda: marks.append(reads.count))
    return np.diff(marks).tolist()


# DDIM, DPM++ 2M and UniPC keep init_noise_sigma = 1: the loop reads nothing of its own. (Sigma schedulers
# such as Euler also read one value of their CPU ``sigmas`` table to scale the x_t preview: no device sync.)
@pytest.mark.parametrize("name", ["DDIM", "DPM++ 2M", "UniPC"])
def test_txt2img_loop_reads_no_more_from_the_device_than_the_pipeline(tiny_sd, name):
    """The scheduler's own reads are the only ones per step (the old loop added float(t) each step)."""
    request = Txt2ImgRequest(prompt="a cat", num_inference_steps=6, scheduler=name, seed=1, width=32, height=32)

    def engine(mark):
        for event in iter_txt2img(request, pipe=tiny_sd):
            if isinstance(event, Step):
                mark()

    def pipeline(mark):
        tiny_sd.scheduler = make_scheduler(name, tiny_sd.scheduler.config)

        def on_step(pipe, i, t, kwargs):
            mark()
            return kwargs

        tiny_sd(request.prompt, num_inference_steps=6, guidance_scale=request.guidance_scale, width=32, height=32,
                generator=torch.Generator("cpu").manual_seed(1), callback_on_step_end=on_step, output_type="latent")

    assert per_step_reads(engine) == per_step_reads(pipeline)


def test_unconditional_loop_reads_no_more_than_the_scheduler(tiny_ddpm):
    request = UnconditionalRequest(scheduler="DPM++ 2M", num_inference_steps=6, seed=1)

    def engine(mark):
        for event in iter_unconditional(request, pipe=tiny_ddpm):
            if isinstance(event, Step):
                mark()

    def plain(mark):
        scheduler = make_scheduler("DPM++ 2M", tiny_ddpm.scheduler.config)
        scheduler.set_timesteps(6)
        image = torch.randn((1, 3, 16, 16), generator=torch.Generator("cpu").manual_seed(1))
        with torch.no_grad():
            for t in scheduler.timesteps:
                image = scheduler.step(tiny_ddpm.unet(image, t).sample, t, image).prev_sample
                mark()

    assert per_step_reads(engine) == per_step_reads(plain)


def test_host_read_counter_sees_a_read_per_step():
    def loop(mark):
        for t in torch.arange(5):
            float(t)
            mark()
    assert per_step_reads(loop) == [1, 1, 1, 1]
