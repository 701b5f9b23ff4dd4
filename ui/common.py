"""What every tab shares: error reporting, streaming with stop, the progress line."""

from __future__ import annotations

import functools
import html
import logging
from typing import Callable, Iterator

import gradio as gr

from engine.errors import WorkbenchError
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

    if _is_generator(fn):
        @functools.wraps(fn)
        def gen_wrapper(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except Exception as exc:  # GeneratorExit (Stop) is no Exception: it passes through
                raise convert(exc) from exc
        return gen_wrapper

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            raise convert(exc) from exc
    return wrapper


def _is_generator(fn: Callable) -> bool:
    import inspect

    return inspect.isgeneratorfunction(fn)


def stream(make_events: Callable, min_interval: float = PREVIEW_INTERVAL) -> Iterator:
    """Events of ``make_events(cancel)`` from a worker thread, newest step first.

    When the page's Stop cancels the handler, the generator is closed: the run's
    cancel token is set and the worker joined, so it ends within one step.
    """
    return stream_latest(make_events, min_interval=min_interval)


def progress_html(step: int, total: int, timestep: float | None = None, elapsed: float = 0.0,
                  eta: float | None = None, note: str = "") -> str:
    pct = 100.0 * step / max(total, 1)
    parts = [f"Step {step}/{total}"]
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
