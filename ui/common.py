"""What every tab shares: error reporting, streaming with stop, the progress line."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import html
import inspect
import itertools
import json
import logging
import os
import re
import tempfile
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import AsyncIterator, Callable, Iterator

import gradio as gr

from engine.cancel import CancelToken
from engine.errors import InputError, ModelLoadError, WorkbenchError
from engine.files import atomic_write
from engine.sampling.views import step_bytes, thin_history
from engine.sampling.schedulers import TIMESTEP_SPACINGS
from engine.streaming import stream_latest
from engine.validation import given
from ui import gradio_compat

log = logging.getLogger(__name__)

DEVICE_QUEUE = "device"  # one concurrency group for all model work: tabs queue, never fight
PREVIEW_INTERVAL = 0.1  # seconds between preview frames: about 10 a second, the browser keeps up
CACHE_HASH_DIR = re.compile(r"[0-9a-f]{64}")  # Gradio caches each file in a folder named by its content's hash
EMPTY_DIR_AGE = 60.0  # seconds an emptied hash folder stays: Gradio fills a folder the moment it makes one
# The "Compile for speed" box of the sampling tabs (engine/sampling/fast.py does the work).
COMPILE_INFO = ("torch.compile the UNet (on a GPU also a CUDA graph): faster steps; the first run of a model and size "
                "compiles, a minute or more, and the progress line says so; later runs and restarts reuse it")


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


SCRUB_SESSION_BYTES = 64 * 2**20  # a page session's scrub history at most: a 512 px run keeps 80 or so drawn frames
SCRUB_TOTAL_BYTES = 256 * 2**20  # every session's together: the sessions that ran longest ago give theirs up first


class SessionRuns:
    """The latest run of each page session, as far as it got: what Stop shows after cancelling it, and the steps its
    scrubber goes through (:meth:`keep_history`). A session's new run replaces its last one, history and all; a
    history holds at most ``session_bytes`` (every k-th step kept), all of them together ``total_bytes``."""

    def __init__(self, keep: int = 64, session_bytes: int = SCRUB_SESSION_BYTES,
                 total_bytes: int = SCRUB_TOTAL_BYTES):
        self.keep = keep  # sessions remembered; the oldest is forgotten first
        self.session_bytes = session_bytes
        self.total_bytes = total_bytes
        self._runs: OrderedDict[str, dict] = OrderedDict()
        self._lock = threading.Lock()
        self._numbers = itertools.count(1)

    def begin(self, session: str) -> dict:
        """A new run for ``session``; its handler calls :meth:`end` with it when it returns, however it returns."""
        run = {"started": None, "steps": [], "cancel": CancelToken(), "note": "", "done": threading.Event(),
               "session": session}
        with self._lock:
            self._runs[session] = run
            self._runs.move_to_end(session)
            while len(self._runs) > self.keep:
                self._runs.popitem(last=False)
        return run

    def get(self, session: str) -> dict | None:
        with self._lock:
            return self._runs.get(session)

    def keep_history(self, run: dict, steps, final) -> dict | None:
        """Keep ``steps`` (every k-th, to fit the session's bytes) and the ``final`` image as ``run``'s history, in
        place of the steps streamed so far; free the histories of the sessions that ran longest ago past the total.
        What the page's state holds instead of the steps: ``{"run", "kept", "of", "every", "first", "last"}`` (the
        step numbers of the first and last kept); None for a run of no page session: an API call keeps nothing."""
        if run.get("session") is None:
            return None
        kept, every = thin_history(steps, self.session_bytes)
        history = {"run": next(self._numbers), "steps": kept, "final": final, "of": len(steps), "every": every,
                   "bytes": sum(step_bytes(s) for s in kept), "tokens": run.get("tokens")}  # tokens: attention's chips
        with self._lock:
            run["scrub"], run["steps"] = history, []
            total = sum(r["scrub"]["bytes"] for r in self._runs.values() if r.get("scrub"))
            for other in list(self._runs.values()):  # the session that ran longest ago first
                if total <= self.total_bytes:
                    break
                if other is not run and other.get("scrub"):
                    total -= other.pop("scrub")["bytes"]
        return {"run": history["run"], "kept": len(kept), "of": len(steps), "every": every,
                "first": kept[0].step if kept else 0, "last": kept[-1].step if kept else 0}

    def history(self, session: str, marker: dict | None) -> dict | None:
        """The history the page's state ``marker`` names, while the session's latest run still keeps it."""
        run = self.get(session)
        found = run.get("scrub") if run is not None else None
        return found if found is not None and marker is not None and found["run"] == marker.get("run") else None

    @staticmethod
    def end(run: dict) -> None:
        run["ended"] = True
        run["done"].set()

    def stop(self, session: str, wait: float = 0.0) -> dict | None:
        """Ask the session's run to stop at its next step, and wait up to ``wait`` seconds for it to end (its
        "ended" is set then); the run, or None when the session has none under way."""
        run = self.get(session)
        if run is None or run.get("ended"):
            return None
        run["cancel"].cancel()
        run["done"].wait(wait)
        return run


def uploaded_path(value, name: str) -> str | None:
    """The path of file input ``name`` as a handler registered with ``preprocess=False`` gets it: Gradio's file
    dict, or None. Only files in the app's cache pass: Gradio checks a dict that says it is a file (its ``meta``),
    but hands one without on as it came, and a path elsewhere on the server must not be read."""
    path = value.get("path") if isinstance(value, dict) else value
    if path is None:
        return None
    cache = os.path.realpath(gradio_compat.upload_folder())
    if not isinstance(path, str) or not os.path.realpath(path).startswith(cache + os.sep):
        raise InputError(f"{name} must be a file uploaded to this app, as gradio_client's handle_file(path) sends "
                         f"it; got {given(path)}", field=name)
    return path


def name_file_inputs(demo: gr.Blocks, check_image: Callable[[str, str], None]) -> None:
    """Gradio checks a file input's JSON before any handler runs, with pydantic's message, which names neither the
    parameter nor the form a file takes ("1 validation error for ImageData ..."): say both. And an image input's
    file is measured by ``check_image`` (its header) before Gradio opens it: an image of too many pixels is refused
    with the engine's message, not decoded whole (nor refused by PIL as an internal error). Installed on ``demo``
    once the events are wired."""

    def on_invalid(name: str, multiple: bool, value) -> gr.Error:
        what = "a list of files" if multiple else "a file"
        return gr.Error(f"{name} must be {what} as gradio_client's handle_file(path) sends one "
                        f"({{'path': ..., 'meta': {{'_type': 'gradio.FileData'}}}}); got {given(value)}",
                        print_exception=False)

    def check(path: str, name: str) -> None:
        try:
            check_image(path, name)
        except WorkbenchError as exc:
            raise gr.Error(str(exc), print_exception=False) from None

    gradio_compat.check_file_inputs(demo, on_invalid, check)


def whole(value):
    """Numbers from the page arrive as floats; whole ones become ints, others pass on to validation."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def model_dropdown(choices: list[str], value: str, label: str = "Model", elem_id: str | None = None) -> gr.Dropdown:
    return gr.Dropdown(
        choices=choices, value=value, label=label, allow_custom_value=True, scale=4, elem_id=elem_id,
        info="A built-in, a folder or .safetensors under the models dir, or a hub id (owner/name)",
    )


def fill_on_open(tab: gr.Tab | None, fill: Callable, outputs: list, inputs: list | None = None) -> None:
    """``fill`` (fresh choices for the lists ``outputs``) when the page loads and whenever ``tab`` opens: a model, a
    checkpoint or a data folder made since the server built the page is there without Refresh. On load ``fill`` is
    called without ``inputs`` (their first values are its defaults)."""
    events = dict(outputs=outputs, queue=False, api_visibility="private", show_progress="hidden")
    gr.on(None, fill, None, **events)  # no triggers and no inputs: when the page loads
    if tab is not None:
        tab.select(fill, inputs, **events)


def prune_cache(demo: gr.Blocks, keep: int) -> int:
    """Delete all but the ``keep`` newest files the page's outputs left in the app's cache folder; returns how many
    went. Gradio deletes only files older than its ``delete_cache`` age, and never those of an output whose widget
    a run updated (its label, say): Gradio makes that widget afresh for the session and tracks none of its files.
    So the folder is read itself: each file in a folder named by its content's hash (Gradio's layout), except
    uploads (a person may still use them) and the widgets' first values, which a page opened later shows."""
    folder = os.path.realpath(gradio_compat.cache_folder(demo))
    protected = {os.path.realpath(p) for p in gradio_compat.uploaded_files(demo)}
    protected.update(os.path.realpath(p) for p in gradio_compat.first_values(demo))
    found, empty = [], []
    with os.scandir(folder) as entries:
        hashed = [e.path for e in entries if CACHE_HASH_DIR.fullmatch(e.name) and e.is_dir(follow_symlinks=False)]
    for sub in hashed:
        with contextlib.suppress(FileNotFoundError), os.scandir(sub) as entries:
            files = [e for e in entries if e.is_file(follow_symlinks=False)]
            for entry in files:
                if not entry.name.startswith(".") and entry.path not in protected:  # "." : a copy being written
                    with contextlib.suppress(FileNotFoundError):
                        found.append((entry.stat().st_mtime, entry.path))
            if not files:
                empty.append(sub)
    found.sort(reverse=True)
    for mtime, path in found[keep:]:
        with contextlib.suppress(FileNotFoundError):
            if os.stat(path).st_mtime == mtime:  # not written again (the same image) since it was listed
                os.remove(path)
    now = time.time()
    for sub in empty:  # an old empty folder only: a new one may be about to get its file
        with contextlib.suppress(OSError):
            if now - os.stat(sub).st_mtime > EMPTY_DIR_AGE:
                os.rmdir(sub)
    return max(0, len(found) - keep)


# The tabs a past image's settings go back to, by the kind its run record (or folder) names.
TAB_LABELS = {"txt2img": "Text to image", "unconditional": "Unconditional"}
# Beside a tab's request fields: the gr.State that holds the settings filled in last, so that the tab's own
# "model changed: take its default size / steps" listeners leave the filled values alone.
FILLED = "_filled"


def switch_tab_js(label: str) -> str:
    """Client-side: click the tab whose button reads ``label`` (the tabs sit in the Blocks' own Tabs, which no
    handler holds)."""
    return ("() => { const tab = [...document.querySelectorAll('button[role=tab]')]"
            f".find(b => b.innerText.trim() === {label!r}); if (tab) tab.click(); }}")


# The same, for the tab of a kind given as the event's input.
SELECT_KIND_TAB_JS = ("(kind) => { const label = " + json.dumps(TAB_LABELS) + "[kind];"
                      " const tab = [...document.querySelectorAll('button[role=tab]')]"
                      ".find(b => b.innerText.trim() === label); if (tab) tab.click(); return kind; }")


def settings_updates(targets: dict[str, dict], kind: str, settings: dict, *, seed_only: bool = False) -> dict:
    """``settings`` (request field -> value) as updates of the ``kind`` tab's widgets in ``targets`` (tab kind ->
    {request field: widget}); the batch count goes back to the image's (1 for one run). ``seed_only``: the seed."""
    fields = targets.get(kind, {})
    if seed_only:
        return {fields["seed"]: settings["seed"]} if "seed" in fields and "seed" in settings else {}
    values = {**settings, "batch_count": settings.get("batch_count", 1), FILLED: dict(settings)}
    return {widget: values[name] for name, widget in fields.items() if name in values}


RUN_FILES_KEPT = 200  # run files (Export run) kept in the temp folder: a page's link lives far shorter
RUN_FILE_AGE = 24 * 3600.0  # seconds a run file stays at most


def write_run_file(bundle: dict, image: str) -> str:
    """A run's bundle as a small JSON file for the page to download, named after its image: written beside and
    renamed into place (a download of the same run under way keeps reading the whole file it opened), the
    oldest removed past :data:`RUN_FILES_KEPT` files or :data:`RUN_FILE_AGE` seconds."""
    folder = Path(os.environ.get("GRADIO_TEMP_DIR") or tempfile.gettempdir()) / "runs"
    path = folder / f"{'-'.join(Path(image).with_suffix('').parts[-3:])}-run.json"
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(bundle, indent=1))
    _prune_run_files(folder, keep=path)
    return str(path)


def _prune_run_files(folder: Path, keep: Path) -> None:
    files = []
    for path in folder.glob("*-run.json"):
        with contextlib.suppress(FileNotFoundError):  # another request pruned it meanwhile
            files.append((path.stat().st_mtime, path))
    files.sort(reverse=True)  # newest first
    now = time.time()
    for i, (mtime, path) in enumerate(files):
        if path != keep and (i >= RUN_FILES_KEPT or now - mtime > RUN_FILE_AGE):
            path.unlink(missing_ok=True)


def seed_buttons(prefix: str) -> tuple[gr.Button, gr.Button]:
    """♻ (the seed the last run used) and 🎲 (-1: a new random seed each run), beside a seed box."""
    return (gr.Button("♻", size="sm", scale=0, min_width=44, elem_id=f"{prefix}-reuse-seed"),
            gr.Button("🎲", size="sm", scale=0, min_width=44, elem_id=f"{prefix}-random-seed"))


def last_seed(shown: dict | None):
    """The seed the parameters box shows the last run used (a batch's first), else no change."""
    seed = shown.get("seed") if isinstance(shown, dict) else None
    return seed if isinstance(seed, int) else gr.skip()


def batch_note(info: dict) -> str:
    """"run 2 of 4" for a run of a batch count, else ""."""
    return f"run {info['batch_index']} of {info['batch_count']}" if "batch_count" in info and "batch_index" in info \
        else ""


def done_note(info: dict) -> str:
    """The progress line's note when a run ends: "done", or which run of a batch count has finished (the batch is
    done when its grid is)."""
    return f"{batch_note(info)} finished" if batch_note(info) else "done"


def shown_values(shown: Callable[[str], str], value):
    """``value`` (a run's info: dicts, lists, text) with every string as ``shown`` writes it: the app's folders
    relative, as the page shows paths."""
    if isinstance(value, str):
        return shown(value)
    if isinstance(value, dict):
        return {key: shown_values(shown, v) for key, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [shown_values(shown, v) for v in value]
    return value


def batch_done_html(seeds: tuple[int, ...]) -> str:
    """The progress line once a batch count's grid is shown: no step counter (the grid is no one run's steps, so
    there is nothing to scrub here), and where each run's steps are."""
    return message_html(f"Batch · done · {len(seeds)} runs, seeds {seeds[0]} to {seeds[-1]}: their grid above; "
                        "History shows each run, Use these settings brings one back to scrub", "done")


def export_update(export_run: Callable[[str], dict], shown: dict | None):
    """The Export button after a run: the run's replay file, where the run saved an image (hidden otherwise)."""
    shown = shown if isinstance(shown, dict) else {}
    if shown.get("seeds"):  # a batch count's grid is no one run: History exports each of them
        image = None
    else:
        image = shown.get("file") or next(iter(shown.get("files") or []), None)
    if not image:
        return gr.update(visible=False, value=None)
    try:
        return gr.update(visible=True, value=write_run_file(export_run(image), image))
    except WorkbenchError as exc:
        log.info("no replay file for %s: %s", image, exc)
        return gr.update(visible=False, value=None)


OWN_SPACING_LABEL = "the model's own"  # the spacing box's first choice: a request's timestep_spacing ""


def schedule_fields(prefix: str, defaults, *, rescale: bool) -> tuple:
    """The ``timestep_spacing`` box (and, ``rescale``, the ``guidance_rescale`` box; else None) of a sampling tab,
    at ``defaults``' values. The rescale box is a number box: a value outside 0 to 1 reaches the engine, whose
    message is shown beside it."""
    with gr.Row():
        spacing = gr.Dropdown([(OWN_SPACING_LABEL, ""), *((s, s) for s in TIMESTEP_SPACINGS)],
                              value=defaults.timestep_spacing, label="Timestep spacing",
                              info="timestep_spacing: trailing starts at T - 1 (Lin et al. 2023)",
                              elem_id=f"{prefix}-spacing")
        phi = gr.Number(value=defaults.guidance_rescale, step=0.05, label="Guidance rescale φ (0 to 1; 0 = off)",
                        info="guidance_rescale: Lin et al. 2023 use 0.7", elem_id=f"{prefix}-guidance-rescale") \
            if rescale else None
    return spacing, phi
