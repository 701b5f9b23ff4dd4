"""Server memory over many page sessions: each opens the page in a new browser context, clicks Generate once on Text to
image, waits for the run's last update (its history drawn), and closes.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/sessions.py                 # 20 sessions, 256 px, 25 steps
    HF_HUB_OFFLINE=1 .venv/bin/python bench/sessions.py --sessions 60 --size 256

Launches the app (bench/page.py's launcher) on temporary folders and drives headless Chromium (Playwright). Prints the
server's resident memory (RSS) before the first session and after every ``--every`` sessions, and the growth per
session over the second half (the first runs warm the server up). What a page keeps for scrubbing is bounded per
session and in total (ui/common.py ``SessionRuns``), so after a few sessions the server should stay flat.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.page import App  # noqa: E402  (after the path)
from bench.soak import rss_mib  # noqa: E402

IDLE = ("() => { const p = document.querySelector('#t2i-progress'); const s = document.querySelector('#t2i-scrub');"
        " return p && p.innerText.includes('done') && (!s || !s.innerText.includes('drawing')); }")


def set_number(page, elem_id: str, value: int) -> None:
    box = page.locator(f"#{elem_id} input[type='number']").first
    box.fill(str(value))
    box.press("Enter")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--size", type=int, default=256, help="width and height in pixels (digits-sd: a multiple of 8)")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--every", type=int, default=5)
    args = parser.parse_args(argv)
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name in ("models", "data", "outputs"):
            (root / name).mkdir()
        app = App(root)
        samples = []
        try:
            pid = app.process.pid
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=[
                    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--no-first-run"])
                samples.append((0, rss_mib(pid)))
                print(f"before: server {samples[-1][1]:.0f} MiB", flush=True)
                for i in range(1, args.sessions + 1):
                    context = browser.new_context()
                    page = context.new_page()
                    page.goto(app.url)
                    page.locator("#t2i-prompt textarea").fill("a handwritten digit seven")
                    set_number(page, "t2i-steps", args.steps)
                    set_number(page, "t2i-width", args.size)
                    set_number(page, "t2i-height", args.size)
                    page.locator("#t2i-generate").click()
                    page.wait_for_function("() => !document.querySelector('#t2i-progress').innerText.includes('idle')"
                                           " && !document.querySelector('#t2i-progress').innerText.includes('done')",
                                           timeout=120_000)
                    page.wait_for_function(IDLE, timeout=600_000)
                    context.close()
                    if i % args.every == 0 or i == args.sessions:
                        samples.append((i, rss_mib(pid)))
                        print(f"after {i} sessions: server {samples[-1][1]:.0f} MiB", flush=True)
                browser.close()
        finally:
            app.close()
    half = [s for s in samples if s[0] >= args.sessions // 2]
    if len(half) >= 2:
        per = (half[-1][1] - half[0][1]) / max(half[-1][0] - half[0][0], 1)
        print(f"growth over sessions {half[0][0]}-{half[-1][0]}: {per:+.1f} MiB a session "
              f"({args.size} px, {args.steps} steps)")


if __name__ == "__main__":
    main()
