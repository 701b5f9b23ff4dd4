"""Stop, five times in a row, on slow steps (256 px on the 32 px built-in: most of a second a step): each cancel
answers at once, the server answers GET / and its API info quickly all the while, and no two runs ever hold the
device at the same time."""

import time

from bench.page import RouteSampler, p99
from tests.helpers import wait_for_outputs

SLOW = dict(model="digits-sd", prompt="a handwritten digit seven", negative_prompt="", steps=150, guidance_scale=7.5,
            scheduler="DDIM", seed=5, width=256, height=256)
QUICK = dict(SLOW, steps=2, width=32, height=32)
CANCEL_S = 1.0  # bench/page.py holds a quiet machine to 0.5 s
P99_S = 0.25  # of GET / and /gradio_api/info, sampled every 100 ms from another process; bench/page.py: 0.1 s


def test_five_stops_in_a_row_answer_at_once_and_runs_never_overlap(client, running_app):
    url, bench = running_app[0], running_app[1]
    first = len(bench.recent_runs())
    cancels, answers = [], []
    for _ in range(5):
        job = client.submit(**SLOW, api_name="/txt2img")
        assert len(wait_for_outputs(job, 2)) >= 2, "no preview arrived"
        sampler = RouteSampler(url, 120)  # a process of its own, as a browser is
        time.sleep(0.3)  # sampling before the cancel too
        start = time.perf_counter()
        job.cancel()
        cancels.append(time.perf_counter() - start)
        assert "done" in client.predict(**QUICK, api_name="/txt2img")[2]  # the next run starts and ends
        answers += sampler.times()
        assert "done" not in str(job.outputs()[-1][2])
    runs = bench.recent_runs()[first:]
    assert [r.outcome for r in runs] == ["stopped", "done"] * 5
    for earlier, later in zip(runs, runs[1:]):
        assert earlier.ended <= later.started  # one run on the device at a time
    assert max(cancels) < CANCEL_S, cancels
    assert len(answers) >= 20 and p99(answers) < P99_S, sorted(answers)[-5:]
