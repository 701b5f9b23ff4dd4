"""stream_latest: stale steps dropped, others in order, the last step kept, close cancels."""

import threading
import time

import pytest

from engine.cancel import check
from engine.errors import Cancelled, InputError
from engine.events import Done, Started, Step
from engine.streaming import stream_latest
from tests.helpers import wait_until


def step(i, total):
    return Step(step=i, total=total, timestep=float(total - i), preview_xt=None, preview_x0=None, elapsed=0.0)


def fast_events(total):
    def make(cancel):
        yield Started(total=total, timesteps=tuple(range(total)))
        for i in range(1, total + 1):
            check(cancel, i)
            yield step(i, total)
        yield Done(images=(), info={})
    return make


def test_drops_stale_steps_but_keeps_order_and_last_step():
    events = list(stream_latest(fast_events(500), min_interval=0.05))
    assert isinstance(events[0], Started) and isinstance(events[-1], Done)
    steps = [e.step for e in events if isinstance(e, Step)]
    assert steps == sorted(steps) and steps[-1] == 500
    assert len(steps) < 100  # a fast loop does not flood the consumer


def test_slow_producer_delivers_every_step():
    """A producer slower than its consumer loses no step: each step is made only once the consumer has taken the
    one before (an event, not a sleep that hopes the consumer keeps up)."""
    taken = threading.Semaphore(0)

    def make(cancel):
        for i in range(1, 6):
            if i > 1:
                assert taken.acquire(timeout=30), f"step {i - 1} was never taken"
            yield step(i, 5)

    got = []
    for event in stream_latest(make, min_interval=0.0):
        got.append(event.step)
        taken.release()
    assert got == [1, 2, 3, 4, 5]


def test_closing_the_consumer_cancels_the_run_within_a_step():
    stopped_at = []

    def make(cancel):
        try:
            for i in range(1, 10_000):
                check(cancel, i)
                time.sleep(0.01)
                yield step(i, 10_000)
        except Cancelled:
            stopped_at.append(i)
            raise

    stream = stream_latest(make, min_interval=0.0)
    for event in stream:
        if event.step >= 3:
            break
    stream.close()
    wait_until(lambda: not [t for t in threading.enumerate() if t.name == "workbench-run"], timeout=30,
               what="the run's thread ended")
    assert stopped_at and stopped_at[0] < 20


def test_close_returns_at_once_and_the_run_keeps_its_lock_until_it_stops():
    """Gradio closes a stopped generator on its event loop: close must not wait for a slow step,
    and a run guarded by a lock holds it until its loop has really ended, so the next waits."""
    device = threading.Lock()
    log = []

    def make(name, gate=None):
        def events(cancel):
            with device:
                log.append(f"{name} start")
                try:
                    for i in range(1, 100):
                        check(cancel, i)
                        if gate is not None and i > 1:
                            gate.wait(30)  # a slow step: it ends when the test lets it (or after 30 s)
                        yield step(i, 100)
                finally:
                    log.append(f"{name} end")
        return events

    gate = threading.Event()
    first = stream_latest(make("first", gate), min_interval=0.0)
    next(first)  # step 1; the loop is inside step 2 now, held by the gate
    first.close()
    assert log == ["first start"]  # close returned with the step still under way: it did not wait for it
    gate.set()
    second = stream_latest(make("second"), min_interval=0.0)
    next(second)
    second.close()
    assert log[:3] == ["first start", "first end", "second start"]


def test_errors_reach_the_consumer():
    def make(cancel):
        yield step(1, 2)
        raise InputError("bad thing")
    with pytest.raises(InputError, match="bad thing"):
        list(stream_latest(make))
