"""Stop, five times in a row, on slow steps (128 px on the 32 px built-in: 16 times its latents a step): each
stopped run ends stopped, the next run starts and ends, and no two runs ever hold the device at the same time. The
app runs in a process of its own, as `make run` starts it: the test's client (which parses every streamed update)
does not share the server's interpreter. How fast a Stop answers, and how fast the server answers other routes
meanwhile, are timing bounds: `bench/page.py` holds them (Stop under 0.5 s, p99 of the routes under 100 ms), not
this test, which a loaded machine would fail for no fault of the code."""

import pytest

from bench.page import App, client
from tests.helpers import wait_for_outputs

SLOW = dict(model="digits-sd", prompt="a handwritten digit seven", negative_prompt="", steps=150, guidance_scale=7.5,
            scheduler="DDIM", seed=5, width=128, height=128)
QUICK = dict(SLOW, steps=2, width=32, height=32)


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    root = tmp_path_factory.mktemp("cancel")
    for name in ("models", "data", "outputs", "gradio"):
        (root / name).mkdir()
    launched = App(root)
    yield launched
    launched.close()


def test_five_stops_in_a_row_stop_their_runs_and_runs_never_overlap(app):
    c = client(app.url)
    c.predict(**QUICK, api_name="/txt2img")  # the model loaded
    for _ in range(5):
        job = c.submit(**SLOW, api_name="/txt2img")
        assert len(wait_for_outputs(job, 2)) >= 2, "no preview arrived"  # under way: a Stop mid-run
        job.cancel()
        assert "done" in c.predict(**QUICK, api_name="/txt2img")[2]  # the next run starts and ends
        assert "done" not in str(job.outputs()[-1][2])
    c.close()
    # The worker's own record of its runs (its log): each began after the one before it had ended.
    runs = {}
    for line in app.runs():
        runs.setdefault(line["run"], {})[line["what"]] = line
    spans = [(r["started"]["at"], r["ended"]["at"], r["ended"]["how"]) for _, r in sorted(runs.items())]
    assert [how.split(":")[0] for _, _, how in spans] == ["done"] + ["stopped", "done"] * 5
    for (_, ended, _), (started, _, _) in zip(spans, spans[1:]):
        assert ended <= started  # one run on the device at a time
