"""Training: the loop against diffusers' own pieces, checkpoints, resume, crashes, two processes, the job manager."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from engine.training import checkpoints as ckpt
from engine.errors import DataError, InputError, JobRunningError
from engine.training.loop import iter_train
from engine.training.request import (TrainCheckpoint, TrainDone, TrainRequest, TrainSample, TrainStarted, TrainStep,
                                     resume_request)
from tests.helpers import wait_until
from tests.training_setups import train_events

REPO = Path(__file__).resolve().parents[2]
SIZE = 16


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """``shapes``: 16 small RGB images (a coloured square on a gradient); ``few``: 3; ``empty``: none."""
    from PIL import Image

    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    (root / "shapes").mkdir()
    for i in range(16):
        ramp = np.linspace(0, 255, 24, dtype=np.float32)
        image = np.stack([np.tile(ramp, (24, 1)), np.tile(ramp[:, None], (1, 24)), np.full((24, 24), 80.0)], -1)
        x, y = rng.integers(0, 14, 2)
        image[y:y + 10, x:x + 10] = rng.integers(0, 256, 3)
        Image.fromarray(image.astype(np.uint8)).save(root / "shapes" / f"{i:02d}.png")
    (root / "few").mkdir()
    for i in range(3):
        Image.new("RGB", (8, 8), (i * 80, 0, 0)).save(root / "few" / f"{i}.png")
    (root / "empty").mkdir()
    return root


def request(**kw) -> TrainRequest:
    settings = dict(data="shapes", preset="tiny", resolution=SIZE, batch_size=4, learning_rate=1e-3, lr_warmup_steps=2,
                    use_ema=False, log_every=1, save_every=0, sample_every=0, first_sample_step=0, sample_images=4,
                    sample_num_inference_steps=8)
    return TrainRequest(**{**settings, **kw})


def losses_of(events):
    return [x for e in events if isinstance(e, TrainStep) for x in e.losses]


def expected_lrs(lr, warmup, total):
    """diffusers' cosine schedule with warm-up, stepped as the tutorial steps it: the LR each step used."""
    from diffusers.optimization import get_cosine_schedule_with_warmup

    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    schedule = get_cosine_schedule_with_warmup(optimizer, warmup, total)
    out = []
    for _ in range(total):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    return out


# -- the loop ----------------------------------------------------------------------------------
def test_loss_falls_grid_matches_ddim_and_checkpoint_samples(tmp_path, data_dir):
    from diffusers import DDIMPipeline, DDPMPipeline

    req = request(run_name="falls", batch_size=8, max_steps=40, learning_rate=2e-3, lr_warmup_steps=5, log_every=5,
                  save_every=20, sample_every=20, seed=7)
    events = train_events(req, tmp_path, data_dir)

    # 1. The event stream: Started, reports every 5 steps, grids and checkpoints at 20 and 40, Done.
    assert isinstance(events[0], TrainStarted) and isinstance(events[-1], TrainDone)
    assert events[0].total == 40 and events[0].steps_per_epoch == 2 and events[0].data.num_images == 16
    steps = [e for e in events if isinstance(e, TrainStep)]
    assert [e.step for e in steps] == list(range(5, 41, 5))
    assert [e.step for e in events if isinstance(e, TrainSample)] == [20, 40]
    assert [e.step for e in events if isinstance(e, TrainCheckpoint)] == [20, 40]
    done = events[-1]
    assert done.step == 40 and not done.stopped and done.path == str(tmp_path / "falls")

    # 2. The loss falls; the LR is diffusers' cosine schedule with warm-up.
    losses = losses_of(events)
    assert len(losses) == 40
    assert np.mean(losses[-10:]) < 0.6 * np.mean(losses[:5]), losses
    lrs = expected_lrs(2e-3, 5, 40)
    assert [e.lr for e in steps] == pytest.approx([lrs[e.step - 1] for e in steps], rel=1e-9)

    # 3. The last grid's samples are what DDIMPipeline samples from the saved checkpoint with the same seed.
    pipe = DDPMPipeline.from_pretrained(done.path, local_files_only=True)
    ddim = DDIMPipeline(unet=pipe.unet, scheduler=pipe.scheduler)
    ddim.set_progress_bar_config(disable=True)
    images = ddim(batch_size=4, generator=torch.Generator("cpu").manual_seed(7), num_inference_steps=8, eta=0.0,
                  output_type="np").images  # (4, 16, 16, 3) in [0, 1]
    expected = (images * 255).round().astype(int)
    samples = [e for e in events if isinstance(e, TrainSample)]
    last = samples[-1]
    assert last.images.dtype == np.uint8 and last.images.shape == (4, SIZE, SIZE, 3)
    assert np.abs(last.images.astype(int) - expected).max() <= 1
    assert np.abs(tiles_of(last.grid, 2, 2).astype(int) - expected).max() <= 1  # the grid shows them, in order
    assert np.abs(samples[0].images.astype(int) - last.images.astype(int)).max() > 10  # the model changed

    # 4. The checkpoint is a DDPMPipeline that samples.
    pipe.set_progress_bar_config(disable=True)
    sample = pipe(batch_size=1, num_inference_steps=3, generator=torch.Generator().manual_seed(0),
                  output_type="np").images
    assert sample.shape == (1, SIZE, SIZE, 3) and np.isfinite(sample).all()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["falls"]  # no temporary folders left


@pytest.mark.parametrize("use_ema, accumulation", [(True, 1), (False, 2)])
def test_stop_then_resume_continues_as_if_never_stopped(tmp_path, data_dir, use_ema, accumulation):
    # 16 images, batch 4: 4 (or 2, accumulating 2) steps per epoch; step 5 is inside an epoch.
    base = dict(max_steps=12, use_ema=use_ema, gradient_accumulation_steps=accumulation, seed=5)
    straight = train_events(request(run_name="straight", **base), tmp_path, data_dir)
    expected = losses_of(straight)
    assert len(expected) == 12

    # 1. Cancel at step 5: a checkpoint at 5, then Done(stopped), and no step after 5.
    first = train_events(request(run_name="stopped", **base), tmp_path, data_dir, cancel_at=5)
    assert [type(e).__name__ for e in first[-2:]] == ["TrainCheckpoint", "TrainDone"]
    assert first[-1].stopped and first[-1].step == 5 and first[-2].step == 5
    assert max(e.step for e in first if isinstance(e, TrainStep)) == 5
    assert ckpt.read_state(tmp_path / "stopped")["step"] == 5
    assert ckpt.list_runs(tmp_path) == ["stopped", "straight"]  # what a Resume list offers

    # 2. Resume: starts at 5 with the history, and the same losses and LRs as the straight run.
    resumed = train_events(resume_request(tmp_path, "stopped"), tmp_path, data_dir)
    started = resumed[0]
    assert started.start_step == 5 and started.history == pytest.approx(expected[:5], abs=0)
    steps = [e for e in resumed if isinstance(e, TrainStep)]
    assert [e.step for e in steps] == list(range(6, 13))
    assert losses_of(resumed) == pytest.approx(expected[5:], rel=1e-5)
    straight_lrs = {e.step: e.lr for e in straight if isinstance(e, TrainStep)}
    assert [e.lr for e in steps] == pytest.approx([straight_lrs[e.step] for e in steps], rel=1e-9)
    # The charts continue too: every step's LR, and the loss by timestep bucket at each report.
    every_lr = [lr for e in straight if isinstance(e, TrainStep) for lr in e.lrs]
    assert every_lr == expected_lrs(1e-3, 2, 12)
    assert started.lr_history == pytest.approx(every_lr[:5], abs=0)
    assert [lr for e in steps for lr in e.lrs] == pytest.approx(every_lr[5:], rel=1e-9)
    straight_buckets = {e.step: e.bucket_loss for e in straight if isinstance(e, TrainStep)}
    assert [b for _, b in started.bucket_history] == [straight_buckets[k] for k in range(1, 6)]
    for e in steps:  # batch 4 over 10 buckets: most buckets of a one-step report are empty (None)
        assert [b is None for b in e.bucket_loss] == [b is None for b in straight_buckets[e.step]]
        assert [b for b in e.bucket_loss if b is not None] == pytest.approx(
            [b for b in straight_buckets[e.step] if b is not None], rel=1e-5)

    # 3. Same final weights: the pipeline's (EMA ones when EMA is on) and the raw ones.
    names = ["unet/diffusion_pytorch_model.safetensors"] + ["trainer/unet.safetensors"] * use_ema
    for name in names:
        a, b = load_file(tmp_path / "straight" / name), load_file(tmp_path / "stopped" / name)
        assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a), name
    if use_ema:
        raw, ema = (load_file(tmp_path / "straight" / name) for name in reversed(names))
        assert not all(torch.equal(raw[k], ema[k]) for k in raw)  # EMA weights really are another set
    assert ckpt.read_state(tmp_path / "stopped")["history"] == pytest.approx(expected, rel=1e-5)

    # 4. A resume keeps the run's settings and refuses a finished run.
    may_change = ("max_steps, num_epochs, save_every, sample_every, first_sample_step, log_every, num_workers, "
                  "sample_images, sample_num_inference_steps, validation_prompts")
    with pytest.raises(InputError, match="^" + re.escape(
            "resuming 'stopped' keeps its settings, but these differ: learning_rate 0.001 -> 0.5; "
            f"only {may_change} may change") + "$"):
        train_events(request(run_name="stopped", resume=True, **{**base, "learning_rate": 0.5}), tmp_path, data_dir)
    with pytest.raises(InputError, match="^" + re.escape(
            "run 'stopped' already reached step 12 of 12; raise max steps or epochs to train further") + "$"):
        train_events(resume_request(tmp_path, "stopped"), tmp_path, data_dir)
    with pytest.raises(InputError, match="^" + re.escape(
            f"a resumed run keeps its settings; cannot change seed (allowed: {may_change})") + "$"):
        resume_request(tmp_path, "stopped", seed=1)


GAP_COLOUR = (229, 231, 235)


def tiles_of(grid, rows, cols):
    """The samples of a grid with gaps, shrunk back to their size: (rows * cols, h, w, 3)."""
    from engine.training.loop import GRID_GAP

    tile = (grid.shape[0] - (rows - 1) * GRID_GAP) // rows
    assert grid.shape == (rows * tile + (rows - 1) * GRID_GAP, cols * tile + (cols - 1) * GRID_GAP, 3)
    scale = tile // SIZE
    return np.stack([grid[r * (tile + GRID_GAP):r * (tile + GRID_GAP) + tile:scale,
                          c * (tile + GRID_GAP):c * (tile + GRID_GAP) + tile:scale]
                     for r in range(rows) for c in range(cols)])


def test_first_grid_comes_early_then_every_n_steps_and_has_gaps(tmp_path, data_dir):
    from engine.training.loop import GRID_GAP, GRID_GAP_COLOUR

    # 1. A first grid 3 steps in, then every 5; after a resume at step 6 the first comes 3 steps into that session.
    req = request(run_name="early", max_steps=12, sample_every=5, first_sample_step=3, sample_images=5,
                  sample_num_inference_steps=2)
    first = train_events(req, tmp_path, data_dir, cancel_at=6)
    assert [e.step for e in first if isinstance(e, TrainSample)] == [3, 5]
    resumed = train_events(resume_request(tmp_path, "early"), tmp_path, data_dir)
    assert [e.step for e in resumed if isinstance(e, TrainSample)] == [9, 10, 12]
    # first_sample_step 0: none early (the last step has one)
    none_early = train_events(request(run_name="none-early", max_steps=6, sample_every=5), tmp_path, data_dir)
    assert [e.step for e in none_early if isinstance(e, TrainSample)] == [5, 6]

    # 2. Five samples: a 3x2 grid (three columns), each sample enlarged 8x to 128 px, 8 px gaps of a light grey
    #    between them and in the empty cell, none around the edge.
    sample = resumed[-3]
    assert isinstance(sample, TrainSample) and sample.images.shape == (5, SIZE, SIZE, 3)
    grid = sample.grid
    assert GRID_GAP == 8 and GRID_GAP_COLOUR == GAP_COLOUR
    assert grid.shape == (2 * 128 + 8, 3 * 128 + 2 * 8, 3)
    for gap in (grid[128:136], grid[:, 128:136], grid[:, 264:272], grid[136:, 272:]):  # rows, columns, empty cell
        assert (gap == GAP_COLOUR).all()
    tiles = np.stack([grid[r * 136:r * 136 + 128:8, c * 136:c * 136 + 128:8] for r in range(2) for c in range(3)])
    assert np.array_equal(tiles[:5], sample.images)
    assert not (grid[:128, :128] == GAP_COLOUR).all(axis=2).all()  # a sample is drawn, not the gap colour


def test_defaults_are_the_quick_recipe_and_the_tutorial_is_a_named_one():
    from engine.training.cli import build_parser, request_from_args
    from engine.training.recipes import RECIPE_FIELDS, RECIPES, recipe, steps_hint

    # 1. TrainRequest's defaults are the "quick" recipe; the tutorial's schedule is the "tutorial" recipe.
    defaults = TrainRequest()
    assert {f: getattr(defaults, f) for f in RECIPE_FIELDS} == RECIPES["quick"].settings
    assert (defaults.preset, defaults.resolution, defaults.max_steps, defaults.learning_rate) == ("digits", 16, 1200,
                                                                                                  1e-3)
    assert defaults.sample_every <= 100 and 0 < defaults.first_sample_step <= 50  # a grid early, then often
    assert defaults.random_flip is False  # digits are not left-right symmetric
    tutorial = recipe("tutorial").settings
    assert (tutorial["num_epochs"], tutorial["max_steps"], tutorial["learning_rate"], tutorial["lr_warmup_steps"],
            tutorial["sample_every"]) == (50, 0, 1e-4, 500, 500)
    with pytest.raises(InputError, match="^" + re.escape("unknown recipe 'fast'; allowed: quick, tutorial") + "$"):
        recipe("fast")

    # 2. The command line takes a recipe; options given beside it win; a resume keeps its own settings.
    parser = build_parser()
    req = request_from_args(parser.parse_args(["--recipe", "tutorial", "--seed", "3"]))
    assert {f: getattr(req, f) for f in RECIPE_FIELDS} == tutorial and req.seed == 3 and req.random_flip is False
    req = request_from_args(parser.parse_args(["--recipe", "tutorial", "--learning-rate", "0.002"]))
    assert req.learning_rate == 0.002 and req.lr_warmup_steps == 500
    assert request_from_args(parser.parse_args([])) == TrainRequest()
    with pytest.raises(InputError, match="a resumed run keeps its own settings"):
        request_from_args(parser.parse_args(["--recipe", "quick", "--resume", "--run-name", "x"]))
    assert "--recipe {quick,tutorial}" in parser.format_help()

    # 3. The hint says how long the digits take, where measured.
    assert steps_hint(defaults) == (f"digits need about {RECIPES['quick'].digits_steps} steps at the 'quick' recipe "
                                    "for recognisable samples")
    assert steps_hint(TrainRequest(**tutorial)).startswith("no measured figure for the 'tutorial' recipe; at the "
                                                           "'quick' recipe digits need about")
    assert steps_hint(TrainRequest(learning_rate=5e-4)).startswith("no measured figure for these settings")
    assert steps_hint(TrainRequest(data="shapes")) == ""


def unconditional_models(models_dir):
    """What the Unconditional tab lists from ``models_dir`` (built-ins left out)."""
    from engine.models.devices import Placement
    from engine.models.registry import BUILTINS, ModelRegistry

    registry = ModelRegistry(models_dir, Placement(torch.device("cpu"), torch.float32))
    return [n for n in registry.list_models("unconditional") if n not in BUILTINS]


def check_listed(listed, expected):
    assert listed == expected


def test_checkpoint_is_listed_for_sampling_while_training_goes_on(tmp_path, data_dir):
    events = iter_train(request(run_name="handoff", max_steps=6, save_every=2), models_dir=tmp_path,
                        data_dir=data_dir, device="cpu")
    for event in events:
        if isinstance(event, TrainCheckpoint):
            break  # training is paused mid-run, as if the page sampled between two steps
    index = json.loads((tmp_path / "handoff" / "model_index.json").read_text())
    assert index["_class_name"] == "DDPMPipeline" and event.step == 2
    listed = unconditional_models(tmp_path)
    events.close()
    check_listed(listed, ["handoff"])


# -- checkpoints survive crashes ---------------------------------------------------------------
KILL_MID_SAVE = """
import os, signal, sys
import engine.training.checkpoints as ckpt
from engine.training.loop import iter_train
from engine.training.request import TrainRequest

real, calls = ckpt.save_tensors, []
def save_then_die(path, tensors):
    calls.append(path)
    if len(calls) == 3:  # the second checkpoint: pipeline written, trainer state not yet
        os.kill(os.getpid(), signal.SIGKILL)
    real(path, tensors)
ckpt.save_tensors = save_then_die

req = TrainRequest(data="shapes", run_name="killed", preset="tiny", resolution=16, batch_size=4, max_steps=4,
                   use_ema=False, save_every=2, sample_every=0, log_every=1, lr_warmup_steps=1)
for event in iter_train(req, models_dir=sys.argv[1], data_dir=sys.argv[2], device="cpu"):
    print(type(event).__name__, getattr(event, "step", ""), flush=True)
"""


def subprocess_env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
            "PYTHONPATH": str(REPO)}


def test_process_killed_mid_save_leaves_previous_checkpoint(tmp_path, data_dir):
    from diffusers import DDPMPipeline

    proc = subprocess.run([sys.executable, "-c", KILL_MID_SAVE, str(tmp_path), str(data_dir)], cwd=REPO,
                          env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-3000:]
    assert "TrainCheckpoint 2" in proc.stdout and "TrainCheckpoint 4" not in proc.stdout
    leftovers = list(tmp_path.glob(".killed.saving-*"))
    assert len(leftovers) == 1 and (leftovers[0] / "model_index.json").is_file()  # it died half-way

    # The previous checkpoint is intact: it loads and samples, resume state says step 2.
    run_dir = tmp_path / "killed"
    pipe = DDPMPipeline.from_pretrained(run_dir, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    assert pipe(batch_size=1, num_inference_steps=2, output_type="np").images.shape == (1, SIZE, SIZE, 3)
    assert ckpt.read_state(run_dir)["step"] == 2
    listed = unconditional_models(tmp_path)

    # Resume picks up at step 2 and clears the half-written folder.
    events = train_events(resume_request(tmp_path, "killed"), tmp_path, data_dir)
    assert events[0].start_step == 2 and events[-1].step == 4 and not events[-1].stopped
    assert sorted(p.name for p in tmp_path.iterdir()) == ["killed"]
    check_listed(listed, ["killed"])  # the half-written folder was never offered for sampling


def test_swap_interrupted_between_renames_is_recovered(tmp_path, monkeypatch):
    final = tmp_path / "run"

    def write(text):
        return lambda folder: (folder / "model_index.json").write_text(text)

    ckpt.write_atomically(final, write("one"))
    ckpt.write_atomically(final, write("two"))  # renameat2 exchange where the kernel has it
    assert (final / "model_index.json").read_text() == "two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]

    # Where the exchange is unavailable: two renames, and a crash between them.
    monkeypatch.setattr(ckpt, "_exchange", lambda a, b: False)
    real_replace, calls = os.replace, []

    def crash_on_second(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:
            raise OSError("killed between the renames")
        real_replace(src, dst)

    monkeypatch.setattr(ckpt.os, "replace", crash_on_second)
    with pytest.raises(OSError, match="killed"):
        ckpt.write_atomically(final, write("three"))
    monkeypatch.setattr(ckpt.os, "replace", real_replace)
    assert not final.exists()
    ckpt.recover(final)
    assert (final / "model_index.json").read_text() == "two"
    ckpt.write_atomically(final, write("four"))
    assert (final / "model_index.json").read_text() == "four"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


# -- bad input before any step ------------------------------------------------------------------
def first_event(req, models_dir, data_dir):
    events = iter_train(req, models_dir=models_dir, data_dir=data_dir, device="cpu")
    try:
        return next(events)
    finally:
        events.close()


def test_bad_data_is_reported_before_any_step(tmp_path, data_dir):
    with pytest.raises(DataError, match=r"3 usable image\(s\).*lower the batch size to 3 or turn on clamp_batch_size"):
        first_event(request(data="few", run_name="few", batch_size=8, max_steps=2), tmp_path, data_dir)
    started = first_event(request(data="few", run_name="few", batch_size=8, max_steps=2, clamp_batch_size=True),
                          tmp_path, data_dir)
    assert isinstance(started, TrainStarted) and started.batch_size == 3
    with pytest.raises(DataError, match="no readable image"):
        first_event(request(data="empty", run_name="e", max_steps=2), tmp_path, data_dir)
    with pytest.raises(DataError, match="accumulation"):
        first_event(request(data="few", run_name="g", gradient_accumulation_steps=4, max_steps=2,
                            clamp_batch_size=True), tmp_path, data_dir)
    (tmp_path / "taken").mkdir()
    with pytest.raises(InputError, match="already exists"):
        first_event(request(run_name="taken", max_steps=2), tmp_path, data_dir)
    with pytest.raises(InputError, match="fp16 mixed precision needs a CUDA GPU"):
        first_event(request(run_name="half", mixed_precision="fp16", max_steps=2), tmp_path, data_dir)
    with pytest.raises(InputError, match="no complete checkpoint"):
        first_event(request(run_name="never-ran", resume=True, max_steps=2), tmp_path, data_dir)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]  # nothing written


@pytest.mark.parametrize("field, value, message", [
    ("preset", "huge", "unknown preset 'huge'; allowed: tiny, small, digits, ddpm-128"),
    ("resolution", 30, "resolution must be a multiple of 4 for preset 'digits'; got 30"),
    ("resolution", 4, "resolution must be a whole number from 8 to 1024; got 4"),
    ("batch_size", 0, "batch size must be a whole number from 1 to 4096; got 0"),
    ("learning_rate", 0.0, "learning rate must be a number above 0 and at most 1; got 0.0"),
    ("learning_rate", float("nan"), "learning rate must be a number above 0 and at most 1; got nan"),
    ("mixed_precision", "fp8", "unknown mixed precision 'fp8'; allowed: no, fp16, bf16"),
    ("beta_schedule", "cosine", "unknown beta schedule 'cosine'; allowed: linear, scaled_linear, squaredcos_cap_v2"),
    ("ema_max_decay", 1.0, "EMA decay must be a number above 0 and below 1; got 1.0"),
    ("run_name", "../escape", "run name '../escape' is not allowed; use 1-64 letters, digits, '.', '_' or '-', "
                              "starting with a letter or digit"),
    ("sample_num_inference_steps", 2000, "sample steps must be a whole number from 1 to 1000; got 2000"),
    ("use_ema", "yes", "use_ema must be true or false; got 'yes'"),
])
def test_request_validation_says_what_is_allowed(field, value, message):
    """The message names the field, what is allowed and what was given."""
    with pytest.raises(InputError, match=f"^{re.escape(message)}$"):
        TrainRequest(**{field: value})


def test_resolution_multiple_follows_preset():
    message = "resolution must be a multiple of 32 for preset 'ddpm-128'; got 48"
    with pytest.raises(InputError, match=f"^{re.escape(message)}$"):
        TrainRequest(preset="ddpm-128", resolution=48)
    assert TrainRequest(preset="ddpm-128", resolution=64).resolution == 64


# -- several processes -----------------------------------------------------------------------------
def test_two_cpu_processes_with_accelerate_launch(tmp_path, data_dir):
    from diffusers import DDPMPipeline

    accelerate = Path(sys.executable).with_name("accelerate")
    cmd = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "engine.training",
           "--models-dir", str(tmp_path / "models"), "--data-dir", str(data_dir), "--outputs-dir", str(tmp_path),
           "--data", "shapes", "--run-name", "ddp", "--preset", "tiny", "--no-use-ema", "--resolution", str(SIZE),
           "--batch-size", "4",
           "--max-steps", "4", "--log-every", "2", "--sample-every", "0", "--lr-warmup-steps", "1"]
    proc = subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "batch 4 x 2 process(es)" in proc.stderr and "finished at step 4 of 4" in proc.stderr
    run_dir = tmp_path / "models" / "ddp"
    state = json.loads((run_dir / "trainer" / "state.json").read_text())
    assert state["num_processes"] == 2 and state["step"] == 4 and len(state["history"]) == 4
    rng = load_file(run_dir / "trainer" / "rng.safetensors")
    assert sorted(rng) == ["process_0", "process_1"] and not torch.equal(rng["process_0"], rng["process_1"])
    DDPMPipeline.from_pretrained(run_dir, local_files_only=True)


# -- the background job ---------------------------------------------------------------------------
def wait_for(predicate, manager, timeout=120):
    """The job's status once ``predicate`` holds for it."""
    def ready():
        status = manager.status()
        return status if predicate(status) else None

    return wait_until(ready, timeout=timeout, what="the job's status")


def test_training_manager_runs_one_job_in_the_background(tmp_path, data_dir):
    from engine.training.jobs import TrainingManager, smooth

    saved = []
    manager = TrainingManager(tmp_path, data_dir, device="cpu", on_checkpoint=lambda name, path: saved.append(name))
    status = manager.start(request(run_name="job", max_steps=10_000, sample_every=3, sample_num_inference_steps=2))
    assert status.state in ("running", "stopping") and status.total == 10_000
    with pytest.raises(JobRunningError, match="'job'"):
        manager.start(request(run_name="other", max_steps=2))

    # 1. Polling shows progress: losses raw and smoothed, LR, speed, ETA, a grid.
    status = wait_for(lambda s: s.step >= 4 and s.grid is not None, manager)
    assert len(status.losses) == len(status.smoothed) == status.step
    assert status.smoothed == pytest.approx(smooth(status.losses))
    assert status.lr > 0 and status.steps_per_sec > 0 and status.eta > 0 and status.grid.dtype == np.uint8
    assert status.hint == ""  # no measured figure for data other than the digits

    # 2. Stop saves a checkpoint and ends the job.
    manager.stop()
    final = manager.wait(120)
    assert final.state == "stopped" and final.checkpoint == str(tmp_path / "job") and saved == ["job"]
    assert ckpt.read_state(tmp_path / "job")["step"] == final.step == final.checkpoint_step
    assert len(final.losses) == final.step

    # 3. Bad data fails at Start, with the reason; then a resume runs to its end.
    with pytest.raises(DataError, match="no readable image"):
        manager.start(request(data="empty", run_name="bad", max_steps=2))
    assert manager.status() is final  # a refused start leaves the last run's status
    manager.start(resume_request(tmp_path, "job", max_steps=final.step + 2))
    done = manager.wait(120)
    assert done.state == "finished" and done.step == final.step + 2 and len(done.losses) == done.step
    assert done.start_step == final.step
