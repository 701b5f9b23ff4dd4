"""Time the Unconditional tab's engine, previews on, against diffusers' DDPMPipeline.

Both run the same model, scheduler, steps and seed. The engine is consumed the way
the page consumes it: through ``stream_latest`` (about 10 steps a second reach the
consumer), drawing the x_t and x0 previews of every step that arrives. Runs are
interleaved (pipeline, engine, pipeline, ...) so that load from other processes
hits both alike; the ratio is of the medians.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/ddpm.py [--model digits-ddpm] [--scheduler DDPM] [--steps N]

Prints one line per run and, last, ``ratio engine/pipeline: X.XX`` (target: at most 1.10 on CPU).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from diffusers import DDPMPipeline  # noqa: E402

from engine.models.devices import resolve_device  # noqa: E402
from engine.events import Done, Step  # noqa: E402
from engine.models.registry import ModelRegistry  # noqa: E402
from engine.sampling.schedulers import make_scheduler  # noqa: E402
from engine.streaming import stream_latest  # noqa: E402
from engine.sampling.unconditional import UnconditionalRequest, iter_unconditional  # noqa: E402

# DDPMPipeline passes ``generator`` to ``scheduler.step``: PNDM and UniPC refuse it, so it cannot run them.
PIPELINE_SCHEDULERS = ("DDPM", "DDIM", "DPM++ 2M", "Euler")


def time_pipeline(pipe, scheduler: str, steps: int, seed: int) -> float:
    reference = DDPMPipeline(unet=pipe.unet, scheduler=make_scheduler(scheduler, pipe.scheduler.config))
    reference.set_progress_bar_config(disable=True)
    start = time.perf_counter()
    reference(num_inference_steps=steps, generator=torch.Generator("cpu").manual_seed(seed), output_type="pil")
    return time.perf_counter() - start


def time_engine(pipe, scheduler: str, steps: int, seed: int) -> tuple[float, int]:
    """Seconds to the final images, and how many steps' previews were drawn."""
    request = UnconditionalRequest(scheduler=scheduler, num_inference_steps=steps, seed=seed)
    shown = 0
    start = time.perf_counter()
    for event in stream_latest(lambda cancel: iter_unconditional(request, pipe=pipe, cancel=cancel)):
        if isinstance(event, Step):
            event.preview_xt.array()
            event.preview_x0.array()
            shown += 1
        elif isinstance(event, Done):
            elapsed = time.perf_counter() - start
    return elapsed, shown


def main(argv: list[str] | None = None) -> float:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="digits-ddpm", help="a built-in, a folder under --models-dir, or a hub id")
    p.add_argument("--models-dir", type=Path, default=Path("models"))
    p.add_argument("--scheduler", default="DDPM", choices=PIPELINE_SCHEDULERS)
    p.add_argument("--steps", type=int, default=None, help="default: the model's T for DDPM, 50 for the others")
    p.add_argument("--repeats", type=int, default=3, help="runs of each, interleaved; the medians are compared")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads (default 1: on a shared CPU, OpenMP teams that outnumber "
                        "the free cores swamp the timings)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    registry = ModelRegistry(args.models_dir, resolve_device(args.device))
    pipe = registry.load(args.model, "unconditional")
    steps = UnconditionalRequest(scheduler=args.scheduler, num_inference_steps=args.steps).resolved(pipe)
    steps = steps.num_inference_steps
    size = pipe.unet.config.sample_size
    print(f"model {args.model} ({size} px, {pipe.device}, torch threads {torch.get_num_threads()}), "
          f"scheduler {args.scheduler}, {steps} steps, {args.repeats} runs each")

    time_pipeline(pipe, args.scheduler, min(steps, 5), args.seed)  # warm-up: first-call allocations
    pipeline_times, engine_times = [], []
    for i in range(args.repeats):
        pipeline_times.append(time_pipeline(pipe, args.scheduler, steps, args.seed))
        elapsed, shown = time_engine(pipe, args.scheduler, steps, args.seed)
        engine_times.append(elapsed)
        print(f"run {i + 1}: DDPMPipeline {pipeline_times[-1]:.2f} s, engine {elapsed:.2f} s "
              f"({shown} of {steps} steps previewed)")
    ratio = statistics.median(engine_times) / statistics.median(pipeline_times)
    print(f"ratio engine/pipeline: {ratio:.2f}")
    return ratio


if __name__ == "__main__":
    main()
