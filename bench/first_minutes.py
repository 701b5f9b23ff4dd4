"""A newcomer's first minutes: each tab's defaults, timed from the click to something a person can read.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/first_minutes.py

Launches the app (as `make run` does, on temporary folders) and, for each tab with its page defaults:
- Text to image (digits-sd, "a handwritten digit seven"): seconds from submit to the first x0 preview the
  project's digit classifier reads as a confident 7, and to the final image;
- Unconditional (digits-ddpm): to the first preview the classifier reads as a confident digit, and to the final image;
- Noise: to the strip and the curves;
- Training: to the first sample grid, and the share of its tiles the classifier reads as confident digits.
Also the first start: seconds from launching the app to the page answering, and the first run's extra time.
Each figure is printed with the machine's load average (1, 5 and 15 minutes) and its cores when it was taken: the
same run is 2-4x slower on a shared, loaded machine than on a quiet one.
"""

from __future__ import annotations

import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.page import App, client  # noqa: E402


def say(text: str) -> None:
    """Print a figure with the load it was measured under."""
    import os

    one, five, fifteen = os.getloadavg()
    print(f"{text}  [load average {one:.1f} / {five:.1f} / {fifteen:.1f} on {os.cpu_count()} cores]", flush=True)


def pixels(output):
    """The grey pixels of an image output (a URL or a {"url": ...}), or None."""
    import httpx
    import numpy as np
    from PIL import Image

    url = output.get("url") if isinstance(output, dict) else output  # an update of the label has none
    if not url:
        return None
    return np.asarray(Image.open(io.BytesIO(httpx.get(url, timeout=30).content)).convert("L"))


def readable(image, digit: int | None) -> bool:
    """The classifier reads ``image`` as a confident ``digit`` (any digit when None)."""
    from engine.builtin.digits import classifier

    if image is None or image.shape[0] % 8 or image.shape[1] % 8:
        return False
    scores = classifier().score(image[None])
    return bool(scores.confident[0]) and (digit is None or int(scores.labels[0]) == digit)


def time_stream(c, api: str, digit: int | None, **args) -> tuple[float | None, float]:
    """(seconds to the first readable x0 preview or None, seconds to the final image)."""
    start = time.perf_counter()
    job = c.submit(**args, api_name=api)
    first = None
    for update in job:
        if first is None and "Step" in str(update[2]) and "done" not in str(update[2]):
            if readable(pixels(update[0]), digit):
                first = time.perf_counter() - start
    pixels(job.outputs()[-1][0])
    return first, time.perf_counter() - start


def main() -> int:
    root = Path(tempfile.mkdtemp(prefix="bench-first-"))
    for name in ("models", "data", "outputs", "gradio"):
        (root / name).mkdir()
    started = time.perf_counter()
    app = App(root)
    say(f"app answering {time.perf_counter() - started:.1f} s after launch")
    c = client(app.url)
    try:
        info = c.view_api(print_info=False, return_format="dict")["named_endpoints"]
        defaults = {api: {p["parameter_name"]: p["parameter_default"] for p in info[api]["parameters"]
                          if p["parameter_has_default"]} for api in ("/txt2img", "/ddpm")}
        # The page's defaults (the endpoint's required parameters have none yet: see the history issue).
        txt2img = dict(defaults["/txt2img"], model="digits-sd", prompt="a handwritten digit seven",
                       negative_prompt="", steps=25, guidance_scale=7.5, scheduler="DPM++ 2M Karras", seed=-1,
                       width=32, height=32)
        runs = [time_stream(c, "/txt2img", 7, **txt2img) for _ in range(4)]
        say(f"text to image, first run: first readable preview {runs[0][0]} s, final {runs[0][1]:.2f} s")
        later = runs[1:]
        firsts = [r[0] for r in later if r[0] is not None]
        say(f"text to image, later runs: first readable preview "
              f"{statistics.median(firsts) if firsts else None} s ({len(firsts)} of {len(later)} runs had one), "
              f"final {statistics.median(r[1] for r in later):.2f} s")
        ddpm = dict(defaults["/ddpm"], model="digits-ddpm", seed=-1)
        runs = [time_stream(c, "/ddpm", None, **ddpm) for _ in range(3)]
        firsts = [r[0] for r in runs if r[0] is not None]
        say(f"unconditional ({ddpm.get('scheduler')}, {ddpm.get('steps')} steps): first readable preview "
              f"{statistics.median(firsts) if firsts else None} s, final {statistics.median(r[1] for r in runs):.2f} s")
        start = time.perf_counter()
        c.predict(image=None, timesteps="0, 50, 100, 200, 400, 600, 800, 999", beta_schedule="linear",
                  num_train_timesteps=1000, seed=0, api_name="/add_noise")
        say(f"noise: strip and curves {time.perf_counter() - start:.2f} s")
        train = {p["parameter_name"]: p["parameter_default"] for p in info["/train_start"]["parameters"]
                 if p["parameter_has_default"]}
        train.update(run_name="first-minutes")
        start = time.perf_counter()
        c.predict(**train, api_name="/train_start")
        grid = None
        while time.perf_counter() - start < 600:
            status, grid = c.predict(api_name="/train_status")
            if grid:
                break
            time.sleep(1.0)
        seconds = time.perf_counter() - start
        if grid:
            image = pixels(grid)
            say(f"training (defaults): first sample grid after {seconds:.0f} s, step {status['grid_step']}, "
                  f"grid {image.shape[1]}x{image.shape[0]} px")
        else:
            say("training (defaults): no sample grid within 10 minutes")
        c.predict(api_name="/train_stop")
    finally:
        c.close()
        app.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
