"""Does a v-prediction model trained with the page's ``quick`` recipe sample digits as readable as an epsilon one?

Trains the ``quick`` recipe (``engine/training/recipes.py``: what the Training tab starts with) twice on the built-in
digits, with ``prediction_type`` epsilon and then v_prediction, the same seed and the same steps (the recipe's, or
``--max-steps``); the sample grids are left out of both runs (they change what is shown, not what is learnt). Then
it samples ``--samples`` digits from each checkpoint through the engine's Unconditional loop (``/ddpm``'s: DDIM 50
steps, the grids' sampler, seeds 0, 1, ... in batches of 16) and prints, for each, how many of them the project's
digit classifier (``engine/builtin/digits.py``) reads as recognisable digits, and the ratio v / epsilon.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/vpred.py               # two quick runs: about 20 minutes on 2 cores
    HF_HUB_OFFLINE=1 .venv/bin/python bench/vpred.py --tiny        # a few steps of each: that it runs (the test's)

On a loaded machine the two runs can go in two processes (``--only epsilon`` and ``--only v_prediction`` with one
``--models-dir``), then ``--reuse`` with that folder samples both checkpoints again and prints the ratio.
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

from engine.builtin.digits import classifier  # noqa: E402
from engine.cancel import CancelToken  # noqa: E402
from engine.events import Done  # noqa: E402
from engine.sampling.unconditional import MAX_BATCH, UnconditionalRequest, iter_unconditional  # noqa: E402
from engine.training.loop import iter_train  # noqa: E402
from engine.training.recipes import DEFAULT_RECIPE, recipe  # noqa: E402
from engine.training.request import TrainDone, TrainRequest, TrainStep  # noqa: E402

PREDICTION_TYPES = ("epsilon", "v_prediction")
# --tiny: a few steps of each run at the recipe's size, a handful of short samples; seconds, not minutes.
TINY = dict(max_steps=3, lr_warmup_steps=1, batch_size=4, use_ema=False, log_every=1)
TINY_SAMPLES, TINY_SAMPLE_STEPS = 4, 3


def train(prediction_type: str, models_dir: str, *, seed: int, tiny: bool, max_steps: int | None,
          reuse: bool = False, minutes: float = 0.0) -> tuple[str, dict]:
    """Train the quick recipe predicting ``prediction_type``; (the checkpoint's folder, what the run took).
    ``minutes``: stopped then as the page's Stop stops it (a checkpoint of the steps so far); 0: no limit."""
    folder = Path(models_dir) / f"vpred-{prediction_type}"
    if reuse and (folder / "model_index.json").exists():
        return str(folder), {"steps": "reused", "loss": float("nan"), "seconds": 0.0}
    settings = {**recipe(DEFAULT_RECIPE).settings, "sample_every": 0, "save_every": 0}
    request = TrainRequest(**settings, run_name=f"vpred-{prediction_type}", prediction_type=prediction_type,
                           seed=seed, first_sample_step=0)
    if tiny:
        request = replace(request, **TINY)
    if max_steps:
        request = replace(request, max_steps=max_steps)
    start = time.perf_counter()
    loss, done = float("nan"), None
    cancel = CancelToken()
    timer = threading.Timer(minutes * 60, cancel.cancel) if minutes else None
    if timer is not None:
        timer.start()
    for event in iter_train(request, models_dir=models_dir, data_dir=models_dir, cancel=cancel, device="cpu"):
        if isinstance(event, TrainStep):
            loss = event.loss
            if event.step % 100 == 0:
                print(f"  {prediction_type} step {event.step} loss {loss:.4f} "
                      f"{time.perf_counter() - start:.0f} s", flush=True)
        elif isinstance(event, TrainDone):
            done = event
    if timer is not None:
        timer.cancel()
    return done.path, {"steps": done.step, "loss": loss, "seconds": time.perf_counter() - start}


def sample(path: str, n: int, *, steps: int | None) -> np.ndarray:
    """``n`` digits from the checkpoint at ``path`` through the Unconditional loop: (n, H, W, 3) uint8."""
    from diffusers import DDPMPipeline

    pipe = DDPMPipeline.from_pretrained(path, local_files_only=True)
    images = []
    for seed, start in enumerate(range(0, n, MAX_BATCH)):
        request = UnconditionalRequest(scheduler="DDIM", num_inference_steps=steps, seed=seed,
                                       batch_size=min(MAX_BATCH, n - start))
        done = [e for e in iter_unconditional(request, pipe=pipe) if isinstance(e, Done)][-1]
        images.extend(np.asarray(im.convert("RGB")) for im in done.images)
    return np.stack(images)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=200, help="digits sampled from each model (default 200)")
    parser.add_argument("--seed", type=int, default=0, help="the training seed of both runs (default 0)")
    parser.add_argument("--max-steps", type=int, default=0, help="training steps of each run (0: the recipe's)")
    parser.add_argument("--minutes", type=float, default=0.0,
                        help="stop each run after this many minutes with a checkpoint, as Stop does (0: no limit)")
    parser.add_argument("--models-dir", default="", help="where the two checkpoints go (default: a temporary folder)")
    parser.add_argument("--only", choices=PREDICTION_TYPES, help="train and score this one only (no ratio)")
    parser.add_argument("--reuse", action="store_true", help="sample the checkpoints already in --models-dir")
    parser.add_argument("--tiny", action="store_true", help="a few steps and samples of each: that the bench runs")
    args = parser.parse_args(argv)
    samples, sample_steps = (TINY_SAMPLES, TINY_SAMPLE_STEPS) if args.tiny else (args.samples, None)
    classifier()  # fitted once, before the runs
    print(f"recipe {DEFAULT_RECIPE!r}{' (--tiny)' if args.tiny else ''}, seed {args.seed}; {samples} DDIM "
          f"{sample_steps or 50}-step samples a model; load average {os.getloadavg()[0]:.1f} "
          f"(of {os.cpu_count()} cores)", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        models_dir = args.models_dir or tmp
        readable = {}
        for kind in (args.only,) if args.only else PREDICTION_TYPES:
            path, run = train(kind, models_dir, seed=args.seed, tiny=args.tiny, max_steps=args.max_steps or None,
                              reuse=args.reuse, minutes=args.minutes)
            scores = classifier().score(sample(path, samples, steps=sample_steps))
            readable[kind] = float(scores.recognisable.mean())
            print(f"{kind}: {run['steps']} steps in {run['seconds']:.0f} s, last loss {run['loss']:.4f}; readable "
                  f"{int(scores.recognisable.sum())}/{samples} ({readable[kind]:.3f}), confident "
                  f"{int(scores.confident.sum())}/{samples}; checkpoint {path}", flush=True)
    if args.only:
        return 0
    ratio = readable["v_prediction"] / readable["epsilon"] if readable["epsilon"] else float("nan")
    print(f"readable fraction v_prediction / epsilon: {readable['v_prediction']:.3f} / {readable['epsilon']:.3f} "
          f"= {ratio:.2f}; load average at the end {os.getloadavg()[0]:.1f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
