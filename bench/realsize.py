"""Real sizes through the page: SD 1.5- and ddpm-cat-256-shaped models, against diffusers alone, in one run.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/realsize.py                   # the page's figures (about 15 min, 2 cores)
    HF_HUB_OFFLINE=1 .venv/bin/python bench/realsize.py --only cpu-speed  # torch.compile, channels_last, SDPA
    HF_HUB_OFFLINE=1 .venv/bin/python bench/realsize.py --tiny            # the smallest models (the suite runs it)

Saves the models as diffusers folders with random weights (engine/testing/shapes.py: no download) in a temporary
--models-dir, launches the app on them (bench/page.py's launcher) and measures, each figure beside its bound:
1. SD 1.5 shape, 512x512, 3 DDIM steps, guidance 7.5: seconds a step in the page (/txt2img, gradio_client; the
   run's info: from the first step's end to the last's) / StableDiffusionPipeline alone in a fresh process with
   the app's torch threads, timed the same way (after each scheduler.step) <= 1.05;
2. the page's first run of that model: submit to the first streamed step <= the pipeline's from_pretrained +
   its first step (the call to the first scheduler.step's end) + 1 s;
3. memory (RSS of the processes, psutil, every 0.1 s): the worker's peak during that run <= the pipeline alone's
   peak + 0.5 GiB; the server's growth over it <= 0.3 GiB;
4. two SD-size models used in turn (A, B, A, one step each): the worker's peak <= the pipeline alone's peak +
   0.5 GiB (the model cache keeps what its memory budget allows: one SD model at the budget set here), the
   machine's least available memory >= 1 GiB and no swap used;
5. ddpm-cat-256 shape, /ddpm DDIM 10 steps at 256 px: the page's seconds a step / DDIMPipeline alone <= 1.05;
   the "DDPM as trained" estimate (Workbench.estimate_unconditional, as the Unconditional tab shows it before a
   first run: a probe) within 20% of the page's seconds a step x 1000;
6. the Text to image history: a tiny UNet with an 8x VAE (shape "tiny-vae8": 512 px images, 64x64 latents), two
   runs of 150 steps through the page's Generate in headless Chromium (where the scrubber's history is kept), the
   two extra views streamed and the run scrubbed through: the server's and the worker's growth over them <= 0.3 GiB
   and 0.5 GiB; and the same run through the engine, every view of every step drawn, its history thinned as the
   page thins a session's: the bytes it keeps <= the cap;
7. ``--only cpu-speed`` (separate: compiling SD 1.5's UNet takes many minutes on 2 cores): the SD 1.5 shape's
   it/s on this CPU with the pipeline as it comes (diffusers' SDPA attention), the classic attention instead,
   channels_last, and torch.compile (inductor), each against the plain pipeline, images within 2/255; a
   variant >= 1.15x is worth making the default.
Exits 1 when a figure misses its bound. --tiny runs every figure on the smallest models and checks no bound
(a tiny model's timings say nothing of real sizes); cpu-speed skips compiling there (minutes, even tiny).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
for _name, _value in (("HF_HUB_DISABLE_PROGRESS_BARS", "1"), ("DIFFUSERS_VERBOSITY", "error"),
                      ("TRANSFORMERS_VERBOSITY", "error")):  # the figures, not loading bars (here and in the app)
    os.environ.setdefault(_name, _value)

from bench.page import RESULTS, App, client, page_run, report  # noqa: E402  (after the path)
from bench.soak import rss_mib, worker_pid  # noqa: E402

GIB = 2**30
PROMPT = "an astronaut on a horse"  # within the tiny tokenizer's 32 characters
BOUNDS = dict(step_ratio=1.05, first_extra_s=1.0, worker_extra_gib=0.5, server_growth_gib=0.3, least_available_gib=1.0,
              estimate_error=0.20, history_server_gib=0.3, history_worker_gib=0.5, speedup=1.15, parity=2)
MODELS = {"sd": "sd15-shape", "sd_b": "sd15-shape-b", "cat": "ddpm-cat-256-shape", "history": "tiny-vae8"}
BUDGET_FLAG = "--model-cache-gb"  # the app's model cache budget (GB); the bench sets it to fit one SD model
CHECKED = True  # bounds checked (False in --tiny: printed, not checked)


def settings(tiny: bool) -> dict:
    """What each figure runs: the issue's sizes, or the smallest that run every line."""
    common = dict(steps=3, ddpm_steps=10, guidance=7.5, seed=1, speed_steps=3)
    if tiny:
        return dict(common, sd="tiny", cat="tiny", size=16, cat_size=8, history_steps=20, history_size=128)
    return dict(common, sd="sd15", cat="cat256", size=512, cat_size=256, history_steps=150, history_size=512)


def figure(name: str, value: str, bound: str = "", ok: bool | None = None) -> None:
    """One figure beside its bound; checked only in full mode (``ok`` None: information)."""
    text = f"{value} ({bound})" if bound else value
    report(name, text + ("" if CHECKED or ok is None else "  [not checked in --tiny]"), ok if CHECKED else None)


def load_average() -> str:
    return ", ".join(f"{x:.1f}" for x in os.getloadavg())


# -- memory, sampled from outside ---------------------------------------------------------------------------------
class Watch:
    """RSS of some processes, the machine's available memory and its swap in use, every ``every`` s in a thread."""

    def __init__(self, pids: dict[str, int], every: float = 0.1):
        self.pids, self.every = pids, every
        self.first: dict[str, float] = {}
        self.peak: dict[str, float] = {}
        self.last: dict[str, float] = {}
        self.least_available = float("inf")
        self.swap_first = self.swap_peak = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        import psutil

        for name, pid in self.pids.items():
            try:
                rss = rss_mib(pid) * 2**20
            except (OSError, psutil.Error):  # ended
                continue
            self.first.setdefault(name, rss)
            self.peak[name] = max(self.peak.get(name, 0.0), rss)
            self.last[name] = rss
        self.least_available = min(self.least_available, psutil.virtual_memory().available)
        swap = psutil.swap_memory().used
        self.swap_first = swap if self.swap_first is None else self.swap_first
        self.swap_peak = max(self.swap_peak or 0, swap)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.every)

    def __enter__(self) -> "Watch":
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def growth(self, name: str) -> float:
        return self.peak[name] - self.first[name]


# -- the models, saved as diffusers folders ---------------------------------------------------------------------
def save_models(models: Path, s: dict) -> None:
    """In a process of its own (an SD 1.5 pipeline is 4 GiB this process need not keep): the folders the app lists."""
    from engine.testing.shapes import ddpm_pipeline, sd_pipeline

    for key, make in (("sd", lambda: sd_pipeline(s["sd"])), ("cat", lambda: ddpm_pipeline(s["cat"])),
                      ("history", lambda: sd_pipeline("tiny-vae8"))):
        pipe = make()
        pipe.save_pretrained(models / MODELS[key])
        del pipe
    a, b = models / MODELS["sd"], models / MODELS["sd_b"]  # a second SD model: the same files, hard-linked
    shutil.copytree(a, b, copy_function=_link_or_copy)


def _link_or_copy(src, dst):
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


# -- diffusers alone, in a fresh process ------------------------------------------------------------------------
def alone(args) -> None:
    """``--alone sd|cat``: from_pretrained, then one run of the plain pipeline; prints its timings as JSON."""
    import torch
    from diffusers import DDIMPipeline, DDIMScheduler, DDPMPipeline, StableDiffusionPipeline
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.disable_progress_bar()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    if args.alone == "sd":
        pipe = StableDiffusionPipeline.from_pretrained(args.model)
    else:
        loaded = DDPMPipeline.from_pretrained(args.model)
        pipe = DDIMPipeline(unet=loaded.unet, scheduler=loaded.scheduler)
    load = time.perf_counter() - start
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)  # as the engine's "DDIM" makes it
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator("cpu").manual_seed(args.seed)
    start = time.perf_counter()
    with step_ends(pipe) as ends:
        if args.alone == "sd":
            image = pipe(PROMPT, num_inference_steps=args.steps, guidance_scale=args.guidance, width=args.size,
                         height=args.size, generator=generator).images[0]
        else:
            image = pipe(num_inference_steps=args.steps, generator=generator).images[0]
    total = time.perf_counter() - start
    image.save(args.out)
    print(json.dumps({"load": load, "first": ends[0] - start, "per_step": (ends[-1] - ends[0]) / (len(ends) - 1),
                      "total": total, "maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}),
          flush=True)


@contextlib.contextmanager
def step_ends(pipe):
    """Inside: the times at which each ``pipe.scheduler.step`` ends, as the engine's loop times its steps."""
    ends, step = [], pipe.scheduler.step

    def timed_step(*args, **kwargs):
        out = step(*args, **kwargs)
        ends.append(time.perf_counter())
        return out

    pipe.scheduler.step = timed_step
    try:
        yield ends
    finally:
        pipe.scheduler.step = step


def run_alone(kind: str, model: Path, s: dict, threads: int, out: Path) -> dict:
    """The plain pipeline in a fresh process (its RSS watched from here): its timings and peak RSS."""
    size, steps = (s["size"], s["steps"]) if kind == "sd" else (s["cat_size"], s["ddpm_steps"])
    command = [sys.executable, str(Path(__file__).resolve()), "--alone", kind, "--model", str(model), "--size",
               str(size), "--steps", str(steps), "--guidance", str(s["guidance"]), "--seed", str(s["seed"]),
               "--threads", str(threads), "--out", str(out)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    with Watch({"alone": process.pid}) as watch:
        stdout, _ = process.communicate()
    if process.returncode:
        raise SystemExit(f"the plain pipeline ({kind}) failed: exit {process.returncode}")
    found = json.loads(stdout.strip().splitlines()[-1])
    return dict(found, peak=watch.peak["alone"])


def max_difference(png: bytes, path: Path) -> int:
    import numpy as np
    from PIL import Image

    a = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.int16)
    b = np.asarray(Image.open(path).convert("RGB")).astype(np.int16)
    return int(np.abs(a - b).max()) if a.shape == b.shape else -1


# -- the figures --------------------------------------------------------------------------------------------------
def measure_sd(app: App, root: Path, s: dict, threads: int) -> dict:
    """Figures 1-3: the plain pipeline in a fresh process, then the page's first run of the same model."""
    alone_run = run_alone("sd", root / "models" / MODELS["sd"], s, threads, root / "sd-alone.png")
    server, worker = app.process.pid, worker_pid(app.process.pid)
    c = client(app.url)
    request = dict(model=MODELS["sd"], prompt=PROMPT, negative_prompt="", steps=s["steps"],
                   guidance_scale=s["guidance"], scheduler="DDIM", seed=s["seed"], width=s["size"], height=s["size"])
    with Watch({"server": server, "worker": worker}) as watch:
        page = page_run(c, request, "/txt2img")
    c.close()
    what = f"SD 1.5 shape ({s['sd']}), {s['size']}x{s['size']}, {s['steps']} DDIM steps, CFG {s['guidance']:g}"
    per_step = seconds_a_step(page)
    ratio = per_step / alone_run["per_step"]
    figure(f"1. s/step in the page / StableDiffusionPipeline alone, {what}",
           f"{ratio:.3f} ({per_step:.2f} s against {alone_run['per_step']:.2f} s)", f"<= {BOUNDS['step_ratio']}",
           ratio <= BOUNDS["step_ratio"])
    figure("1. the page's image / the pipeline's, same seed (max difference)",
           f"{max_difference(page['png'], root / 'sd-alone.png')}/255")
    allowed = alone_run["load"] + alone_run["first"] + BOUNDS["first_extra_s"]
    figure("2. first run of a model: submit to the first preview in the page", f"{page['first']:.2f} s",
           f"<= load {alone_run['load']:.2f} + first step {alone_run['first']:.2f} + 1 s = {allowed:.2f} s",
           page["first"] <= allowed)
    limit = alone_run["peak"] + BOUNDS["worker_extra_gib"] * GIB
    figure("3. the worker's peak RSS during that run", f"{watch.peak['worker'] / GIB:.2f} GiB",
           f"<= the pipeline alone's {alone_run['peak'] / GIB:.2f} + 0.5 GiB", watch.peak["worker"] <= limit)
    growth = watch.growth("server")
    figure("3. the server's RSS growth over that run", f"{growth / GIB:+.3f} GiB "
           f"({watch.first['server'] / GIB:.2f} to a peak of {watch.peak['server'] / GIB:.2f} GiB)",
           f"<= {BOUNDS['server_growth_gib']} GiB", growth <= BOUNDS["server_growth_gib"] * GIB)
    return alone_run


def seconds_a_step(page: dict) -> float:
    """Seconds a step in the page, from the first streamed step's end to the last's, as the progress line says
    them (0.1 s apart; the run's ``steps_per_second`` is rounded to 0.01 it/s, too coarse for 30 s steps)."""
    elapsed = page["elapsed"]
    first, last = (min(elapsed), max(elapsed)) if elapsed else (0, 0)
    if last == first or elapsed[last] - elapsed[first] < 1.0:  # tiny steps: 0.1 s ticks say nothing of them
        return 1 / page["info"]["steps_per_second"]
    return (elapsed[last] - elapsed[first]) / (last - first)


def measure_models(app: App, s: dict, alone_run: dict) -> None:
    """Figure 4: two SD-size models in turn, one step each (A was loaded by figure 1's run)."""
    server, worker = app.process.pid, worker_pid(app.process.pid)
    c = client(app.url)
    request = dict(prompt=PROMPT, negative_prompt="", steps=1, guidance_scale=s["guidance"], scheduler="DDIM",
                   seed=s["seed"], width=s["size"], height=s["size"])
    after = []
    with Watch({"server": server, "worker": worker}) as watch:
        for model in (MODELS["sd_b"], MODELS["sd"]):
            page_run(c, dict(request, model=model), "/txt2img")
            after.append(f"{model}: worker {rss_mib(worker) / 1024:.2f} GiB")
    c.close()
    limit = alone_run["peak"] + BOUNDS["worker_extra_gib"] * GIB
    figure("4. two SD-size models in turn (A, B, A): the worker's peak RSS", f"{watch.peak['worker'] / GIB:.2f} GiB "
           f"({'; '.join(after)})", f"<= one model's {alone_run['peak'] / GIB:.2f} + 0.5 GiB",
           watch.peak["worker"] <= limit)
    swap = (watch.swap_peak or 0) - (watch.swap_first or 0)
    least = watch.least_available
    figure("4. the machine meanwhile: least available memory; swap used", f"{least / GIB:.2f} GiB; {swap / GIB:+.2f} "
           "GiB", f">= {BOUNDS['least_available_gib']} GiB; none", least >= BOUNDS["least_available_gib"] * GIB
           and swap <= 0)


def measure_cat(app: App, root: Path, s: dict, threads: int) -> None:
    """Figure 5: /ddpm DDIM against DDIMPipeline alone; the estimate for DDPM as trained."""
    alone_run = run_alone("cat", root / "models" / MODELS["cat"], s, threads, root / "cat-alone.png")
    c = client(app.url)
    page = page_run(c, dict(model=MODELS["cat"], scheduler="DDIM", steps=s["ddpm_steps"], seed=s["seed"],
                            batch_size=1), "/ddpm")
    c.close()
    per_step = seconds_a_step(page)
    ratio = per_step / alone_run["per_step"]
    figure(f"5. s/step in the page (/ddpm) / DDIMPipeline alone, ddpm-cat-256 shape ({s['cat']}), "
           f"{s['ddpm_steps']} DDIM steps", f"{ratio:.3f} ({per_step:.3f} s against {alone_run['per_step']:.3f} s)",
           f"<= {BOUNDS['step_ratio']}", ratio <= BOUNDS["step_ratio"])
    figure("5. the page's image / the pipeline's, same seed (max difference)",
           f"{max_difference(page['png'], root / 'cat-alone.png')}/255")
    found = estimate_as_trained(root, threads)
    measured = per_step * found.num_inference_steps
    error = found.seconds / measured - 1
    figure(f"5. 'DDPM as trained' estimate ({found.num_inference_steps} steps, by {found.measured_by}) / "
           "the page's s/step x steps", f"{found.seconds:.0f} s / {measured:.0f} s = {error:+.1%}",
           f"within {BOUNDS['estimate_error']:.0%}", abs(error) <= BOUNDS["estimate_error"])


def estimate_as_trained(root: Path, threads: int):
    """What the Unconditional tab says before a first run of DDPM as trained: the engine's estimate, a probe."""
    import torch

    from engine.sampling.unconditional import UnconditionalRequest
    from engine.workbench import Folders, Workbench

    torch.set_num_threads(threads)  # as the app's worker
    bench = Workbench(Folders(root / "models", root / "data", root / "engine-outputs"), device="cpu", worker=False)
    model = MODELS["cat"]
    request = UnconditionalRequest(model=model, scheduler="DDPM", num_inference_steps=bench.default_steps(model, "DDPM"))
    found = bench.estimate_unconditional(request)
    bench.registry.forget(model)
    return found


def measure_history(app: App, root: Path, s: dict) -> None:
    """Figure 6: two long runs of a model with SD's latent size through the page's Generate (where the scrubber's
    history is kept), every view streamed and scrubbed; then the same run through the engine, its history thinned
    as the page thins it."""
    server, worker = app.process.pid, worker_pid(app.process.pid)
    what = f"{s['history_steps']} steps, {s['history_size']} px, tiny UNet + 8x VAE"
    with browser_page(app.url) as page:
        set_up_history_run(page, s)
        click_and_wait(page, 2)  # loaded, and the page warm: the growth is the runs', not the model's
        with Watch({"server": server, "worker": worker}) as watch:
            labels = [scrub_through(page, click_and_wait(page, s["history_steps"])) for _ in range(2)]
    figure(f"6. history: the server's RSS growth over two runs, {what}", f"{watch.growth('server') / GIB:+.3f} GiB "
           f"(scrubber: {labels[-1]})", f"<= {BOUNDS['history_server_gib']} GiB",
           watch.growth("server") <= BOUNDS["history_server_gib"] * GIB)
    figure("6. history: the worker's RSS growth over those runs", f"{watch.growth('worker') / GIB:+.3f} GiB",
           f"<= {BOUNDS['history_worker_gib']} GiB", watch.growth("worker") <= BOUNDS["history_worker_gib"] * GIB)
    request = dict(model=MODELS["history"], prompt=PROMPT, steps=s["history_steps"], guidance_scale=s["guidance"],
                   seed=s["seed"], width=s["history_size"], height=s["history_size"])
    kept, steps, cap = history_kept(root, request)
    figure("6. history: bytes a run's history keeps (every view drawn, thinned as the page thins it)",
           f"{kept / 2**20:.1f} MiB ({steps})", f"<= a session's cap, {cap / 2**20:.0f} MiB", kept <= cap)


@contextlib.contextmanager
def browser_page(url: str):
    """A headless Chromium page on ``url`` (bench/page.py's flags)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        page = browser.new_page()
        page.set_default_timeout(600_000)  # a 150-step run's history, on a busy machine
        page.goto(url)
        try:
            yield page
        finally:
            browser.close()


def set_up_history_run(page, s: dict) -> None:
    """As a person does: the model typed in, its size shown, then the size, seed and the two extra views picked."""
    model = page.locator("#t2i-generate").locator("xpath=ancestor::div[contains(@class,'column')][1]") \
        .get_by_label("Model").first
    model.fill(MODELS["history"])
    model.press("Enter")
    page.wait_for_function("() => document.querySelector('#t2i-width input').value === '512'")  # the model's size
    for elem_id, value in (("t2i-width", s["history_size"]), ("t2i-height", s["history_size"]), ("t2i-seed", 1)):
        box = page.locator(f"#{elem_id} input").first
        box.fill(str(value))
        box.press("Enter")
    for side, view in (("left", "eps"), ("right", "guidance")):  # x0 and x_t come with every step anyway
        from engine.sampling.views import VIEWS

        page.locator(f"#t2i-view-{side} input").click()
        page.locator(f"#t2i-view-{side}").get_by_role("option", name=VIEWS[view], exact=True).click()


def click_and_wait(page, steps: int) -> int:
    """Set the steps, click Generate, wait for the final image and the history's previews; returns ``steps``."""
    box = page.locator("input[aria-label='number input for Steps']")
    box.fill(str(steps))
    box.press("Enter")
    page.locator("#t2i-generate").click()
    page.wait_for_function(f"() => document.querySelector('#t2i-progress').innerText.includes('Step {steps}/{steps}')"
                           " && document.querySelector('#t2i-progress').innerText.includes('done')")
    page.wait_for_function("() => { const s = document.querySelector('#t2i-scrub');"
                           " return s && s.offsetParent !== null && !s.innerText.includes('drawing'); }")
    return steps


def scrub_through(page, steps: int, stops: int = 12) -> str:
    """Scrub to ``stops`` places over the run (each shows two views of a step, drawn in the server); the
    scrubber's label, which says which steps it kept."""
    box = page.locator("#t2i-scrub input[data-testid='number-input']")
    for k in range(stops):
        before = page.locator("#t2i-progress").inner_text()
        box.fill(str(1 + k * (steps - 1) // (stops - 1)))
        box.press("Enter")
        try:  # the progress line names the step shown; the same step again changes nothing
            page.wait_for_function("before => document.querySelector('#t2i-progress').innerText !== before", arg=before,
                                   timeout=20_000)
        except Exception:  # noqa: BLE001  (playwright's TimeoutError: the same step as before)
            pass
    return page.locator("#t2i-scrub").inner_text().split("\n")[0]


def history_kept(root: Path, args: dict) -> tuple[int, str, int]:
    """(bytes a Text to image run's history keeps in the page, the steps it keeps, the cap): the run through the
    engine's worker (as the server gets it) with every view, each view of each step drawn (as scrubbing draws it),
    then thinned as the page thins a session's history."""
    from engine.events import Done
    from engine.sampling.txt2img import Txt2ImgRequest
    from engine.sampling.views import VIEWS, step_bytes, thin_history, view_array
    from engine.workbench import Folders, Workbench
    from ui.common import SCRUB_SESSION_BYTES

    bench = Workbench(Folders(root / "models", root / "data", root / "engine-outputs"), device="cpu")
    try:
        request = Txt2ImgRequest(model=args["model"], prompt=args["prompt"], num_inference_steps=args["steps"],
                                 guidance_scale=args["guidance_scale"], seed=args["seed"], width=args["width"],
                                 height=args["height"])
        done = next(e for e in bench.iter_txt2img(request, views=tuple(VIEWS)) if isinstance(e, Done))
    finally:
        bench.close()
    for step in done.steps:
        for name in VIEWS:
            view_array(step, name)
    kept, every = thin_history(done.steps, SCRUB_SESSION_BYTES)
    return sum(step_bytes(step) for step in kept), f"{len(kept)} of {len(done.steps)} steps, one in {every}", \
        SCRUB_SESSION_BYTES


# -- 7. the CPU's options ------------------------------------------------------------------------------------------
def measure_cpu_speed(s: dict, threads: int, tiny: bool) -> None:
    """The SD shape's it/s with each option against the plain pipeline, in this process (no app)."""
    import numpy as np
    import torch
    from diffusers import DDIMScheduler
    from diffusers.models.attention_processor import AttnProcessor

    from engine.testing.shapes import sd_pipeline

    torch.set_num_threads(threads)
    pipe = sd_pipeline(s["sd"])
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    unet = pipe.unet

    def run(steps: int = s["speed_steps"], decode: bool = True) -> tuple[float, np.ndarray | None]:
        """(it/s between the first step's end and the last's, the image as uint8 values or None)."""
        with step_ends(pipe) as ends:
            image = pipe(PROMPT, num_inference_steps=steps, guidance_scale=s["guidance"], width=s["size"],
                         height=s["size"], generator=torch.Generator("cpu").manual_seed(s["seed"]),
                         output_type="np" if decode else "latent").images[0]
        its = (len(ends) - 1) / (ends[-1] - ends[0]) if len(ends) > 1 else None
        return its, np.round(image * 255).astype(np.int16) if decode else None

    print(f"7. CPU options, SD 1.5 shape ({s['sd']}), {s['size']} px, {s['speed_steps']} DDIM steps, CFG "
          f"{s['guidance']:g}, {threads} torch thread(s); load average {load_average()}", flush=True)
    plain_before, reference = run()
    print(f"   plain pipeline: {plain_before:.4f} it/s (load average {load_average()})", flush=True)
    results = {}

    def measured(name: str, found: tuple) -> None:  # printed at once: a long run cut short keeps what it measured
        results[name] = found
        print(f"   {name}: {found[0]:.4f} it/s, {found[0] / plain_before:.3f}x the plain one before it; images differ "
              f"by {int(np.abs(found[1] - reference).max())}/255 (load average {load_average()})", flush=True)

    unet.to(memory_format=torch.channels_last)
    pipe.vae.to(memory_format=torch.channels_last)
    measured("channels_last (UNet and VAE)", run())
    unet.to(memory_format=torch.contiguous_format)
    pipe.vae.to(memory_format=torch.contiguous_format)
    own = unet.attn_processors
    unet.set_attn_processor(AttnProcessor())  # the classic attention: what SDPA replaced
    measured("classic attention (no SDPA)", run())
    unet.set_attn_processor(own)
    compiled = "not measured in --tiny (compiling takes minutes)"
    if not tiny:
        compiled = compile_figures(pipe, run, measured)
    pipe.unet = unet
    plain_after, _ = run(decode=False)
    plain = max(plain_before, plain_after)  # the faster of the two: a variant must beat the plain pipeline's best
    figure("7. plain pipeline (diffusers' SDPA attention), it/s", f"{plain_before:.4f} before, {plain_after:.4f} after "
           f"the variants (load average {load_average()})")
    for name, (its, image) in results.items():
        difference = int(np.abs(image - reference).max())
        figure(f"7. {name}: it/s / plain", f"{its / plain:.3f}x ({its:.4f} it/s; images differ by {difference}/255)")
    if compiled:
        figure("7. torch.compile (inductor): it/s / plain", compiled)
    worth = [name for name, (its, image) in results.items()
             if its / plain >= BOUNDS["speedup"] and int(np.abs(image - reference).max()) <= BOUNDS["parity"]]
    figure("7. options >= 1.15x the plain it/s with images within 2/255", ", ".join(worth) or "none")


def compile_figures(pipe, run, measured) -> str:
    """torch.compile (inductor) of the UNet, as the engine compiles it (its cache folder, the whole model): its
    first call's seconds printed, its run given to ``measured``; "" when it ran, else what went wrong."""
    import torch

    from engine.sampling.fast import compile_cache_dir

    compile_cache_dir()
    unet = pipe.unet
    try:
        pipe.unet = torch.compile(unet, fullgraph=True, dynamic=False)
        start = time.perf_counter()
        run(steps=1, decode=False)  # compiles (both halves of the guided batch go through one call)
        figure("7. torch.compile (inductor): the first call (compiling, then one step)",
               f"{time.perf_counter() - start:.0f} s (load average {load_average()})")
        measured("torch.compile (inductor)", run())
    except Exception as exc:  # a C++ compiler missing, an inductor bug: said, the other figures stand
        return f"failed: {type(exc).__name__}: {str(exc)[:200]}"
    finally:
        pipe.unet = unet
    return ""


# -- main -----------------------------------------------------------------------------------------------------------
GROUPS = ("sd", "models", "cat", "history", "cpu-speed")


def main() -> int:
    global CHECKED
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="the smallest models: every figure, no bound checked")
    parser.add_argument("--only", choices=GROUPS, action="append",
                        help="measure these groups only (default: all but cpu-speed; with --tiny, all)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (models, logs, images)")
    parser.add_argument("--models-from", type=Path, metavar="DIR",
                        help="the models folder of a kept run (--keep) of the same size, instead of saving them again")
    parser.add_argument("--alone", choices=("sd", "cat"), help=argparse.SUPPRESS)  # the plain pipeline's process
    for name, kind in (("model", str), ("size", int), ("steps", int), ("guidance", float), ("seed", int),
                       ("threads", int), ("out", str)):
        parser.add_argument(f"--{name}", type=kind, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.alone:
        alone(args)
        return 0
    CHECKED = not args.tiny
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.disable_progress_bar()  # this process's loads: the figures, not loading bars
    wanted = set(args.only or (GROUPS if args.tiny else GROUPS[:-1]))
    s = settings(args.tiny)
    from engine.models.devices import default_torch_threads, resolve_device

    threads = default_torch_threads(resolve_device("cpu"))
    print(f"real sizes{' (--tiny)' if args.tiny else ''}: {os.cpu_count()} cores, torch threads for sampling "
          f"{threads}, load average {load_average()}", flush=True)
    if wanted & {"sd", "models", "cat", "history"}:
        root = Path(tempfile.mkdtemp(prefix="bench-realsize-"))
        try:
            run_page_groups(root, s, threads, wanted, args.tiny, args.models_from)
        finally:
            if not args.keep:
                shutil.rmtree(root, ignore_errors=True)
            else:
                print(f"kept {root}")
    if "cpu-speed" in wanted:
        timed(measure_cpu_speed, s, threads, args.tiny)
    failed = [name for name, _, ok in RESULTS if not ok]
    print(f"load average at the end {load_average()}")
    print(json.dumps({"bounds": len(RESULTS), "missed": failed}))
    return 1 if failed else 0


def run_page_groups(root: Path, s: dict, threads: int, wanted: set, tiny: bool, models_from: Path | None) -> None:
    for name in ("models", "data", "outputs", "gradio"):
        (root / name).mkdir()
    start = time.perf_counter()
    sd_bytes = weight_bytes(s["sd"])
    extra = (BUDGET_FLAG, f"{1.5 * sd_bytes / 1e9:.3f}")  # one SD model fits, two do not
    # The app starts while the models are saved (it lists the models dir when asked); on a machine shared with other
    # busy work that can take minutes.
    launched: dict = {}
    launcher = threading.Thread(target=lambda: launched.update(app=App(root, extra, start_timeout=900)), daemon=True)
    launcher.start()
    if models_from is not None:  # a kept run's folders (--keep), hard-linked: saving SD 1.5 takes minutes here
        shutil.rmtree(root / "models")
        shutil.copytree(models_from, root / "models", copy_function=_link_or_copy)
    elif tiny:
        save_models(root / "models", s)
    else:  # an SD 1.5 pipeline is 4 GiB this process need not keep
        subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(ROOT)!r}); "
                        f"from bench.realsize import save_models, settings; from pathlib import Path; "
                        f"save_models(Path({str(root / 'models')!r}), settings({tiny}))"], check=True)
    print(f"models {'linked' if models_from else 'saved'} in {time.perf_counter() - start:.1f} s (SD shape: {sd_bytes / GIB:.2f} GiB of weights)",
          flush=True)
    launcher.join()
    if "app" not in launched:
        raise SystemExit(f"the app did not start; see {root / 'server.log'}")
    app = launched["app"]
    print(f"app at {app.url} (log {app.log_path}) with {' '.join(extra)}, up after {time.perf_counter() - start:.1f} s",
          flush=True)
    try:
        alone_run = None
        if wanted & {"sd", "models"}:
            alone_run = timed(measure_sd, app, root, s, threads)
        if "models" in wanted:
            timed(measure_models, app, s, alone_run)
        if "cat" in wanted:
            timed(measure_cat, app, root, s, threads)
        if "history" in wanted:
            timed(measure_history, app, root, s)
    finally:
        app.close()


def weight_bytes(shape: str) -> int:
    """Bytes of an SD pipeline's weights in ``shape`` (fp32), counted on the meta device: nothing allocated."""
    from engine.testing.shapes import sd_pipeline

    pipe = sd_pipeline(shape, device="meta")
    return sum(t.numel() * t.element_size() for m in (pipe.unet, pipe.vae, pipe.text_encoder)
               for t in (*m.parameters(), *m.buffers()))


def timed(measure, *args):
    """``measure(*args)``, then how long it took and the load average."""
    start = time.perf_counter()
    out = measure(*args)
    print(f"   ({measure.__name__} took {time.perf_counter() - start:.0f} s; load average {load_average()})", flush=True)
    return out


if __name__ == "__main__":
    sys.exit(main())
