"""Built-in models on this machine: load time, and a 25-step digits-sd run with previews on.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/builtins.py

Prints seconds to load each built-in (a fresh registry, weights from disk), then the median
time of a 25-step text-to-image run of digits-sd consumed as the page consumes it (every
delivered step's x0 and x_t previews drawn), beside StableDiffusionPipeline's on the same
components with no callback, and their ratio.
"""

from __future__ import annotations

import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from engine.models.devices import resolve_device  # noqa: E402
from engine.events import Step  # noqa: E402
from engine.models.registry import BUILTINS, ModelRegistry  # noqa: E402
from engine.sampling.schedulers import make_scheduler  # noqa: E402
from engine.streaming import stream_latest  # noqa: E402
from engine.sampling.txt2img import Txt2ImgRequest, iter_txt2img  # noqa: E402


def main() -> None:
    torch.set_grad_enabled(False)
    placement = resolve_device("cpu")
    pipes = {}
    for name, builtin in BUILTINS.items():
        start = time.perf_counter()
        pipes[name] = ModelRegistry("/nonexistent", placement).load(name, builtin.kind)
        print(f"load {name:12s} {time.perf_counter() - start:6.2f} s")
    pipe = pipes["digits-sd"]
    request = Txt2ImgRequest("a handwritten digit seven", num_inference_steps=25, seed=0)

    def engine_run():
        for event in stream_latest(lambda cancel: iter_txt2img(request, pipe=pipe, cancel=cancel)):
            if isinstance(event, Step):
                event.preview_x0.array(), event.preview_xt.array()

    original = pipe.scheduler

    def pipeline_run():
        pipe.scheduler = make_scheduler(request.scheduler, original.config)
        pipe(request.prompt, num_inference_steps=25, guidance_scale=request.guidance_scale,
             generator=torch.Generator("cpu").manual_seed(0))
        pipe.scheduler = original

    def timed(fn) -> float:
        """In a fresh thread, as the page runs model work (see bench/txt2img.py)."""
        seconds = []

        def body():
            start = time.perf_counter()
            fn()
            seconds.append(time.perf_counter() - start)

        thread = threading.Thread(target=body)
        thread.start()
        thread.join()
        return seconds[0]

    timed(engine_run), timed(pipeline_run)  # warm-up
    times = {"engine": [], "pipeline": []}
    for _ in range(5):
        for name, fn in (("engine", engine_run), ("pipeline", pipeline_run)):
            times[name].append(timed(fn))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"digits-sd 25 steps, previews on (engine, as the page): {med['engine']:.3f} s")
    print(f"digits-sd 25 steps, StableDiffusionPipeline, no callback: {med['pipeline']:.3f} s")
    print(f"ratio engine/pipeline: {med['engine'] / med['pipeline']:.3f}")


if __name__ == "__main__":
    main()
