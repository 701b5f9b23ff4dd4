"""The Training tab's first minutes: the default recipe on this machine, each sample grid scored by a classifier.

It trains ``TrainRequest()`` (what the page starts with: the "quick" recipe on the built-in digits) for up to
``--minutes`` of wall-clock time from the start, set-up included, as the page's job does (the same loop, torch's
own thread count), and prints a line per sample grid: the time since the start, the step, the loss, and how many
of the grid's 16 samples the digit classifier (``engine/builtin/digits.py``) calls

- confident: classified with a margin (top probability >= 0.5 and >= twice the runner-up's). An untrained
  model's noise is "confident" too (nearly all of it read as a 1), so this alone says little;
- recognisable: confident and, averaged down to 8x8, as close to a real digit as 99% of held-out real digits are.

At the end (the run done, or stopped at the time limit with a checkpoint, as Stop does) it samples ``--samples``
images from the saved pipeline with DDIM 50 steps, the grid's sampler, for a steadier figure.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/train_first_minutes.py              # about 10 minutes
    HF_HUB_OFFLINE=1 .venv/bin/python bench/train_first_minutes.py --recipe tutorial --minutes 10
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from engine.builtin.digits import classifier  # noqa: E402
from engine.cancel import CancelToken  # noqa: E402
from engine.training.loop import iter_train  # noqa: E402
from engine.training.recipes import DEFAULT_RECIPE, RECIPES, recipe, steps_hint  # noqa: E402
from engine.training.request import TrainDone, TrainRequest, TrainSample, TrainStarted, TrainStep  # noqa: E402

HALF = 0.5  # "recognisable digits": at least half of a grid's samples recognisable


def score_line(images: np.ndarray) -> tuple[float, str]:
    """(recognisable share, a short report) for (N, H, W, 3) uint8 samples."""
    scores = classifier().score(images)
    n = len(images)
    classes = np.unique(scores.labels[scores.recognisable]).size
    text = (f"recognisable {int(scores.recognisable.sum()):2d}/{n} ({scores.recognisable.mean():.2f}), "
            f"confident {int(scores.confident.sum()):2d}/{n}, digits among the recognisable {classes}/10")
    return float(scores.recognisable.mean()), text


def final_samples(run_dir: str, n: int, seed: int) -> np.ndarray:
    """``n`` samples from the saved pipeline (EMA weights where the run uses EMA), DDIM 50 steps."""
    from diffusers import DDIMScheduler, DDPMPipeline

    pipe = DDPMPipeline.from_pretrained(run_dir, local_files_only=True)
    ddim = DDPMPipeline(unet=pipe.unet, scheduler=DDIMScheduler.from_config(pipe.scheduler.config))
    ddim.set_progress_bar_config(disable=True)
    out = ddim(batch_size=n, num_inference_steps=50, generator=torch.Generator("cpu").manual_seed(seed),
               output_type="np").images  # (n, H, W, C) in [0, 1]
    images = (out * 255).round().astype(np.uint8)
    return np.repeat(images, 3, axis=3) if images.shape[3] == 1 else images


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default=DEFAULT_RECIPE, choices=tuple(RECIPES),
                        help=f"the recipe to train (default {DEFAULT_RECIPE!r}, TrainRequest's defaults)")
    parser.add_argument("--minutes", type=float, default=10.0, help="wall-clock limit from the start (default 10)")
    parser.add_argument("--samples", type=int, default=200, help="samples scored from the last checkpoint")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default, as the app)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    request = replace(TrainRequest(**recipe(args.recipe).settings), run_name="first-minutes")
    classifier()  # fitted before the clock starts (about a second)
    print(f"recipe {args.recipe!r}: preset {request.preset}, digits at {request.resolution} px, batch "
          f"{request.batch_size}, {request.max_steps or f'{request.num_epochs} epochs'} steps, lr "
          f"{request.learning_rate:g} (warm-up {request.lr_warmup_steps}), EMA {request.use_ema}, grids at step "
          f"{request.first_sample_step} then every {request.sample_every}; torch threads {torch.get_num_threads()}, "
          f"limit {args.minutes:g} min; load average {os.getloadavg()[0]:.1f} (of {os.cpu_count()} cores)", flush=True)

    cancel = CancelToken()
    timer = threading.Timer(args.minutes * 60, cancel.cancel)  # Stop at the limit: a checkpoint, then Done
    first_half = None
    loss = float("nan")
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        timer.start()
        try:
            for event in iter_train(request, models_dir=tmp, data_dir=tmp, cancel=cancel, device="cpu"):
                elapsed = time.perf_counter() - start
                if isinstance(event, TrainStarted):
                    print(f"{elapsed:6.1f} s  set up: {event.total} steps; {steps_hint(request)}", flush=True)
                elif isinstance(event, TrainStep):
                    loss = event.loss
                elif isinstance(event, TrainSample):
                    share, text = score_line(event.images)
                    if first_half is None and share >= HALF:
                        first_half = (event.step, elapsed)
                    print(f"{elapsed:6.1f} s  step {event.step:5d}  loss {loss:.4f}  grid: {text}", flush=True)
                elif isinstance(event, TrainDone):
                    print(f"{elapsed:6.1f} s  {'stopped' if event.stopped else 'finished'} at step {event.step} of "
                          f"{event.total}", flush=True)
                    done = event
        finally:
            timer.cancel()
        if first_half is not None:
            print(f"half of a grid recognisable first at step {first_half[0]}, {first_half[1]:.0f} s after the start")
        else:
            print("no grid had half of its samples recognisable")
        if done.path and args.samples:
            share, text = score_line(final_samples(done.path, args.samples, seed=1))
            print(f"last checkpoint (step {done.step}), {args.samples} DDIM-50 samples: {text}")
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
