"""A cancel sent before its job's event id was known still stops the job.

gradio_client's ``job.cancel()`` posts ``/gradio_api/cancel`` with the job's event id, which the client learns only
when the server answers its ``/gradio_api/queue/join``; called right after ``submit`` it posts ``event_id: null``,
which Gradio 6.31 cannot match to any event, and never sends it again: a job waiting for a busy device then ran in
full and its image landed in History. :class:`EarlyCancels` (an ASGI middleware, outside Gradio's routes) watches
both routes by their JSON and gives such a cancel its event: the session's last answered join of the same endpoint
while Gradio's queue still holds it (the client had not read the answer yet); else the session's next join of it,
being answered or still to come (the cancel overtook it), once answered. Gradio then does what it does for any
cancel: a queued event is removed and never starts; a running one is stopped. A join that never comes (refused
before it reached the server) leaves its cancel for the session's next job of that endpoint.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict

from ui import gradio_compat

log = logging.getLogger(__name__)

JOIN, CANCEL = "/gradio_api/queue/join", "/gradio_api/cancel"
KEEP = 4096  # (session, endpoint) pairs remembered; the oldest is forgotten first


class EarlyCancels:
    def __init__(self, app):
        self.app = app
        self._lock = threading.Lock()
        self._joining: dict[tuple, int] = {}  # (session_hash, fn_index) -> joins being answered
        self._waiting: dict[tuple, int] = {}  # -> cancels without an event id waiting for those answers
        self._last: OrderedDict[tuple, str] = OrderedDict()  # -> the event id of the last answered join

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "").rstrip("/") if scope["type"] == "http" else ""
        if scope["type"] != "http" or scope.get("method") != "POST" or not path.endswith((JOIN, CANCEL)):
            await self.app(scope, receive, send)
            return
        body = await _read_body(receive)
        key = _key(body)
        if key is None:
            await self.app(scope, _replay(body, receive), send)
        elif path.endswith(CANCEL):
            await self._cancel(scope, receive, send, body, key)
        else:
            await self._join(scope, _replay(body, receive), send, key)

    async def _cancel(self, scope, receive, send, body: bytes, key: tuple) -> None:
        """``receive``: the request's own, its body read already."""
        message = json.loads(body)
        if message.get("event_id") is None:
            with self._lock:
                event_id = self._last.get(key)
                if self._joining.get(key) or event_id is None or not _queued_or_running(scope, key[0], event_id):
                    # its join is being answered, or has not come yet (the cancel overtook it): cancelled when it is
                    self._waiting[key] = self._waiting.get(key, 0) + 1
                    event_id = None
            if event_id is not None:
                log.info("a cancel without an event id: cancelling event %s, the session's last of fn %s",
                         event_id, key[1])
                body = json.dumps({**message, "event_id": event_id}).encode()
                scope = {**scope, "headers": _json_headers(scope, body)}
        await self.app(scope, _replay(body, receive), send)

    async def _join(self, scope, receive, send, key: tuple) -> None:
        with self._lock:
            self._joining[key] = self._joining.get(key, 0) + 1
        answer = bytearray()

        async def send_and_read(message):
            if message["type"] == "http.response.body":
                answer.extend(message.get("body", b""))
            await send(message)

        event_id = None
        try:
            await self.app(scope, receive, send_and_read)
            try:
                event_id = json.loads(bytes(answer)).get("event_id")
            except (ValueError, AttributeError):  # a refused join (queue full, bad request): no event
                pass
        finally:
            with self._lock:
                self._joining[key] -= 1
                if not self._joining[key]:
                    del self._joining[key]
                cancel = bool(self._waiting.get(key)) and event_id is not None
                if cancel:
                    self._waiting[key] -= 1
                    if not self._waiting[key]:
                        del self._waiting[key]
                if event_id is not None:
                    self._last[key] = event_id
                    self._last.move_to_end(key)
                    while len(self._last) > KEEP:
                        self._last.popitem(last=False)
        if cancel:
            log.info("a cancel sent before its join was answered: cancelling event %s", event_id)
            await self._send_cancel(scope, key, event_id)

    async def _send_cancel(self, scope, key: tuple, event_id: str) -> None:
        body = json.dumps({"session_hash": key[0], "fn_index": key[1], "event_id": event_id}).encode()
        headers = _json_headers(scope, body)
        root = scope.get("root_path", "")
        path = scope["path"][:scope["path"].rfind(JOIN)] + CANCEL
        cancel_scope = {**scope, "path": path, "raw_path": (root + path).encode(), "headers": headers,
                        "query_string": b""}

        async def discard(message):
            pass

        await self.app(cancel_scope, _replay(body), discard)


def _queued_or_running(scope, session_hash: str, event_id: str) -> bool:
    """Whether Gradio's queue still holds ``event_id`` (waiting or running): ``gradio_compat.queued_or_running``,
    whose test fails if Gradio changes what it reads."""
    return gradio_compat.queued_or_running(scope["app"], session_hash, event_id)


def _key(body: bytes) -> tuple | None:
    try:
        message = json.loads(body)
    except ValueError:
        return None
    if not isinstance(message, dict) or not isinstance(message.get("session_hash"), str):
        return None
    fn_index = message.get("fn_index")
    return (message["session_hash"], fn_index) if isinstance(fn_index, int) else None


def _json_headers(scope, body: bytes) -> list:
    headers = [(k, v) for k, v in scope.get("headers", []) if k not in (b"content-length", b"content-type")]
    return headers + [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]


async def _read_body(receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":  # the client went away
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    return b"".join(chunks)


def _replay(body: bytes, receive=None):
    """A ``receive`` that hands on ``body`` (read already), then waits on the request's own (its disconnect)."""
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        if receive is not None:
            return await receive()  # http.disconnect, when it comes
        return {"type": "http.disconnect"}

    return replay
