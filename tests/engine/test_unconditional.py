"""The engine's seed loop against diffusers' own DDPMPipeline."""

import numpy as np
import pytest
import torch

from engine.cancel import CancelToken
from engine.errors import Cancelled, InputError
from engine.events import Done, Started, Step
from engine.sampling.outputs import read_parameters
from engine.sampling.schedulers import make_scheduler
from engine.streaming import stream_latest
from engine.sampling.unconditional import (
    UNCONDITIONAL_SCHEDULERS,
    UnconditionalRequest,
    image_grid,
    iter_unconditional,
)


@pytest.fixture(scope="module")
def tiny_ddpm():
    from engine.testing.tiny import tiny_ddpm_pipeline

    pipe = tiny_ddpm_pipeline(seed=0, sample_size=16)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run(pipe, **kw):
    return list(iter_unconditional(UnconditionalRequest(**kw), pipe=pipe))


def as_array(images) -> np.ndarray:
    return np.stack([np.asarray(im) for im in images]).astype(int)  # (B, H, W, 3)


def pipeline_images(pipe, scheduler, *, num_inference_steps, seed, batch_size=1):
    """DDPMPipeline itself, with ``scheduler`` built from the model's config, seeded as the pipeline expects."""
    original = pipe.scheduler
    pipe.scheduler = make_scheduler(scheduler, original.config)
    try:
        out = pipe(batch_size=batch_size, generator=torch.Generator("cpu").manual_seed(seed),
                   num_inference_steps=num_inference_steps, output_type="np").images
    finally:
        pipe.scheduler = original
    return (out * 255).round().astype(int)  # as DDPMPipeline's numpy_to_pil does


@pytest.mark.parametrize("scheduler, steps", [("DDPM", 20), ("DDIM", 10), ("DPM++ 2M", 8)])
def test_matches_ddpm_pipeline(tiny_ddpm, scheduler, steps):
    kw = dict(num_inference_steps=steps, seed=1234, batch_size=2)
    ours = as_array(run(tiny_ddpm, scheduler=scheduler, **kw)[-1].images)
    theirs = pipeline_images(tiny_ddpm, scheduler, **kw)
    assert ours.shape == theirs.shape == (2, 16, 16, 3)
    assert np.abs(ours - theirs).max() <= 2
    # The comparison is sensitive: another seed gives a visibly different batch.
    other = pipeline_images(tiny_ddpm, scheduler, **{**kw, "seed": 99})
    assert np.abs(other - theirs).max() > 10


@pytest.mark.slow
def test_full_ddpm_run_streams_throttled_and_matches_pipeline():
    """1000 DDPM steps as trained (the default), consumed as the page consumes them (8 px: ~2 ms a step)."""
    from engine.testing.tiny import tiny_ddpm_pipeline

    pipe = tiny_ddpm_pipeline(seed=0, sample_size=8)
    pipe.set_progress_bar_config(disable=True)
    request = UnconditionalRequest(scheduler="DDPM", seed=7)
    events = list(stream_latest(lambda cancel: iter_unconditional(request, pipe=pipe, cancel=cancel),
                                min_interval=0.1))
    started, done = events[0], events[-1]
    steps = [e for e in events if isinstance(e, Step)]
    assert isinstance(started, Started) and isinstance(done, Done)
    assert started.total == 1000 and started.timesteps == tuple(range(999, -1, -1))
    # At most ~10 previews a second reach the page, and the last step is always among them.
    assert len(steps) <= done.info["elapsed"] / 0.1 + 3
    assert steps[-1].step == 1000 and steps[-1].preview_x0.array().shape == (256, 256, 3)
    assert len(done.steps) == 1000 and all(s.preview_xt is None for s in done.steps)
    theirs = pipeline_images(pipe, "DDPM", num_inference_steps=1000, seed=7)
    assert np.abs(as_array(done.images) - theirs).max() <= 2


def test_timesteps_are_the_seeds(tiny_ddpm):
    """set_timesteps(50) on T=1000 visits 980, 960, ..., 0, as the seed notes print."""
    started = run(tiny_ddpm, scheduler="DDIM", seed=0)[0]
    assert started.timesteps == tuple(range(980, -1, -20))


def test_default_steps_follow_the_scheduler():
    from engine.testing.tiny import tiny_ddpm_pipeline

    pipe = tiny_ddpm_pipeline(seed=0, sample_size=8, num_train_timesteps=100)
    assert UnconditionalRequest(scheduler="DDPM").resolved(pipe).num_inference_steps == 100
    assert UnconditionalRequest(scheduler="UniPC").resolved(pipe).num_inference_steps == 50
    with pytest.raises(InputError, match="trained with 100 timesteps"):
        UnconditionalRequest(scheduler="DDIM", num_inference_steps=101).resolved(pipe)


def test_event_stream_contract(tiny_ddpm):
    events = run(tiny_ddpm, scheduler="UniPC", num_inference_steps=5, seed=3, batch_size=3)
    assert isinstance(events[0], Started) and isinstance(events[-1], Done)
    steps = [e for e in events if isinstance(e, Step)]
    assert [s.step for s in steps] == [1, 2, 3, 4, 5]
    assert [int(s.timestep) for s in steps] == list(events[0].timesteps)
    # UniPC returns no pred_original_sample: x0 is predicted lazily, from eps and x_t.
    first, last = steps[0].preview_x0.array(), steps[-1].preview_x0.array()
    assert first.dtype == np.uint8 and first.shape == (256, 256, 3)  # a 2x2 grid of 16 px, upscaled
    assert not np.array_equal(first, last)
    assert not np.array_equal(steps[0].preview_xt.array(), steps[-1].preview_xt.array())
    done = events[-1]
    assert done.info["seed"] == 3 and len(done.images) == 3
    assert image_grid(done.images).size == (32, 32)


def test_random_seed_is_resolved_and_reported(tiny_ddpm):
    done = run(tiny_ddpm, scheduler="DDIM", num_inference_steps=1)[-1]
    assert 0 <= done.info["seed"] < 2**32


def test_cancel_stops_at_step(tiny_ddpm):
    cancel = CancelToken()
    seen = []
    with pytest.raises(Cancelled):
        for event in iter_unconditional(UnconditionalRequest(num_inference_steps=10), pipe=tiny_ddpm, cancel=cancel):
            if isinstance(event, Step):
                seen.append(event.step)
                if event.step == 3:
                    cancel.cancel()
    assert seen == [1, 2, 3]


def test_png_written_with_parameters(tiny_ddpm, tmp_path):
    request = UnconditionalRequest(scheduler="DDIM", num_inference_steps=4, seed=42, batch_size=2, model="tiny")
    done = list(iter_unconditional(request, pipe=tiny_ddpm, outputs_dir=tmp_path))[-1]
    assert len(done.paths) == 2
    text = read_parameters(done.paths[0])
    for part in ("Steps: 4", "Sampler: DDIM", "Seed: 42", "Size: 16x16", "Model: tiny", "Batch size: 2"):
        assert part in text


@pytest.mark.parametrize("scheduler", ["Euler", "PNDM"])
def test_diffusers_code_reproduces_images(tiny_ddpm, tmp_path, scheduler):
    """Where DDPMPipeline cannot be the reference (Euler needs input scaling, PNDM takes no generator),
    the seed's loop in plain diffusers is."""
    from engine.models.devices import resolve_device
    from engine.models.registry import ModelRegistry

    tiny_ddpm.save_pretrained(tmp_path / "m")
    pipe = ModelRegistry(tmp_path, resolve_device("cpu")).load("m", "unconditional")
    done = run(pipe, scheduler=scheduler, num_inference_steps=6, seed=11, batch_size=2)[-1]
    namespace = {}
    exec(compile(done.code.replace("print(scheduler.timesteps)\n", ""), "snippet", "exec"), namespace)
    assert np.abs(namespace["image"].astype(int) - as_array(done.images)).max() <= 2


@pytest.mark.parametrize(
    "kw, words",
    [
        (dict(num_inference_steps=0), "steps"),
        (dict(num_inference_steps=10_001), "steps"),
        (dict(num_inference_steps=2.5), "steps"),
        (dict(batch_size=0), "batch size"),
        (dict(batch_size=1000), "batch size"),
        (dict(scheduler="Nope"), "unknown scheduler"),
        (dict(seed=-5), "seed"),
        (dict(seed="x"), "seed"),
    ],
)
def test_bad_requests_are_refused(kw, words):
    with pytest.raises(InputError, match=words) as info:
        UnconditionalRequest(**kw)
    assert "got" in str(info.value) or "allowed" in str(info.value)


def test_every_tab_scheduler_runs(tiny_ddpm):
    for name in UNCONDITIONAL_SCHEDULERS:
        done = run(tiny_ddpm, scheduler=name, num_inference_steps=4, seed=0)[-1]
        assert np.asarray(done.images[0]).std() > 0, name


def test_too_few_steps_for_pndm_is_an_input_error(tiny_ddpm):
    with pytest.raises(InputError, match="PNDM cannot run 3 steps"):
        run(tiny_ddpm, scheduler="PNDM", num_inference_steps=3)
