"""Run an event generator in a worker thread and hand the consumer the newest step.

The producer (a denoising or training loop) never waits for the consumer: step
events overwrite each other in a one-slot mailbox (stale frames are dropped),
while every other event (Started, Done, ...) is queued and delivered in order.
The last step before a non-step event is always delivered. Closing the consumer
cancels the run and returns at once: it never waits for the worker, because Gradio
closes a stopped generator on its event-loop thread, where waiting would stall every
request of every user for up to a step. The worker ends at its next cancel check;
whoever must not overlap with it (the device) is guarded by a lock the run itself
holds until it has really stopped (see :meth:`engine.workbench.Workbench.iter_txt2img`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Callable, Iterator

from engine.cancel import CancelToken
from engine.events import Step

log = logging.getLogger(__name__)

_FINISHED = object()


def stream_latest(
    make_events: Callable[[CancelToken], Iterator[object]],
    *,
    cancel: CancelToken | None = None,
    min_interval: float = 0.1,
    step_types: tuple[type, ...] = (Step,),
) -> Iterator[object]:
    """Yield events of ``make_events(cancel)``, at most one step per ``min_interval`` seconds."""
    cancel = cancel or CancelToken()
    cond = threading.Condition()
    latest: list[object] = []  # zero or one pending step event
    queue: deque[object] = deque()
    error: list[BaseException] = []

    def produce() -> None:
        try:
            for event in make_events(cancel):
                with cond:
                    if isinstance(event, step_types):
                        latest[:] = [event]
                    else:
                        queue.extend(latest)
                        latest.clear()
                        queue.append(event)
                    cond.notify()
        except BaseException as exc:  # handed to the consumer below
            error.append(exc)
        finally:
            with cond:
                queue.extend(latest)
                latest.clear()
                queue.append(_FINISHED)
                cond.notify()

    worker = threading.Thread(target=produce, name="workbench-run", daemon=True)
    worker.start()
    last_yield = 0.0
    try:
        while True:
            with cond:
                while True:
                    if queue:
                        event = queue.popleft()
                        break
                    wait = min_interval - (time.monotonic() - last_yield)
                    if latest and wait <= 0:
                        event = latest.pop()
                        break
                    cond.wait(timeout=wait if latest else None)
            if event is _FINISHED:
                if error:
                    raise error[0]
                return
            if isinstance(event, step_types):
                last_yield = time.monotonic()
            yield event
    finally:
        cancel.cancel()  # no join: see the module docstring
