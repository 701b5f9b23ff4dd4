"""Benchmark: History with 10,000 small PNGs in the outputs dir: time to its first page.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/history.py            # 10,000 images, engine and API
    HF_HUB_OFFLINE=1 .venv/bin/python bench/history.py --images 2000 --no-api

Writes the images once into a temporary outputs dir (32 px, each with A1111's ``parameters`` and a run record, as
the loops save them, spread over 20 day folders of two tabs), then prints, each the median of --repeat tries:

- the first page as the page asks for it, by a fresh ``ImageHistory`` (nothing cached: the folders listed, the
  page's 48 images' metadata read and their thumbnails resolved), then again with its cache warm;
- a prompt search over every image (every PNG's text chunks read once), cold and warm;
- ``/history`` through gradio_client against the launched app (its first call after the launch, then warm).

Goal: the first page in under 1 s on the 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from PIL import Image, PngImagePlugin  # noqa: E402

from engine.records.history import HistoryQuery, ImageHistory  # noqa: E402
from engine.records.outputs import a1111_parameters  # noqa: E402

GOAL_SECONDS = 1.0
DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def write_images(outputs: Path, count: int) -> None:
    """``count`` 32 px PNGs with parameters and a run record, in kind/day folders, numbered as the loops number."""
    record = {"format": "diffusion-workbench-run", "version": 1, "kind": "txt2img", "model": {"name": "digits-sd"},
              "environment": {}, "noise_sha256": "0" * 64, "images_sha256": ["0" * 64]}
    image = Image.new("RGB", (32, 32), (40, 40, 40))
    for i in range(count):
        kind = "txt2img" if i % 4 else "unconditional"
        prompt = f"a handwritten digit {DIGITS[i % 10]}" if kind == "txt2img" else ""
        info = {"prompt": prompt, "steps": 25, "scheduler": "DPM++ 2M Karras", "guidance_scale": 7.5, "seed": i,
                "width": 32, "height": 32, "model": "digits-sd" if kind == "txt2img" else "digits-ddpm"}
        meta = PngImagePlugin.PngInfo()
        meta.add_text("parameters", a1111_parameters(info))
        request = {**info, "num_inference_steps": info.pop("steps"), "negative_prompt": ""}
        meta.add_text("workbench", json.dumps({**record, "kind": kind, "request": request}))
        folder = outputs / kind / f"2026-01-{1 + i % 20:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{i:05d}-{i}.png"
        image.save(path, format="PNG", pnginfo=meta)
        os.utime(path, (1_760_000_000 + i, 1_760_000_000 + i))
    for folder in [*outputs.glob("*/*"), *outputs.glob("*"), outputs]:  # past days' folders, as they would be
        os.utime(folder, (1_760_000_000 + count, 1_760_000_000 + count))


def timed(work, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def first_page(history: ImageHistory, query: HistoryQuery = HistoryQuery()) -> int:
    """What the page does to show a page: list, read the page's metadata, resolve its thumbnails."""
    page = history.page(query)
    for entry in page.entries:
        history.thumbnail(entry.path)
    return len(page.entries)


def api_figures(outputs: Path, repeat: int) -> tuple[float, float]:
    """(first /history call after the launch, median of the next ones), through gradio_client."""
    import app
    from gradio_client import Client

    from tests.conftest_app import free_port

    root = outputs.parent
    args = app.parse_args(["--port", str(free_port()), "--models-dir", str(root / "models"), "--data-dir",
                           str(root / "data"), "--outputs-dir", str(outputs), "--device", "cpu"])
    demo, bench = app.build_app(args)
    bench.worker.wait_ready()  # its torch import would share the cores with the first call
    _, url, _ = app.launch(demo, args, prevent_thread_lock=True, quiet=True)
    client = Client(url, verbose=False)
    try:
        start = time.perf_counter()
        client.predict(api_name="/history")
        first = time.perf_counter() - start
        warm = timed(lambda: client.predict(api_name="/history"), repeat)
    finally:
        client.close()
        demo.close()
        bench.close()
    return first, warm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--no-api", action="store_true", help="the engine's figures only (no app launched)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-history-"))
    outputs = root / "outputs"
    try:
        start = time.perf_counter()
        write_images(outputs, args.images)
        print(f"wrote {args.images} PNGs in {time.perf_counter() - start:.1f} s")
        cold = timed(lambda: first_page(ImageHistory(outputs)), args.repeat)
        warm_history = ImageHistory(outputs)
        first_page(warm_history)
        warm = timed(lambda: first_page(warm_history), args.repeat)
        search = HistoryQuery(search="seven")
        cold_search = timed(lambda: ImageHistory(outputs).page(search), max(1, args.repeat // 2))
        warm_search = timed(lambda: warm_history.page(search), args.repeat)
        found = warm_history.page(search).total
        print(f"first page, nothing cached:   {cold:.3f} s   (goal < {GOAL_SECONDS:g} s: "
              f"{'met' if cold < GOAL_SECONDS else 'NOT met'})")
        print(f"first page, cache warm:       {warm:.3f} s")
        print(f"search 'seven', cold:         {cold_search:.3f} s   ({found} of {args.images} match)")
        print(f"search 'seven', cache warm:   {warm_search:.3f} s")
        if not args.no_api:
            first, api_warm = api_figures(outputs, args.repeat)
            print(f"/history after launch:        {first:.3f} s   (gradio_client, JSON)")
            print(f"/history, warm:               {api_warm:.3f} s")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
