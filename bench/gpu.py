"""The GPU path against plain diffusers, side by side in one run, each figure beside its bound.

On the device machine (torch and transformers there, diffusers carried as a wheel in .whl/):

    python3 -m pip install --no-deps .whl/*.whl && PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 python3 bench/gpu.py

Anywhere, the smallest models (CI runs this on the CPU, tests/engine/test_gpu_bench.py):

    HF_HUB_OFFLINE=1 .venv/bin/python bench/gpu.py --tiny

Full mode (CUDA): SD 1.5- and google/ddpm-cat-256-shaped models with random weights (engine/testing/shapes.py).
1. compile: the extra seconds of a first compiled request with an empty compile cache (1a), and of the first
   compiled request after a restart with the cache warm (1b, after 3.; each in a fresh process; bound: restart
   <= 10 s);
2. text to image, fp16, 512x512, 30 steps, DPM++ 2M Karras (the page's default), guidance 7.5: it/s, seconds
   per image and peak GPU memory of StableDiffusionPipeline, of the engine's GPU path, and of it compiled, with
   previews streamed as the page streams them and without; bounds: compiled with previews >= 2.5x the
   pipeline's it/s, previews cost <= 3%; parity with the pipeline on the same components and seed;
3. unconditional, ddpm-cat-256 shape, DDPM 1000 steps: DDPMPipeline fp32 against the engine (fp16, GPU path,
   compiled) with previews streamed; bound: >= 2x the pipeline's it/s;
4. device syncs a step in the loop, per scheduler (torch.cuda.set_sync_debug_mode).
Exits 1 when a figure misses its bound (the bounds are checked in full mode on CUDA; --tiny checks that every
figure is measured).

"Previews streamed as the page": the loop runs in stream_latest's thread, the consumer takes at most one step
each 0.1 s (the page's interval), makes it portable as the device worker does (x0 and x_t drawn on the GPU, at
latent size, copied without a sync), enlarges both and encodes them as PNG (the server's work, done here in the
same process: a harder case than the page's, where the server is another process). it/s = steps / seconds from
the call to the final image (text encoding and VAE decode included, for both sides).
"""

from __future__ import annotations

import argparse
import copy
import gc
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

RESULTS: list[tuple[str, bool]] = []  # (figure, within its bound)
PREVIEW_INTERVAL = 0.1  # the page's (ui.common.PREVIEW_INTERVAL; not imported: ui/ needs gradio)
BOUNDS = dict(speedup_txt2img=2.5, preview_cost=0.03, speedup_ddpm=2.0, restart_seconds=10.0)


def settings(tiny: bool) -> dict:
    """What each section runs: the issue's sizes, or the smallest that exercise every line."""
    if tiny:
        return dict(sd="tiny", cat="tiny", size=16, steps=3, ddpm_steps=5, repeats=1, probe_steps=2)
    return dict(sd="sd15", cat="cat256", size=512, steps=30, ddpm_steps=1000, repeats=5, probe_steps=3)


def report(name: str, value: str, ok: bool | None = None) -> None:
    mark = "" if ok is None else ("  ok" if ok else "  MISSES ITS BOUND")
    print(f"{name:64s} {value}{mark}", flush=True)
    if ok is not None:
        RESULTS.append((name, ok))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def gib(device: torch.device) -> str:
    return f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB" if device.type == "cuda" else "n/a (CPU)"


def reset_peak(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


# -- the ways a run is consumed --------------------------------------------------------------------------------------
def consume(make_events, previews: bool) -> tuple[float, object]:
    """(seconds from the call to Done, Done): through stream_latest, previews drawn and PNG-encoded as the page's
    worker and server do (``previews``), or none drawn."""
    from PIL import Image

    from engine.events import Done, Step
    from engine.streaming import stream_latest
    from engine.worker.child import portable

    done = None
    start = time.perf_counter()
    for event in stream_latest(make_events, min_interval=PREVIEW_INTERVAL):
        if isinstance(event, Step) and previews:
            sent = portable(event)
            for preview in (sent.preview_x0, sent.preview_xt):
                if preview is not None:
                    Image.fromarray(preview.array()).save(io.BytesIO(), format="PNG")
        elif isinstance(event, Done):
            done = event
    return time.perf_counter() - start, done


def timed(fn, device) -> tuple[float, object]:
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - start, out


def pixels(done_or_image) -> np.ndarray:
    image = done_or_image.images[0] if hasattr(done_or_image, "images") else done_or_image
    return np.asarray(image).astype(np.int16)


# -- 1. compile ------------------------------------------------------------------------------------------------------
def probe(args) -> None:
    """In a fresh process: the extra seconds of a first compiled request of each kind (printed as JSON)."""
    from engine.sampling.txt2img import Txt2ImgRequest, iter_txt2img
    from engine.sampling.unconditional import UnconditionalRequest, iter_unconditional
    from engine.testing.shapes import ddpm_pipeline, sd_pipeline

    device, dtype, s = torch.device(args.device), dtype_of(args.device), settings(args.tiny)
    out = {}
    sd = sd_pipeline(s["sd"], device=device, dtype=dtype)
    cat = ddpm_pipeline(s["cat"], device=device, dtype=dtype)
    with torch.no_grad():
        for kind, pipe, request, loop in (
            ("txt2img", sd, Txt2ImgRequest("a cat", num_inference_steps=s["probe_steps"], seed=0, width=s["size"],
                                           height=s["size"], preview="latent"), iter_txt2img),
            ("unconditional", cat, UnconditionalRequest(scheduler="DDPM", num_inference_steps=s["probe_steps"],
                                                        seed=0), iter_unconditional),
        ):
            list(loop(request, pipe=pipe))  # CUDA, cuDNN and the eager graph warmed: not the compile's cost
            done = list(loop(replace(request, compile=True), pipe=pipe))[-1]
            out[kind] = done.info.get("compile_seconds", 0.0)
            out[kind + "_problem"] = done.info.get("compile_problem", "")
    print(json.dumps(out), flush=True)


def compile_probe(args, cache: str, warm: bool) -> dict:
    """Section 1's fresh process: the first compiled request's extra seconds of each kind, with the cache as is."""
    label = "a restart, cache warm" if warm else ("first request, cache given" if args.compile_cache
                                                  else "first request, empty cache")
    print(f"1{'b' if warm else 'a'}. compile, {label} (torch.compile of the UNet in a fresh process; compile cache "
          f"{cache})", flush=True)
    command = [sys.executable, str(Path(__file__).resolve()), "--probe", "--device", args.device]
    command += ["--tiny"] if args.tiny else []
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=args.probe_timeout)
    if result.returncode != 0:
        print(result.stdout[-3000:], result.stderr[-3000:], sep="\n", flush=True)
        raise RuntimeError(f"the compile probe ({label}) failed with exit status {result.returncode}")
    found = json.loads(result.stdout.strip().splitlines()[-1])
    for kind in ("txt2img", "unconditional"):
        seconds, problem = found[kind], found[kind + "_problem"]
        if warm:
            report(f"  {kind}: a restart's first request's extra seconds (warm)", f"{seconds:.1f} s (bound <= "
                   f"{BOUNDS['restart_seconds']:g} s)", check(args, seconds <= BOUNDS["restart_seconds"]))
        else:
            state = "cache given" if args.compile_cache else "cold cache"
            report(f"  {kind}: first request's extra seconds ({state})", f"{seconds:.1f} s")
        if problem:
            report(f"  {kind}: compile problem", problem, False)
    return found


def check(args, ok: bool) -> bool | None:
    """``ok`` where bounds are checked (full mode on CUDA), None (reported, not checked) elsewhere."""
    return ok if args.bounds else None


def dtype_of(device: str) -> torch.dtype:
    return torch.float16 if torch.device(device).type == "cuda" else torch.float32


# -- 2. text to image ------------------------------------------------------------------------------------------------
def txt2img_section(args) -> None:
    from engine.sampling import fast
    from engine.sampling.schedulers import make_scheduler
    from engine.sampling.txt2img import Txt2ImgRequest, iter_txt2img
    from engine.testing.shapes import sd_pipeline

    s, device = settings(args.tiny), torch.device(args.device)
    dtype = dtype_of(args.device)
    request = Txt2ImgRequest("an astronaut riding a horse", num_inference_steps=s["steps"], seed=0,
                             width=s["size"], height=s["size"])  # the page's scheduler, guidance and preview
    print(f"2. text to image: {s['sd']} shape, {str(dtype).removeprefix('torch.')}, {s['size']}x{s['size']}, "
          f"{s['steps']} steps, {request.scheduler}, guidance {request.guidance_scale}, {s['repeats']} runs each "
          "(medians)", flush=True)
    master = sd_pipeline(s["sd"], device=device, dtype=torch.float32).to("cpu")  # the weights every side gets

    def pipeline_run(pipe):
        pipe.scheduler = make_scheduler(request.scheduler, master.scheduler.config)
        return pipe(request.prompt, negative_prompt=request.negative_prompt, num_inference_steps=request.num_inference_steps,
                    guidance_scale=request.guidance_scale, width=request.width, height=request.height,
                    generator=torch.Generator("cpu").manual_seed(request.seed), output_type="pil").images[0]

    figures = {}
    with torch.no_grad():
        # fp16's own error: the fp32 pipeline on the same weights (the parity tolerance below).
        reference = copy.deepcopy(master).to(device)
        fp32_image = pixels(pipeline_run(reference))
        del reference
        reset_peak(device)
        plain = copy.deepcopy(master).to(device, dtype)
        plain_image = pixels(pipeline_run(plain))  # also the warm-up
        times = [timed(lambda: pipeline_run(plain), device)[0] for _ in range(s["repeats"])]
        figures["plain"] = (statistics.median(times), gib(device))
        del plain
        reset_peak(device)

        ours = copy.deepcopy(master).to(device, dtype)
        runs = {}

        def engine(compile: bool, previews: bool):
            r = replace(request, compile=compile)
            return consume(lambda cancel: iter_txt2img(r, pipe=ours, cancel=cancel), previews)

        engine(False, True)  # warm-up: prepares the models, captures the UNet's graph
        runs["gpu"] = [engine(False, True) for _ in range(s["repeats"])]
        figures["gpu"] = (statistics.median(t for t, _ in runs["gpu"]), gib(device))
        fast.release(ours.unet)
        reset_peak(device)
        engine(True, True)  # warm-up: compiles (the cache is warm: section 1), captures
        runs["compiled"], runs["compiled, no previews"] = [], []
        for _ in range(s["repeats"] + 2):  # interleaved: drifts hit both alike
            runs["compiled"].append(engine(True, True))
            runs["compiled, no previews"].append(engine(True, False))
        figures["compiled"] = (statistics.median(t for t, _ in runs["compiled"]), gib(device))
        figures["compiled, no previews"] = (statistics.median(t for t, _ in runs["compiled, no previews"]), "")
    done = runs["compiled"][-1][1]
    print(f"  x0 preview the page gets: {done.info['preview']}; engine dtype {ours.unet.dtype}", flush=True)
    steps = request.num_inference_steps
    labels = {"plain": "StableDiffusionPipeline (plain)", "gpu": "engine, GPU path, previews streamed",
              "compiled": "engine, GPU path compiled, previews streamed",
              "compiled, no previews": "engine, GPU path compiled, no previews"}
    for key, label in labels.items():
        seconds, peak = figures[key]
        report(f"  {label}", f"{steps / seconds:7.1f} it/s  {seconds:6.3f} s/image" + (f"  peak {peak}" if peak else ""))
    speedup = figures["plain"][0] / figures["compiled"][0]
    report("  compiled with previews / plain (it/s)", f"{speedup:.2f}x (bound >= {BOUNDS['speedup_txt2img']:g}x)",
           check(args, speedup >= BOUNDS["speedup_txt2img"]))
    report("  GPU path, not compiled, with previews / plain (it/s)", f"{figures['plain'][0] / figures['gpu'][0]:.2f}x")
    cost = figures["compiled"][0] / figures["compiled, no previews"][0] - 1
    report("  previews' cost (compiled, with / without - 1)", f"{cost:+.1%} (bound <= {BOUNDS['preview_cost']:.0%})",
           check(args, cost <= BOUNDS["preview_cost"]))
    # Parity, in pixels out of 255: the engine's images against the pipeline's in the same dtype, beside the error
    # of that dtype itself (the pipeline against its fp32 self: 0 on a CPU, which runs fp32).
    tolerance = np.abs(plain_image - fp32_image).mean()
    for key in ("gpu", "compiled"):
        diff = np.abs(pixels(runs[key][-1][1]) - plain_image)
        report(f"  parity, {labels[key].split(', previews')[0]} vs pipeline ({str(dtype).removeprefix('torch.')})",
               f"mean {diff.mean():.2f}, p99 {np.percentile(diff, 99):.0f}, max {diff.max()} /255 (tolerance: mean "
               f"<= the pipeline's own vs float32, {tolerance:.2f}, or 2/255)",
               check(args, diff.mean() <= max(tolerance, 2.0)))
    print(f"  steps a second inside the loop, compiled (CUDA events; on a CPU the clock): "
          f"{done.info.get('steps_per_second')}",
          flush=True)
    del ours, master
    reset_peak(device)


# -- 3. unconditional ------------------------------------------------------------------------------------------------
def unconditional_section(args) -> None:
    from diffusers import DDPMPipeline

    from engine.sampling.unconditional import UnconditionalRequest, iter_unconditional
    from engine.testing.shapes import ddpm_pipeline

    s, device = settings(args.tiny), torch.device(args.device)
    repeats = max(2, s["repeats"] - 2)
    request = UnconditionalRequest(scheduler="DDPM", num_inference_steps=s["ddpm_steps"], seed=0)
    print(f"3. unconditional: {s['cat']} shape, DDPM {s['ddpm_steps']} steps, batch 1, {repeats} runs each "
          "(medians)", flush=True)
    master = ddpm_pipeline(s["cat"], device=device).to("cpu")
    figures = {}
    with torch.no_grad():
        plain = copy.deepcopy(master).to(device)  # fp32, as DDPMPipeline runs by default
        reset_peak(device)

        def pipeline_run():
            pipe = DDPMPipeline(unet=plain.unet, scheduler=plain.scheduler)
            pipe.set_progress_bar_config(disable=True)
            return pipe(num_inference_steps=request.num_inference_steps, output_type="pil",
                        generator=torch.Generator("cpu").manual_seed(0)).images[0]

        pipeline_run()
        figures["plain"] = (statistics.median(timed(pipeline_run, device)[0] for _ in range(repeats)), gib(device))
        del plain
        reset_peak(device)
        ours = copy.deepcopy(master).to(device, dtype_of(args.device))
        for compile in (False, True):
            r = replace(request, compile=compile)

            def engine():
                return consume(lambda cancel: iter_unconditional(r, pipe=ours, cancel=cancel), previews=True)

            engine()  # warm-up: prepares, compiles (warm cache), captures
            figures[compile] = (statistics.median(engine()[0] for _ in range(repeats)), gib(device))
            from engine.sampling import fast

            fast.release(ours.unet)
            reset_peak(device)
    steps = request.num_inference_steps
    labels = {"plain": "DDPMPipeline fp32 (plain)", False: "engine, GPU path, previews streamed",
              True: "engine, GPU path compiled, previews streamed"}
    for key, label in labels.items():
        seconds, peak = figures[key]
        report(f"  {label}", f"{steps / seconds:7.1f} it/s  {seconds:6.3f} s/image  peak {peak}")
    speedup = figures["plain"][0] / figures[True][0]
    report("  compiled with previews / plain (it/s)", f"{speedup:.2f}x (bound >= {BOUNDS['speedup_ddpm']:g}x)",
           check(args, speedup >= BOUNDS["speedup_ddpm"]))
    del ours, master
    reset_peak(device)


# -- 4. syncs --------------------------------------------------------------------------------------------------------
def syncs_section(args) -> None:
    from engine.events import Step
    from engine.sampling import fast
    from engine.sampling.schedulers import SCHEDULERS
    from engine.sampling.txt2img import Txt2ImgRequest, iter_txt2img
    from engine.testing.shapes import sd_pipeline

    print("4. device syncs a step inside the loop (GPU path, steps 2 to 6, the pacer's wait left out)", flush=True)
    device = torch.device(args.device)
    if device.type != "cuda":
        report("  syncs per step", "n/a (torch.cuda.set_sync_debug_mode needs CUDA)")
        return
    s = settings(args.tiny)
    pipe = sd_pipeline(s["sd"], device=device, dtype=dtype_of(args.device))
    counts = {}
    ahead, fast.AHEAD = fast.AHEAD, 10**6  # the pacer never waits here: the scheduler's own syncs alone
    try:
        with torch.no_grad():
            for name in SCHEDULERS:
                request = Txt2ImgRequest("a cat", num_inference_steps=6, scheduler=name, seed=0, width=s["size"],
                                         height=s["size"], preview="latent")
                list(iter_txt2img(request, pipe=pipe))  # graphs captured outside the count
                marks = []
                with warnings.catch_warnings(record=True) as seen:
                    warnings.simplefilter("always")
                    torch.cuda.set_sync_debug_mode("warn")
                    try:
                        for event in iter_txt2img(request, pipe=pipe):
                            if isinstance(event, Step):
                                marks.append(len(seen))
                    finally:
                        torch.cuda.set_sync_debug_mode(0)
                counts[name] = max(np.diff(marks).tolist() or [0])
    finally:
        fast.AHEAD = ahead
    report("  syncs a step (the most in any step), per scheduler", ", ".join(f"{k} {v}" for k, v in counts.items()))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true", help="the smallest models: every line, in a minute or two on a CPU")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)  # section 1's fresh process
    ap.add_argument("--probe-timeout", type=float, default=900.0, help="seconds for each compile probe process")
    ap.add_argument("--compile-cache", metavar="DIR",
                    help="compile with this cache instead of an empty one (the suite passes the one its compile tests "
                         "filled, so that a cold compile is paid once: 1a's figure is then not a cold one, and says so)")
    ap.add_argument("--only", choices=("compile", "txt2img", "unconditional", "syncs"), action="append",
                    help="run only these sections (repeatable)")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()
    if args.probe:
        probe(args)
        return 0
    device = torch.device(args.device)
    if device.type != "cuda" and not args.tiny:
        print("full mode needs a CUDA device; --tiny runs the smallest models anywhere", file=sys.stderr)
        return 2
    args.bounds = device.type == "cuda" and not args.tiny
    if device.type == "cpu":
        torch.set_num_threads(1)  # the CPU's figures are information only; one thread keeps them from thrashing
    import diffusers

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"bench/gpu.py: {'tiny' if args.tiny else 'full'} mode on {name}; torch {torch.__version__}, diffusers "
          f"{diffusers.__version__}; bounds {'checked' if args.bounds else 'not checked (tiny mode or CPU)'}",
          flush=True)
    cache = args.compile_cache or tempfile.mkdtemp(prefix="workbench-compile-")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache  # this process's compiles read what the probes left
    # The restart's probe comes after the speed sections: what matters most is measured first.
    sections = [("compile", lambda: compile_probe(args, cache, warm=False)), ("txt2img", lambda: txt2img_section(args)),
                ("unconditional", lambda: unconditional_section(args)),
                ("compile", lambda: compile_probe(args, cache, warm=True)), ("syncs", lambda: syncs_section(args))]
    for key, section in sections:
        if args.only and key not in args.only:
            continue
        try:  # one section's failure still lets the others measure (a GPU machine's minutes are few)
            section()
        except Exception:
            traceback.print_exc()
            sys.stderr.flush()
            report(f"  section {key!r}", "FAILED (traceback above)", False)
    missed = [name for name, ok in RESULTS if not ok]
    print(f"{len(RESULTS) - len(missed)} of {len(RESULTS)} bounds met" + (f"; missed: {'; '.join(missed)}"
                                                                          if missed else ""), flush=True)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
