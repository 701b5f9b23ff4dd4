"""Cooperative, typed cancellation: a token that loops check every step."""

from __future__ import annotations

import threading

from engine.errors import Cancelled


class CancelToken:
    """Set by whoever wants a run to stop; checked by the run between steps."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self, step: int | None = None) -> None:
        if self._event.is_set():
            where = f" at step {step}" if step is not None else ""
            raise Cancelled(f"run stopped by the user{where}")


def check(cancel: CancelToken | None, step: int | None = None) -> None:
    """Raise :class:`Cancelled` if ``cancel`` is set; a ``None`` token never cancels."""
    if cancel is not None:
        cancel.raise_if_cancelled(step)
