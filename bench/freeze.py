"""Server memory with and without ``gc.freeze()``: 10 training runs and 200 requests against a launched app.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/freeze.py                      # both, one after the other
    HF_HUB_OFFLINE=1 .venv/bin/python bench/freeze.py --runs 4 --requests 40

The server freezes what lives at start-up (app.py) and after each training job (engine/training/jobs.py): frozen
objects are left out of full collections, so a frozen object that later becomes cyclic garbage is never freed.
This launches the app twice on temporary folders (bench/page.py's launcher): as it is, then with ``gc.freeze``
a no-op. Each time it runs ``--runs`` short training jobs (the tiny preset, few steps) through /train_start, each
followed by ``--requests`` / ``--runs`` small /txt2img requests (gradio_client), and prints the server's resident
memory (RSS) after each job and its requests. The freeze stays only if memory with it is as flat as without.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.page import App, client  # noqa: E402  (after the path)
from bench.soak import REQUEST, rss_mib  # noqa: E402

TRAIN = dict(dataset="digits", resolution=16, batch_size=8, max_steps=30, learning_rate=1e-3, lr_warmup_steps=0,
             mixed_precision="no", ema=False, seed=0, save_every=0, sample_every=0, preset="tiny")
NO_FREEZE = ("-c", "import gc, runpy, sys; gc.freeze = lambda: None; sys.argv[0] = 'app.py'; "
                   "runpy.run_path('app.py', run_name='__main__')")


def status(c) -> dict:
    value, _ = c.predict(api_name="/train_status")
    return value if isinstance(value, dict) else json.loads(value)


def measure(freeze: bool, runs: int, requests: int) -> list[float]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name in ("models", "data", "outputs"):
            (root / name).mkdir()
        app = App(root, launcher=("app.py",) if freeze else NO_FREEZE)
        try:
            c = client(app.url)
            c.predict(**REQUEST, seed=0, api_name="/txt2img")  # the worker and the page warmed up
            samples = [rss_mib(app.process.pid)]
            print(f"{'with' if freeze else 'without'} gc.freeze: start {samples[0]:.0f} MiB", flush=True)
            seed = 1
            for run in range(1, runs + 1):
                c.predict(**TRAIN, run_name=f"freeze-{run}", api_name="/train_start")
                while status(c)["state"] in ("starting", "running", "stopping"):
                    time.sleep(0.5)  # a bench, not a test: polls the job as the page does
                for _ in range(requests // runs):
                    c.predict(**REQUEST, seed=seed, api_name="/txt2img")
                    seed += 1
                samples.append(rss_mib(app.process.pid))
                print(f"  after training run {run} and {seed - 1} requests: {samples[-1]:.0f} MiB", flush=True)
            c.close()
        finally:
            app.close()
    return samples


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args(argv)
    results = {freeze: measure(freeze, args.runs, args.requests) for freeze in (True, False)}
    for freeze, samples in results.items():
        half = samples[len(samples) // 2:]
        print(f"{'with' if freeze else 'without'} gc.freeze: {samples[0]:.0f} -> {samples[-1]:.0f} MiB "
              f"({samples[-1] - samples[0]:+.0f}); second half {half[0]:.0f} -> {half[-1]:.0f} MiB "
              f"({half[-1] - half[0]:+.0f})")


if __name__ == "__main__":
    main()
