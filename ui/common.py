"""What every tab shares: error reporting, streaming with stop, the progress line."""

from __future__ import annotations

import asyncio
import functools
import html
import inspect
import logging
import threading
from collections import OrderedDict
from typing import AsyncIterator, Callable, Iterator

import gradio as gr

from engine.cancel import CancelToken
from engine.errors import InputError, ModelLoadError, WorkbenchError
from engine.streaming import stream_latest

log = logging.getLogger(__name__)

DEVICE_QUEUE = "device"  # one concurrency group for all model work: tabs queue, never fight
PREVIEW_INTERVAL = 0.1  # seconds between preview frames: about 10 a second, the browser keeps up


def friendly_errors(fn: Callable) -> Callable:
    """Show the project's errors as a message in the page; log anything else in full."""

    def convert(exc: BaseException):
        if isinstance(exc, gr.Error):
            return exc
        if isinstance(exc, WorkbenchError):
            return gr.Error(str(exc), print_exception=False)
        log.exception("unexpected error in %s", fn.__name__)
        return gr.Error(f"Internal error ({type(exc).__name__}); the server log has the details.",
                        print_exception=False)

    if inspect.isasyncgenfunction(fn):
        @functools.wraps(fn)
        async def async_gen_wrapper(*args, **kwargs):
            try:
                async for item in fn(*args, **kwargs):
                    yield item
            except Exception as exc:  # Stop's CancelledError and GeneratorExit are no Exceptions: they pass
                raise convert(exc) from exc
        return async_gen_wrapper

    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen_wrapper(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except Exception as exc:
                raise convert(exc) from exc
        return gen_wrapper

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            raise convert(exc) from exc
    return wrapper


_END = object()


async def stream_updates(make_events: Callable[[CancelToken], Iterator], render: Callable[[object], tuple | None],
                         min_interval: float = PREVIEW_INTERVAL,
                         cancel: CancelToken | None = None) -> AsyncIterator[tuple]:
    """The page's updates for a run: ``make_events(cancel)``'s events (newest step first, see
    ``stream_latest``), each turned into outputs by ``render`` (None: no update) in a worker thread.

    An async generator, so the page's Stop cancels it at once: Gradio cancels the awaiting task
    (a sync generator would be waited for until its next update, up to a whole step), and this
    sets the run's cancel token and returns. The run ends at its next step; the device stays
    with it until then (the worker process takes runs one at a time). A ``cancel`` token set by
    someone else (the page's Stop) ends the run the same way, with :class:`Cancelled` raised here.
    """
    cancel = cancel or CancelToken()
    events = stream_latest(make_events, cancel=cancel, min_interval=min_interval)

    def next_update():  # in a worker thread: waiting, preview drawing and image encoding stay off the event loop
        for event in events:
            update = render(event)
            if update is not None:
                return update
        return _END

    try:
        while (update := await asyncio.to_thread(next_update)) is not _END:
            yield update
    finally:
        cancel.cancel()


def progress_html(step: int, total: int, timestep: float | None = None, elapsed: float = 0.0,
                  eta: float | None = None, note: str = "", unit: str = "Step") -> str:
    pct = 100.0 * step / max(total, 1)
    parts = [f"{unit} {step}/{total}"]
    if timestep is not None:
        parts.append(f"t = {timestep:g}")
    parts.append(f"{elapsed:.1f} s")
    if eta is not None:
        parts.append(f"ETA {eta:.1f} s")
    if note:
        parts.append(note)
    text = html.escape(" · ".join(parts))
    return (
        f'<div class="wb-progress"><progress max="100" value="{pct:.1f}" style="width:100%"></progress>'
        f'<div class="wb-progress-text">{text}</div></div>'
    )


def message_html(text: str, kind: str = "error") -> str:
    """A one-line message in the progress line's place: "error", "stopped" or "waiting"; escaped."""
    return f'<div class="wb-progress wb-{kind}"><div class="wb-progress-text">{html.escape(text)}</div></div>'


def page_error(exc: BaseException) -> str:
    """What the page says for an error: the project's own message, else a short generic one (logged)."""
    if isinstance(exc, WorkbenchError):
        return str(exc)
    log.error("unexpected error in a page handler", exc_info=exc)
    return f"Internal error ({type(exc).__name__}); the server log has the details."


def field_messages(exc: InputError | ModelLoadError, fields: dict[str, int], count: int) -> list:
    """``gr.validate`` for each of ``count`` inputs: the error beside the input ``fields`` maps its field to."""
    where = fields.get(getattr(exc, "field", None) or ("model" if isinstance(exc, ModelLoadError) else ""))
    # Gradio shows the message as text: escaped here, a quote in it read "&#x27;".
    return [gr.validate(i != where, str(exc) if i == where else "") for i in range(count)]


class SessionRuns:
    """The latest run of each page session, as far as it got: what Stop shows after cancelling it."""

    def __init__(self, keep: int = 64):
        self.keep = keep  # sessions remembered; the oldest is forgotten first
        self._runs: OrderedDict[str, dict] = OrderedDict()
        self._lock = threading.Lock()

    def begin(self, session: str) -> dict:
        run = {"started": None, "steps": [], "cancel": CancelToken(), "note": ""}
        with self._lock:
            self._runs[session] = run
            self._runs.move_to_end(session)
            while len(self._runs) > self.keep:
                self._runs.popitem(last=False)
        return run

    def get(self, session: str) -> dict | None:
        with self._lock:
            return self._runs.get(session)

    def stop(self, session: str) -> bool:
        """Ask the session's run to stop at its next step; False when it has none under way."""
        run = self.get(session)
        if run is None or run.get("ended"):
            return False
        run["cancel"].cancel()
        return True


def whole(value):
    """Numbers from the page arrive as floats; whole ones become ints, others pass on to validation."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def model_dropdown(choices: list[str], value: str, label: str = "Model") -> gr.Dropdown:
    return gr.Dropdown(
        choices=choices, value=value, label=label, allow_custom_value=True, scale=4,
        info="A built-in, a folder or .safetensors under the models dir, or a hub id (owner/name)",
    )
