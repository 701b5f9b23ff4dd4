"""Every use of a Gradio internal, in this one file.

Gradio is pinned to :data:`GRADIO_VERSION` in requirements.txt, and ``tests/ui/test_gradio_compat.py`` checks each
use below against the installed Gradio: an upgrade that renames or changes one fails the test named for it, instead
of a check here being skipped without a sound. The login check reads no internal with a default
(``getattr(x, name, None)``): a missing one raises, and the request fails rather than passing unchecked.

The uses:

- ``routes.App``'s ``auth``, ``cookie_id`` and ``tokens``: who has logged in (:class:`RequireLogin`);
- ``Blocks.GRADIO_CACHE``, ``Blocks.upload_file_set`` and each block's ``keep_in_cache``: the cache folder, the
  uploads in it and the widgets' first values (:func:`cache_folder`, :func:`uploaded_files`, :func:`first_values`);
  ``gradio.utils.get_upload_folder`` (:func:`upload_folder`);
- ``Blocks.preprocess_data``, ``BlockFunction.fn`` and ``.inputs``, a component's ``data_model``: file inputs
  checked before Gradio reads them (:func:`check_file_inputs`);
- ``processing_utils.save_pil_to_cache`` (with ``encode_pil_to_bytes`` and ``hash_bytes``): output images written
  atomically (:func:`cache_images_atomically`);
- ``gradio.components.plot.PlotData``: a chart's value (:func:`plot_data`);
- ``Blocks._queue``: ``Queue.push`` (and ``server_app``/``set_server_app``, as the join route sets them) with a ``PredictBodyInternal`` and ``route_utils.API_PREFIX`` (a job put in the
  queue as the page's own join puts it: :func:`queue_push`), ``Queue.event_ids_to_events``,
  ``pending_messages_per_session`` and ``pending_event_ids_session`` (whether an event is still queued or running,
  :func:`queued_or_running`; a finished job's messages dropped, :func:`forget_event`).
"""

from __future__ import annotations

import contextlib
import inspect
import os
import tempfile
from http.cookies import SimpleCookie
from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from gradio.components.plot import PlotData

GRADIO_VERSION = "6.31.0"  # requirements.txt pins this; the tests check each use below against it


# -- login --------------------------------------------------------------------------------------------------------
def login_required(server) -> bool:
    """Whether the launched app (Gradio's ``routes.App``) asks for a login: its ``auth`` is set by ``--auth``."""
    return server.auth is not None


def logged_in(headers, server) -> bool:
    """Whether a request's cookies (its raw ASGI ``headers``) hold a token of a logged-in user, as Gradio's own
    ``get_current_user`` reads them: cookie ``access-token-<cookie_id>`` (or ``-unsecure-``), looked up in
    ``tokens``."""
    cookies = SimpleCookie()
    for name, value in headers:
        if name == b"cookie":
            with contextlib.suppress(Exception):  # a malformed cookie header: no token in it
                cookies.load(value.decode("latin-1"))
    for name in (f"access-token-{server.cookie_id}", f"access-token-unsecure-{server.cookie_id}"):
        if name in cookies and server.tokens.get(cookies[name].value) is not None:
            return True
    return False


class RequireLogin:
    """With --auth, every route answers 401 until the caller has logged in, except the login page and what it
    loads (:data:`PUBLIC_PATHS`, :data:`PUBLIC_PREFIXES`). Closed by default: Gradio 6.31 leaves some routes
    open under auth (``POST /gradio_api/cancel``: anyone with a session hash and an event id could stop another
    user's run; ``/gradio_api/stream/...``, ``/gradio_api/heartbeat/...``, FastAPI's ``/openapi.json``), and a
    route a later Gradio adds is closed too. An ASGI middleware (``app_kwargs={"middleware": [...]}`` at launch)."""

    # The login page and what it loads before anyone logs in; each answers without a user's data.
    PUBLIC_PATHS = frozenset({
        "/", "/login", "/logout",  # the page (the login form until logged in), logging in and out
        "/favicon.ico", "/theme.css", "/robots.txt", "/manifest.json", "/pwa_icon",  # the page's own files
        "/gradio_api/theme.css", "/gradio_api/startup-events",  # the front end's start-up requests
        "/gradio_api/user", "/gradio_api/token", "/gradio_api/app_id",  # who is logged in (no one: null)
        "/gradio_api/login_check",  # answers 401 itself until logged in
    })
    PUBLIC_PREFIXES = ("/assets/", "/static/", "/svelte/", "/pwa_icon/")  # the front end's scripts and styles

    def __init__(self, app, own_login: tuple[str, ...] = ()):
        self.app = app
        self.own_login = own_login  # path prefixes whose routes check the same login themselves (HTTP basic)

    @classmethod
    def is_public(cls, path: str) -> bool:
        return (path.rstrip("/") or "/") in cls.PUBLIC_PATHS or path.startswith(cls.PUBLIC_PREFIXES)

    async def __call__(self, scope, receive, send):
        if (scope["type"] in ("http", "websocket") and login_required(scope["app"])
                and not self.is_public(scope["path"]) and not scope["path"].startswith(self.own_login)
                and not logged_in(scope.get("headers", []), scope["app"])):
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})  # before accepting: a 403 to the caller
                return
            await send({"type": "http.response.start", "status": 401,
                        "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": b'{"detail":"Not authenticated"}'})
            return
        await self.app(scope, receive, send)


def app_routes(demo) -> list[tuple[str, tuple[str, ...]]]:
    """Every route of the launched app as (path, methods), read from its FastAPI app (``demo.server_app``, set by
    ``launch``); routers it includes (FastAPI 0.165 keeps them as one entry each) are listed route by route, with
    FastAPI's ``routing.iter_route_contexts``. A websocket route's methods are ("WEBSOCKET",), a mount's ()."""
    from fastapi.routing import iter_route_contexts
    from starlette.routing import WebSocketRoute

    routes = []
    for route in iter_route_contexts(demo.server_app.routes):
        if isinstance(route.original_route, WebSocketRoute):
            methods = ("WEBSOCKET",)
        else:
            methods = tuple(sorted(route.methods or ()))
        routes.append((route.path, methods))
    return routes


# -- the cache folder and its uploads -----------------------------------------------------------------------------
def cache_folder(demo) -> str:
    """The folder Gradio caches the page's files in (uploads and outputs): ``$GRADIO_TEMP_DIR`` when the Blocks
    were made."""
    return demo.GRADIO_CACHE


def uploaded_files(demo) -> set[str]:
    """The paths of the files uploaded to the page (Gradio's ``upload_file_set``), cleaned with the cache."""
    return demo.upload_file_set


def first_values(demo) -> set[str]:
    """The cached files of the widgets' first values (each Gradio block's ``keep_in_cache``): a page opened later
    shows them. Blocks that hold no files have an empty set (a test double may have none)."""
    return {path for block in demo.blocks.values() for path in getattr(block, "keep_in_cache", ())}


def upload_folder() -> str:
    """Where Gradio puts uploads now: ``$GRADIO_TEMP_DIR``, else the system's temp folder's ``gradio``."""
    from gradio.utils import get_upload_folder

    return get_upload_folder()


# -- file inputs, before Gradio reads them ------------------------------------------------------------------------
def check_file_inputs(demo, on_invalid: Callable, check_image: Callable[[str, str], None]) -> None:
    """Wrap ``demo.preprocess_data`` (where Gradio turns each input's JSON into its value) so that:

    - each image input's file is passed to ``check_image(path, parameter)`` first: it raises to refuse an image
      before Gradio opens it (PIL refuses a huge one with ``DecompressionBombError``, an internal error);
    - a file input whose JSON is not a file (pydantic's ``ValidationError``) is handed to
      ``on_invalid(parameter, multiple, value)``, which returns the exception to raise.

    Installed once the events are wired."""
    import gradio as gr
    import pydantic

    preprocess = demo.preprocess_data

    def named_inputs(block_fn, inputs):
        names = list(inspect.signature(block_fn.fn).parameters) if block_fn.fn else []
        return zip(names, block_fn.inputs, inputs)

    async def preprocess_data(block_fn, inputs, state, *args, **kwargs):
        for name, block, value in named_inputs(block_fn, inputs):
            if isinstance(block, gr.Image) and isinstance(value, dict) and isinstance(value.get("path"), str) \
                    and os.path.isfile(value["path"]):
                check_image(value["path"], name)
        try:
            return await preprocess(block_fn, inputs, state, *args, **kwargs)
        except pydantic.ValidationError as exc:
            for name, block, value in named_inputs(block_fn, inputs):
                model = getattr(block, "data_model", None)  # components without files have none
                if model is not None and model.__name__ == exc.title:
                    raise on_invalid(name, getattr(block, "file_count", "single") == "multiple", value) from None
            raise

    demo.preprocess_data = preprocess_data


# -- output images in the cache -----------------------------------------------------------------------------------
def cache_images_atomically() -> None:
    """Gradio 6.31 saves each output image into its cache at a path named by the image's bytes, with
    ``write_bytes``: an image sent again (the same preview, the same final image) was truncated and rewritten in
    place while the page could be fetching it, and that request then failed ("Too little data for declared
    Content-Length": the image never loaded). Now an existing file is only touched (its bytes are the same, and
    ``prune_cache`` sees it used), and a new one is written under a hidden name and renamed into place, as Gradio's
    own ``save_file_to_cache`` does. Installed once, for the process (Gradio's components call it by module)."""
    from gradio import processing_utils

    if getattr(processing_utils.save_pil_to_cache, "atomic", False):
        return

    def save_pil_to_cache(img, cache_dir: str, name: str = "image", format: str = "webp") -> str:
        data = processing_utils.encode_pil_to_bytes(img, format)
        folder = Path(cache_dir) / processing_utils.hash_bytes(data)
        folder.mkdir(exist_ok=True, parents=True)
        path = (folder / f"{name}.{format}").resolve()
        with contextlib.suppress(FileNotFoundError):
            if path.stat().st_size == len(data):
                os.utime(path)
                return str(path)
        fd, staging = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            os.replace(staging, path)
        except BaseException:
            Path(staging).unlink(missing_ok=True)
            raise
        return str(path)

    save_pil_to_cache.atomic = True
    processing_utils.save_pil_to_cache = save_pil_to_cache


# -- charts -------------------------------------------------------------------------------------------------------
def plot_data(kind: str, plot: str) -> PlotData:
    """A ``gr.Plot`` value built directly (Gradio's ``PlotData``): ``kind`` "altair" with a Vega-Lite spec as JSON."""
    from gradio.components.plot import PlotData

    return PlotData(type=kind, plot=plot)


# -- the queue ----------------------------------------------------------------------------------------------------
def _queue(app):
    """Gradio's ``Queue`` of the launched app (``routes.App``)."""
    return app.get_blocks()._queue


async def queue_push(app, request, fn_index: int, data: list) -> tuple[bool, str, str]:
    """Put a run of event ``fn_index`` with ``data`` in the app's queue, as Gradio's own join route does (behind the
    page's events, under the event's concurrency limit): (accepted, the event id or why not, Gradio's state word,
    "queue_full" among them); the event is a session of its own, under its id. ``request``: the caller's Starlette request, its path made the join route's (Gradio
    reads it to find its root URL and accepts only that route's)."""
    from fastapi import Request
    from gradio.data_classes import PredictBodyInternal
    from gradio.route_utils import API_PREFIX

    path = f"{API_PREFIX}/queue/join"
    join = Request(dict(request.scope, path=path, raw_path=path.encode(), query_string=b""))
    body = PredictBodyInternal(data=data, fn_index=fn_index, request=join)
    queue = _queue(app)
    if queue.server_app is None:  # as the join route does: an app not started by launch() has not set it yet
        queue.set_server_app(app)
    ok, detail, state = await queue.push(body=body, request=join, username=None)
    return ok, str(detail), state


def forget_event(app, event_id: str) -> bool:
    """Drop what Gradio keeps for a finished event nobody reads (a job pushed by :func:`queue_push`, its own
    session): its messages and its place among the session's pending events, which Gradio's own stream route
    would drop as it read them. True once Gradio is done with it (after the function returned), else False."""
    queue = _queue(app)
    if event_id in queue.event_ids_to_events:
        return False
    queue.pending_messages_per_session.pop(event_id, None)
    queue.pending_event_ids_session.pop(event_id, None)
    return True


def queued_or_running(app, session_hash: str, event_id: str) -> bool:
    """Whether the app's queue still holds ``event_id`` of ``session_hash`` (waiting or running)."""
    return event_id in _queue(app).pending_event_ids_session.get(session_hash, ())
