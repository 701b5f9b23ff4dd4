"""Soak: many small /txt2img requests against a launched app, and whether the server holds steady meanwhile.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/soak.py                       # 200 requests, a line every 20
    HF_HUB_OFFLINE=1 .venv/bin/python bench/soak.py --requests 40 --every 10 --cache-files 60

Launches the app (a subprocess, as `make run` does; bench/page.py's launcher) on temporary folders, sends
``--requests`` small requests (digits-sd, 4 DDIM steps, 32 px, a new seed each, so every preview is a new file),
one after another through gradio_client, and every ``--every`` requests prints:
- how many files the runs' updates sent so far (each a file Gradio wrote to the cache);
- the resident memory (RSS) of the server and of its sampling worker (psutil, else /proc/<pid>/status);
- the number of files in the page's cache folder (--temp-dir) once the app's cache bound has had its say
  (it prunes every few seconds; the wait is printed), and the hash folders Gradio made there (emptied ones go
  after a minute). The widgets' first values (the Noise tab's strip, there before any request) are kept.
Exits 1 when the cache ends above --cache-files (plus those first values) or a process's memory grew more than
--max-growth-mib between the first and the last sample.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.page import App, client  # noqa: E402  (after the path)

REQUEST = dict(model="digits-sd", prompt="a handwritten digit seven", negative_prompt="", steps=4, guidance_scale=7.5,
               scheduler="DDIM", width=32, height=32)
PRUNE_WAIT = 15.0  # seconds to wait for the cache bound at a sample (the app prunes every 5 s)


def rss_mib(pid: int) -> float:
    """Resident memory of process ``pid`` in MiB."""
    try:
        import psutil

        return psutil.Process(pid).memory_info().rss / 2**20
    except ImportError:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise


def worker_pid(server_pid: int) -> int:
    """The server's sampling worker: its child started by multiprocessing's spawn (not the resource tracker)."""
    for pid in Path(f"/proc/{server_pid}/task").glob("*/children"):
        for child in pid.read_text().split():
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if "spawn_main" in cmdline and "resource_tracker" not in cmdline:
                return int(child)
    raise RuntimeError(f"no sampling worker under server {server_pid}")


def cache_counts(folder: Path) -> tuple[int, int]:
    """(files, folders) under the page's cache ``folder``."""
    files = folders = 0
    for _, dirs, names in os.walk(folder):
        files += len(names)
        folders += len(dirs)
    return files, folders


def settled_count(folder: Path, bound: int) -> tuple[int, int, float]:
    """The cache's (files, folders) once at most ``bound`` files remain or ``PRUNE_WAIT`` passed; the wait."""
    start = time.perf_counter()
    while True:
        files, folders = cache_counts(folder)
        if files <= bound or time.perf_counter() - start > PRUNE_WAIT:
            return files, folders, time.perf_counter() - start
        time.sleep(0.2)


def soak(app: App, requests: int, every: int, bound: int, report=print) -> list[dict]:
    """Send the requests, sampling after every ``every``; returns one dict a sample."""
    cache = app.root / "gradio"
    worker = worker_pid(app.process.pid)
    c = client(app.url)
    first_values = cache_counts(cache)[0]  # the widgets' first values (the Noise tab's strip): kept for new pages
    report(json.dumps({"requests": 0, "server_mib": round(rss_mib(app.process.pid), 1),
                       "worker_mib": round(rss_mib(worker), 1), "cache_files": first_values}))
    rows, made = [], set()
    for n in range(1, requests + 1):
        job = c.submit(**REQUEST, seed=n, api_name="/txt2img")
        job.result()
        made.update(sent_files(job.outputs()))
        if n % every == 0:
            files, folders, waited = settled_count(cache, bound + first_values)
            row = {"requests": n, "server_mib": round(rss_mib(app.process.pid), 1),
                   "worker_mib": round(rss_mib(worker), 1), "cache_files": files, "cache_folders": folders,
                   "first_values": first_values, "files_sent": len(made), "waited_s": round(waited, 1)}
            rows.append(row)
            report(json.dumps(row))
    c.close()
    return rows


def sent_files(outputs: list) -> set[str]:
    """The cache files a run's updates pointed the client at (its previews and its final image)."""
    found = set()
    for update in outputs:
        for value in update[:2]:  # the x0 (then final) image and the x_t image
            if isinstance(value, dict) and value.get("path"):
                found.add(value["path"])
    return found


def launch(root: Path, cache_files: int) -> App:
    for name in ("models", "data", "outputs", "gradio"):
        (root / name).mkdir(exist_ok=True)
    return App(root, ("--temp-dir", str(root / "gradio"), "--cache-files", str(cache_files)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--every", type=int, default=20)
    parser.add_argument("--cache-files", type=int, default=500, help="the app's --cache-files (its default: 500)")
    parser.add_argument("--max-growth-mib", type=float, default=64.0,
                        help="bound on each process's RSS growth after the first sample")
    args = parser.parse_args()
    app = launch(Path(tempfile.mkdtemp(prefix="bench-soak-")), args.cache_files)
    try:
        print(f"app at {app.url} (log {app.log_path}); server pid {app.process.pid}")
        rows = soak(app, args.requests, args.every, args.cache_files)
    finally:
        app.close()
    growth = {k: rows[-1][k] - rows[0][k] for k in ("server_mib", "worker_mib")}
    ok = rows[-1]["cache_files"] <= args.cache_files + rows[-1]["first_values"]
    ok = ok and max(growth.values()) <= args.max_growth_mib
    print(json.dumps({"rss_growth_mib_after_first_sample": growth, "cache_files_last": rows[-1]["cache_files"],
                      "ok": ok}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
