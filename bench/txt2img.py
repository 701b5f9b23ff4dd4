"""Benchmark: the Text to image engine with previews on at every step vs StableDiffusionPipeline.

Prints, from one run, median seconds per image of both and their ratio
(engine / pipeline). The engine is consumed as the page consumes it: through
``stream_latest`` in a worker thread, every delivered step's x0 and x_t previews
turned into arrays. A second ratio converts every step's previews (no frame dropped).

    python bench/txt2img.py                    # CPU, tiny model (the issue's gate: ratio <= 1.10)
    python bench/txt2img.py --model sd15 --device cuda --size 512 --steps 30   # SD1.5-shaped, fp16
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from engine.events import Step  # noqa: E402
from engine.sampling.schedulers import make_scheduler  # noqa: E402
from engine.streaming import stream_latest  # noqa: E402
from engine.sampling.txt2img import Txt2ImgRequest, iter_txt2img  # noqa: E402


def sd15_random_pipeline(dtype):
    """SD1.5-shaped components with random weights (no download): engine/testing/shapes.py."""
    from engine.testing.shapes import sd_pipeline

    return sd_pipeline("sd15", dtype=dtype)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=("tiny", "sd15"), default="tiny")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--scheduler", default="DPM++ 2M Karras")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    device = torch.device(args.device)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    torch.set_grad_enabled(False)
    if args.model == "tiny":
        from engine.testing.tiny import tiny_sd_pipeline

        pipe = tiny_sd_pipeline(seed=0)
    else:
        pipe = sd15_random_pipeline(dtype)
    pipe = pipe.to(device=device, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    original = pipe.scheduler
    request = Txt2ImgRequest("a photograph of an astronaut riding a horse", num_inference_steps=args.steps,
                             scheduler=args.scheduler, seed=0, width=args.size, height=args.size)

    def run_pipeline():
        pipe.scheduler = make_scheduler(args.scheduler, original.config)
        pipe(request.prompt, num_inference_steps=args.steps, guidance_scale=request.guidance_scale,
             width=args.size, height=args.size, generator=torch.Generator("cpu").manual_seed(0), output_type="pil")
        pipe.scheduler = original

    def run_engine_streamed():
        frames = 0
        for event in stream_latest(lambda cancel: iter_txt2img(request, pipe=pipe, cancel=cancel)):
            if isinstance(event, Step):
                event.preview_x0.array(), event.preview_xt.array()
                frames += 1
        return frames

    def run_engine_every_step():  # in the loop's own thread: no frame dropped, conversions on the loop
        for event in iter_txt2img(request, pipe=pipe):
            if isinstance(event, Step):
                event.preview_x0.array(), event.preview_xt.array()

    def timed(fn):
        """Seconds of ``fn`` run in a fresh thread, as the page runs model work (never the main thread:
        a BLAS call there leaves an OpenMP team that slows every other thread's torch on 2 cores)."""
        result = {}

        def body():
            sync(device)
            t = time.perf_counter()
            result["out"] = fn()
            sync(device)
            result["seconds"] = time.perf_counter() - t

        thread = threading.Thread(target=body)
        thread.start()
        thread.join()
        return result["seconds"], result["out"]

    for fn in (run_pipeline, run_engine_streamed, run_engine_every_step):  # warm-up
        timed(fn)
    times = {"pipeline": [], "engine (streamed previews)": [], "engine (every step converted)": []}
    frames = []
    for _ in range(args.repeats):  # interleaved, so drifts in machine load hit all three alike
        times["pipeline"].append(timed(run_pipeline)[0])
        t, n = timed(run_engine_streamed)
        times["engine (streamed previews)"].append(t)
        frames.append(n)
        times["engine (every step converted)"].append(timed(run_engine_every_step)[0])
    med = {k: statistics.median(v) for k, v in times.items()}
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"model={args.model} device={name} dtype={dtype} size={args.size} steps={args.steps} "
          f"scheduler={args.scheduler!r} repeats={args.repeats}")
    for k, v in med.items():
        print(f"  {k:32s} {v:8.3f} s/image")
    print(f"  preview frames shown per run (median): {statistics.median(frames):.0f} of {args.steps}")
    print(f"ratio engine/pipeline (streamed previews, as the page): {med['engine (streamed previews)'] / med['pipeline']:.3f}")
    print(f"ratio engine/pipeline (every step's previews converted): "
          f"{med['engine (every step converted)'] / med['pipeline']:.3f}")


if __name__ == "__main__":
    main()
