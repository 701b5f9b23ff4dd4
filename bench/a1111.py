"""Benchmark: one small text-to-image request through AUTOMATIC1111's API (webuiapi) and through our /txt2img
(gradio_client), on one launched app, alternating, the same settings and seed; median wall seconds of each and their
ratio. Both end in the same engine call on the same device queue: the difference is the serving path.

    python bench/a1111.py               # digits-sd, 32x32, 10 steps, 7 requests each
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args()

    import webuiapi
    from gradio_client import Client

    import app
    from tests.conftest_app import free_port

    root = Path(tempfile.mkdtemp())
    os.environ["GRADIO_TEMP_DIR"] = str(root / "gradio")
    port = free_port()
    cli = app.parse_args(["--port", str(port), "--models-dir", str(root / "models"), "--data-dir",
                          str(root / "data"), "--outputs-dir", str(root / "outputs"), "--device", "cpu"])
    demo, bench = app.build_app(cli)
    _, url, _ = app.launch(demo, cli, prevent_thread_lock=True, quiet=True)
    api, client = webuiapi.WebUIApi(port=port), Client(url, verbose=False)
    a1111 = dict(prompt="a handwritten digit seven", steps=args.steps, cfg_scale=7.5, sampler_name="DPM++ 2M",
                 scheduler="Karras", seed=3, width=args.size, height=args.size)
    ours = dict(model="digits-sd", prompt="a handwritten digit seven", negative_prompt="", steps=args.steps,
                guidance_scale=7.5, scheduler="DPM++ 2M Karras", seed=3, width=args.size, height=args.size)
    times = {"A1111 /sdapi/v1/txt2img (webuiapi)": [], "/txt2img (gradio_client)": []}
    calls = {"A1111 /sdapi/v1/txt2img (webuiapi)": lambda: api.txt2img(**a1111),
             "/txt2img (gradio_client)": lambda: client.predict(**ours, api_name="/txt2img")}
    try:
        for call in calls.values():  # warm: the model loaded, the first requests' set-up paid
            call()
        for _ in range(args.repeats):
            for name, call in calls.items():
                start = time.perf_counter()
                call()
                times[name].append(time.perf_counter() - start)
    finally:
        client.close()
        demo.close()
        bench.close()
    medians = {name: statistics.median(t) for name, t in times.items()}
    for name, m in medians.items():
        print(f"{name}: median {m:.3f} s over {args.repeats} (min {min(times[name]):.3f}, max {max(times[name]):.3f})")
    a, b = medians.values()
    print(f"ratio A1111 / ours: {a / b:.2f}")


if __name__ == "__main__":
    main()
