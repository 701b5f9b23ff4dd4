"""What a page keeps for scrubbing is bounded: every k-th step past a session's bytes (the scrubber says which), the
sessions that ran longest ago let go past a total, and a session's last run freed when a newer one replaces it."""

import gc
import weakref

import numpy as np

from engine.events import Preview, Step
from ui.common import SessionRuns
from ui.txt2img import _scrubber

MiB = 2**20


def steps(n: int, size: int = MiB) -> tuple[Step, ...]:
    """``n`` steps whose previews hold ``size`` bytes each (x0 and x_t half each), as the worker sends them."""
    def preview():
        return Preview(np.zeros(size // 2, np.uint8), lambda a: a)

    return tuple(Step(step=i + 1, total=n, timestep=float(n - i), preview_xt=preview(), preview_x0=preview(),
                      elapsed=0.0) for i in range(n))


def test_a_long_run_keeps_every_kth_step_within_the_session_s_bytes_and_the_scrubber_says_so():
    runs = SessionRuns(session_bytes=20 * MiB, total_bytes=100 * MiB)
    run = runs.begin("a")
    kept = runs.keep_history(run, steps(150), "final.png")
    assert kept["kept"] * MiB <= 20 * MiB and kept["of"] == 150 and kept["every"] == 8
    history = runs.history("a", kept)
    assert [s.step for s in history["steps"]] == list(range(6, 151, 8))  # counted back from the last, kept always
    assert history["final"] == "final.png" and run["steps"] == []  # the streamed steps are let go
    slider = _scrubber(kept)
    assert (slider["minimum"], slider["maximum"], slider["step"]) == (6, 150, 8)
    assert slider["label"] == ("Scrub through the steps (19 of 150 kept, one in 8, to bound the server's memory; "
                               "the last is the final image)")
    short = runs.keep_history(runs.begin("b"), steps(10), None)
    assert (short["kept"], short["every"]) == (10, 1)
    assert _scrubber(short)["label"] == "Scrub through the steps (the last is the final image)"


def test_past_the_total_the_sessions_that_ran_longest_ago_let_their_history_go():
    runs = SessionRuns(session_bytes=20 * MiB, total_bytes=50 * MiB)
    kept = {name: runs.keep_history(runs.begin(name), steps(20), None) for name in "abcd"}
    assert [name for name in "abcd" if runs.history(name, kept[name]) is not None] == ["c", "d"]
    assert runs.history("d", {**kept["d"], "run": kept["c"]["run"]}) is None  # a page showing an older run


def test_a_session_s_new_run_frees_its_last_run_s_history():
    runs = SessionRuns()
    first = steps(5)
    gone = weakref.ref(first[-1])
    runs.keep_history(runs.begin("a"), first, None)
    del first
    runs.begin("a")
    gc.collect()
    assert gone() is None
