"""The engine's seed loop against diffusers' own DDPMPipeline."""

import inspect
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.records.runs import iter_saved
from engine.cancel import CancelToken
from engine.errors import Cancelled, InputError
from engine.events import Done, Started, Step
from engine.records.outputs import read_parameters
from engine.sampling.schedulers import make_scheduler
from engine.streaming import stream_latest
from engine.sampling.unconditional import (
    GRID_GAP,
    PROBE_STEPS,
    SCRUB_FRAMES,
    UNCONDITIONAL_SCHEDULERS,
    UnconditionalRequest,
    image_grid,
    iter_probe,
    iter_unconditional,
    scrub_every,
    seconds_per_step,
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


def loop_images(pipe, scheduler, *, num_inference_steps, seed, batch_size=1):
    """The sampling loop of diffusers' docs, written out here: noise times ``init_noise_sigma``, then for each t
    ``scale_model_input``, the UNet and ``scheduler.step`` (given the generator where it takes one)."""
    scheduler = make_scheduler(scheduler, pipe.scheduler.config)
    unet, generator = pipe.unet, torch.Generator("cpu").manual_seed(seed)
    size = unet.config.sample_size
    image = torch.randn((batch_size, unet.config.in_channels, size, size), generator=generator)
    image = image * scheduler.init_noise_sigma  # (B, C, H, W)
    scheduler.set_timesteps(num_inference_steps)
    step_kwargs = {"generator": generator} if "generator" in inspect.signature(scheduler.step).parameters else {}
    with torch.no_grad():
        for t in scheduler.timesteps:
            model_output = unet(scheduler.scale_model_input(image, t), t).sample
            image = scheduler.step(model_output, t, image, **step_kwargs).prev_sample
    image = (image / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    return (image * 255).round().astype(int)


# DDPMPipeline is the reference where it runs a scheduler as diffusers means it to run. It is not for:
# PNDM and UniPC, whose step() takes no generator, which DDPMPipeline passes (a TypeError), and Euler, which
# needs the initial noise scaled by init_noise_sigma and scale_model_input before the UNet, both of which
# DDPMPipeline skips. For those three the reference is the loop above, itself checked against the pipeline.
PIPELINE_REFERENCE = ("DDPM", "DDIM", "DPM++ 2M")
STEPS = {"DDPM": 20, "DDIM": 10, "DPM++ 2M": 8, "UniPC": 8, "PNDM": 8, "Euler": 10}


def reference_images(pipe, scheduler, **kw):
    if scheduler in PIPELINE_REFERENCE:
        return pipeline_images(pipe, scheduler, **kw)
    return loop_images(pipe, scheduler, **kw)


@pytest.mark.parametrize("scheduler", list(UNCONDITIONAL_SCHEDULERS))
def test_matches_the_reference(tiny_ddpm, scheduler):
    """Every scheduler the Unconditional tab offers, against DDPMPipeline or the docs' loop (see above)."""
    kw = dict(num_inference_steps=STEPS[scheduler], seed=1234, batch_size=2)
    ours = as_array(run(tiny_ddpm, scheduler=scheduler, **kw)[-1].images)
    theirs = reference_images(tiny_ddpm, scheduler, **kw)
    assert ours.shape == theirs.shape == (2, 16, 16, 3)
    assert np.abs(ours - theirs).max() <= 2
    # The comparison is sensitive: another seed gives a visibly different batch.
    other = reference_images(tiny_ddpm, scheduler, **{**kw, "seed": 99})
    assert np.abs(other - theirs).max() > 10


def test_every_tab_scheduler_has_a_reference():
    assert set(STEPS) == set(UNCONDITIONAL_SCHEDULERS)
    assert set(PIPELINE_REFERENCE) <= set(UNCONDITIONAL_SCHEDULERS)


@pytest.mark.parametrize("scheduler", PIPELINE_REFERENCE)
def test_reference_loop_matches_ddpm_pipeline(tiny_ddpm, scheduler):
    """The docs' loop is a fair reference: where DDPMPipeline runs a scheduler properly, the two agree."""
    kw = dict(num_inference_steps=STEPS[scheduler], seed=1234, batch_size=2)
    assert np.abs(loop_images(tiny_ddpm, scheduler, **kw) - pipeline_images(tiny_ddpm, scheduler, **kw)).max() <= 2


@pytest.mark.parametrize("scheduler", [s for s in UNCONDITIONAL_SCHEDULERS if s not in PIPELINE_REFERENCE])
def test_why_ddpm_pipeline_is_not_the_reference(tiny_ddpm, scheduler):
    config = tiny_ddpm.scheduler.config
    if scheduler == "Euler":  # sigma-space: the noise and the UNet input must be scaled, DDPMPipeline scales neither
        assert make_scheduler(scheduler, config).init_noise_sigma > 1
    else:  # step() takes no generator, DDPMPipeline passes one
        assert "generator" not in inspect.signature(make_scheduler(scheduler, config).step).parameters
        with pytest.raises(TypeError, match="generator"):
            pipeline_images(tiny_ddpm, scheduler, num_inference_steps=STEPS[scheduler], seed=0)


@pytest.mark.slow
def test_full_ddpm_run_streams_throttled_and_matches_pipeline():
    """1000 DDPM steps as trained, consumed as the page consumes them (8 px: ~2 ms a step)."""
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
    # Done keeps every step's timing, and the previews of every 10th for the scrubber (the last among them).
    kept = [s.step for s in done.steps if s.preview_xt is not None]
    assert len(done.steps) == 1000 and kept == list(range(10, 1001, 10))
    theirs = pipeline_images(pipe, "DDPM", num_inference_steps=1000, seed=7)
    assert np.abs(as_array(done.images) - theirs).max() <= 2


def test_timesteps_are_the_seeds(tiny_ddpm):
    """set_timesteps(50) on T=1000 visits 980, 960, ..., 0, as the seed notes print."""
    started = run(tiny_ddpm, scheduler="DDIM", seed=0)[0]
    assert started.timesteps == tuple(range(980, -1, -20))


def test_default_steps_follow_the_scheduler():
    from engine.testing.tiny import tiny_ddpm_pipeline

    pipe = tiny_ddpm_pipeline(seed=0, sample_size=8, num_train_timesteps=100)
    # The default is fast: DDIM at 50 steps, not DDPM at the model's T (1000 steps for the built-in).
    assert UnconditionalRequest().resolved(pipe).num_inference_steps == 50
    assert UnconditionalRequest().scheduler == "DDIM" == UNCONDITIONAL_SCHEDULERS[0]
    assert UnconditionalRequest(scheduler="DDPM").resolved(pipe).num_inference_steps == 100
    assert UnconditionalRequest(scheduler="UniPC").resolved(pipe).num_inference_steps == 50
    message = "steps for this model (trained with 100 timesteps) must be a whole number from 1 to 100; got 101"
    with pytest.raises(InputError, match=f"^{re.escape(message)}$"):
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
    assert image_grid(done.images).size == (32 + GRID_GAP, 32 + GRID_GAP)  # 2x2 tiles of 16 px, gaps between


def test_random_seed_is_resolved_and_reported(tiny_ddpm):
    kw = dict(scheduler="DDIM", num_inference_steps=2, batch_size=2)
    first, second = (run(tiny_ddpm, **kw)[-1] for _ in range(2))  # seed -1, the default
    seeds = first.info["seed"], second.info["seed"]
    assert all(isinstance(s, int) and 0 <= s < 2**32 for s in seeds)
    # -1 draws anew each run: another seed, and another batch (a fixed seed would give the same one)
    assert seeds[0] != seeds[1]
    assert np.abs(as_array(first.images) - as_array(second.images)).max() > 10
    # the reported seed is the one used: given explicitly, it gives the same batch
    again = run(tiny_ddpm, seed=seeds[0], **kw)[-1]
    assert np.array_equal(as_array(again.images), as_array(first.images))


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
    done = list(iter_saved("unconditional", iter_unconditional(request, pipe=tiny_ddpm), pipe=tiny_ddpm,
                           outputs_dir=tmp_path))[-1]
    assert len(done.paths) == 2
    for path in (*done.paths, done.grid):
        text = read_parameters(path)
        for part in ("Steps: 4", "Sampler: DDIM", "Seed: 42", "Size: 16x16", "Model: tiny", "Batch size: 2"):
            assert part in text


def test_the_batch_grid_is_saved_beside_its_tiles(tiny_ddpm, tmp_path):
    from PIL import Image

    request = UnconditionalRequest(num_inference_steps=3, seed=5, batch_size=3)
    done = list(iter_saved("unconditional", iter_unconditional(request, pipe=tiny_ddpm), pipe=tiny_ddpm,
                           outputs_dir=tmp_path))[-1]
    grid = done.grid
    assert grid.endswith("-grid.png") and all(Path(p).parent == Path(grid).parent for p in done.paths)
    with Image.open(grid) as im:
        saved = np.asarray(im.convert("RGB")).astype(int)
    assert np.array_equal(saved, np.asarray(image_grid(done.images).convert("RGB")).astype(int))
    for i, path in enumerate(done.paths):  # each tile of the saved grid is its saved image
        r, c = divmod(i, 2)
        y, x = r * (16 + GRID_GAP), c * (16 + GRID_GAP)
        with Image.open(path) as tile:
            assert np.array_equal(saved[y:y + 16, x:x + 16], np.asarray(tile.convert("RGB")).astype(int))
    one = list(iter_saved("unconditional", iter_unconditional(replace(request, batch_size=1), pipe=tiny_ddpm),
                          pipe=tiny_ddpm, outputs_dir=tmp_path))[-1]
    assert one.grid == "" and len(one.paths) == 1  # one image is its own grid: not saved twice


def test_grid_has_gaps_of_its_colour_between_tiles_only():
    from PIL import Image

    tiles = [Image.new("L", (4, 3), v) for v in (0, 255, 40, 200, 90)]  # 5 tiles: 3 columns, 2 rows
    grid = np.asarray(image_grid(tiles, gap=2, color="#808080"))
    assert grid.shape == (3 * 2 + 2, 4 * 3 + 2 * 2)
    for i, v in enumerate((0, 255, 40, 200, 90)):
        r, c = divmod(i, 3)
        assert (grid[r * 5:r * 5 + 3, c * 6:c * 6 + 4] == v).all()
    assert (grid[3:5, :] == 128).all() and (grid[:, 4:6] == 128).all() and (grid[:, 10:12] == 128).all()
    assert (grid[5:, 12:] == 128).all()  # the empty sixth place
    assert image_grid(tiles[:1]) is tiles[0]
    rgb = np.asarray(image_grid([t.convert("RGB") for t in tiles[:2]], gap=1, color="#808080"))
    assert rgb.shape == (3, 9, 3) and (rgb[:, 4] == 128).all()


def test_done_keeps_a_bounded_number_of_steps_previews_for_the_scrubber(tiny_ddpm):
    events = run(tiny_ddpm, scheduler="DDIM", num_inference_steps=250, seed=3)
    done, streamed = events[-1], {e.step: e for e in events if isinstance(e, Step)}
    kept = [s for s in done.steps if s.preview_xt is not None]
    # every 3rd step counted back from the last: 84 frames, at most SCRUB_FRAMES, the last always
    assert [s.step for s in kept] == list(range(1, 251, 3)) and len(kept) <= SCRUB_FRAMES
    assert len(done.steps) == 250 and all(s.preview_x0 is None for s in done.steps if s not in kept)
    assert all(s.elapsed == streamed[s.step].elapsed for s in done.steps)  # every step's timing, as streamed
    # a kept step's previews are that step's: the last x_t is the final image, upscaled
    final = np.asarray(done.images[0]).astype(int)
    last_xt = kept[-1].preview_xt.array().astype(int)
    assert np.array_equal(last_xt[::16, ::16], final)
    assert not np.array_equal(kept[0].preview_x0.array(), kept[-1].preview_x0.array())
    # short runs keep every step
    assert all(s.preview_xt is not None for s in run(tiny_ddpm, num_inference_steps=7, seed=1)[-1].steps)


def test_scrub_frames_are_bounded_by_count_and_memory(tiny_ddpm, monkeypatch):
    from engine.sampling import unconditional

    assert scrub_every(1000, 4096) == 10 and scrub_every(50, 4096) == 1 and scrub_every(101, 4096) == 2
    assert scrub_every(1000, unconditional.SCRUB_BYTES // 5) == 200  # 5 frames of a big batch
    assert scrub_every(1000, unconditional.SCRUB_BYTES * 3) == 500  # never fewer than the two ends
    frame = 3 * 2 * 3 * 16 * 16 * 4  # x_t, x0 and the UNet output of a 2-image 16 px float32 batch
    monkeypatch.setattr(unconditional, "SCRUB_BYTES", 4 * frame)
    done = run(tiny_ddpm, num_inference_steps=20, seed=1, batch_size=2)[-1]
    assert [s.step for s in done.steps if s.preview_xt is not None] == [5, 10, 15, 20]


def test_a_probe_times_a_few_steps_and_saves_nothing(tiny_ddpm, tmp_path):
    request = UnconditionalRequest(scheduler="DDPM", batch_size=2)
    events = list(iter_probe(request, pipe=tiny_ddpm))
    done = events[-1]
    assert isinstance(done, Done) and len(done.steps) == PROBE_STEPS and len(done.images) == 2
    assert done.paths == () and not any(tmp_path.iterdir())
    per_step = seconds_per_step(done.steps)
    assert per_step == (done.steps[-1].elapsed - done.steps[0].elapsed) / (PROBE_STEPS - 1) and per_step > 0


@pytest.mark.parametrize("scheduler", list(UNCONDITIONAL_SCHEDULERS))
def test_diffusers_code_reproduces_images(tiny_ddpm, tmp_path, scheduler):
    """The page's plain-diffusers snippet (the seed's loop) gives the same images, for every scheduler of the tab."""
    from engine.models.devices import resolve_device
    from engine.models.registry import ModelRegistry

    tiny_ddpm.save_pretrained(tmp_path / "m")
    pipe = ModelRegistry(tmp_path, resolve_device("cpu")).load("m", "unconditional")
    done = run(pipe, scheduler=scheduler, num_inference_steps=6, seed=11, batch_size=2)[-1]
    namespace = {}
    exec(compile(done.code.replace("print(scheduler.timesteps)\n", ""), "snippet", "exec"), namespace)
    assert np.abs(namespace["image"].astype(int) - as_array(done.images)).max() <= 2


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(num_inference_steps=0), "steps must be a whole number from 1 to 10000; got 0"),
        (dict(num_inference_steps=10_001), "steps must be a whole number from 1 to 10000; got 10001"),
        (dict(num_inference_steps=2.5), "steps must be a whole number from 1 to 10000; got 2.5"),
        (dict(batch_size=0), "batch size must be a whole number from 1 to 16; got 0"),
        (dict(batch_size=1000), "batch size must be a whole number from 1 to 16; got 1000"),
        (dict(scheduler="Nope"), f"unknown scheduler 'Nope'; allowed: {', '.join(UNCONDITIONAL_SCHEDULERS)}"),
        (dict(scheduler="Heun"), f"unknown scheduler 'Heun'; allowed: {', '.join(UNCONDITIONAL_SCHEDULERS)}"),
        (dict(seed=-5), f"seed must be a whole number from -1 to {2**63 - 1}; got -5"),
        (dict(seed="x"), f"seed must be a whole number from -1 to {2**63 - 1}; got 'x'"),
    ],
)
def test_bad_requests_are_refused(kw, message):
    """The message names the field, what is allowed and what was given."""
    with pytest.raises(InputError, match=f"^{re.escape(message)}$"):
        UnconditionalRequest(**kw)


def test_every_tab_scheduler_runs(tiny_ddpm):
    for name in UNCONDITIONAL_SCHEDULERS:
        done = run(tiny_ddpm, scheduler=name, num_inference_steps=4, seed=0)[-1]
        assert np.asarray(done.images[0]).std() > 0, name


def test_too_few_steps_for_pndm_is_an_input_error(tiny_ddpm):
    with pytest.raises(InputError, match="PNDM cannot run 3 steps"):
        run(tiny_ddpm, scheduler="PNDM", num_inference_steps=3)
