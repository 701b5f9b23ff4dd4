"""The worker process: loads models and runs sampling requests one at a time, sending their events back.

Three threads: the main one receives messages (runs, cancels, forgets); a runner takes the runs in order
and sends their events; the denoising loop of the current run runs in ``stream_latest``'s worker thread.
Step events go out at most every ``min_interval`` seconds (the newest wins, the last is always sent),
with their preview tensors as numpy arrays, so the server draws the previews and no tensor crosses.
"""

from __future__ import annotations

import copy
import functools
import gc
import logging
import queue
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from engine.cancel import CancelToken, check
from engine.errors import Cancelled, WorkbenchError
from engine.events import Done, Preview, Step, StepsDrawn
from engine.sampling.preview import upscale_nearest
from engine.streaming import stream_latest

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerConfig:
    models_dir: Path
    outputs_dir: Path
    device: str  # as --device takes it
    torch_threads: int | None  # intra-op threads; None leaves torch's default
    min_interval: float  # seconds between step events sent to the server
    model_cache_bytes: int | None = None  # the model cache's budget (--model-cache-gb); None: from the memory


# A run's kind -> the kind of model it loads. "probe": a few unconditional steps, saved nowhere, that time a step;
# "img2img" and "sdedit": an image noised to a strength's t, then denoised by a text-to-image or unconditional model.
MODEL_KIND = {"txt2img": "txt2img", "unconditional": "unconditional", "probe": "unconditional",
              "img2img": "txt2img", "sdedit": "unconditional"}


def loop_of(kind: str):
    """The sampling loop of a run of ``kind`` (a key of ``MODEL_KIND``)."""
    from engine.sampling.img2img import iter_img2img, iter_sdedit
    from engine.sampling.txt2img import iter_txt2img
    from engine.sampling.unconditional import iter_probe, iter_unconditional

    return {"txt2img": iter_txt2img, "unconditional": iter_unconditional, "probe": iter_probe,
            "img2img": iter_img2img, "sdedit": iter_sdedit}[kind]


def loop_options(kind: str, views=None) -> dict:
    """The loop's options a run's views ask for: the text-to-image loop collects cross-attention maps only where
    the "attention" view is named (None, all views of the stream, does not include it: it costs a step more)."""
    return {"attention": True} if kind == "txt2img" and views is not None and "attention" in views else {}


def run_events(registry, kind: str, request, *, cancel: CancelToken | None, outputs_dir, views=None):
    """The events of a run of ``kind``: its model from ``registry``, the whole state the run depends on set, then its
    loop. Every run shares the cached pipeline with the runs before it, so each sets what it depends on, never
    inheriting it: the LoRA and its scale (the request's; none for a request without one, img2img's included)
    and the attention processors (the model's own: :func:`engine.sampling.fast.reset`). Compiling is the request's
    (a compiled UNet is a wrapper beside the model, never the model), and each loop builds its scheduler afresh
    from the model's config. The loops write what was set into the run's info and record (``state``); the run's
    ``Done`` is recorded and saved in ``outputs_dir`` here (a probe's is neither: :mod:`engine.records.runs`)."""
    from engine.records.runs import iter_saved
    from engine.sampling import fast

    pipe = yield from registry.iter_load(request.model, MODEL_KIND[kind], cancel=cancel)  # Loading events
    if MODEL_KIND[kind] == "txt2img":
        registry.use_lora(pipe, request.model, getattr(request, "lora", ""), getattr(request, "lora_scale", 1.0))
    fast.reset(pipe)
    events = loop_of(kind)(request, pipe=pipe, cancel=cancel, **loop_options(kind, views))
    yield from events if kind == "probe" else iter_saved(kind, events, pipe=pipe, outputs_dir=outputs_dir)


def already_drawn(array: np.ndarray) -> np.ndarray:
    """The previewer of a preview drawn in the worker (a VAE decode needs the model there)."""
    return array


def portable_preview(preview: Preview | None) -> Preview | None:
    """A preview that crosses to the server: numpy in, numpy-only previewer; drawn here where it needs a model."""
    from engine.sampling.fast import DevicePreviewer
    from engine.sampling.preview import LatentRGBPreviewer, PixelPreviewer, X0Previewer, as_array
    from engine.sampling.views import AttentionMaps, GuidanceHeatmap

    if preview is None:
        return None
    previewer = preview.previewer
    if isinstance(previewer, DevicePreviewer):  # drawn on the GPU here, sent at latent size, enlarged in the server
        return Preview(previewer.small(preview.tensor), functools.partial(upscale_nearest, min_side=previewer.min_side))
    inner = previewer.func if isinstance(previewer, functools.partial) else previewer
    if isinstance(inner, X0Previewer):
        inner = inner.inner
    if isinstance(inner, (LatentRGBPreviewer, PixelPreviewer, GuidanceHeatmap, AttentionMaps)):
        tensor = preview.tensor
        array = tuple(as_array(t) for t in tensor) if isinstance(tensor, tuple) else as_array(tensor)
        return Preview(array, previewer)
    native = _at_native_size(previewer)
    if native is not None:  # drawn here, sent small, enlarged in the server (a 256 px frame is 64x the bytes)
        small, min_side = native
        return Preview(Preview(preview.tensor, small).array(), functools.partial(upscale_nearest, min_side=min_side))
    return Preview(preview.array(), already_drawn)


def _at_native_size(previewer):
    """(the same VAE previewer drawing at the decoded size, the size it enlarges to), or None."""
    from engine.sampling.preview import VaePreviewer, X0Previewer

    if isinstance(previewer, VaePreviewer):
        return VaePreviewer(previewer.vae, min_side=1), previewer.min_side
    if isinstance(previewer, X0Previewer) and isinstance(previewer.inner, VaePreviewer):
        small = copy.copy(previewer)
        small.inner = VaePreviewer(previewer.inner.vae, min_side=1)
        return small, previewer.inner.min_side
    return None


def costly(preview: Preview | None) -> bool:
    """Whether drawing ``preview`` needs the model here (a VAE decode), not only numpy in the server."""
    return preview is not None and _at_native_size(preview.previewer) is not None


def portable(event, views=None):
    """The event with its previews made portable (see :func:`portable_preview`); a ``Done``'s history drawn whole.
    ``views``: the names of a step's extra views to carry (None: all); its measures always go, drawn here."""
    if isinstance(event, Step):
        return replace(event, preview_xt=portable_preview(event.preview_xt),
                       preview_x0=portable_preview(event.preview_x0), views=portable_views(event.views, views))
    if isinstance(event, Done):
        return next(iter(PortableRun("drawn").events(event)))
    return event


def portable_views(step_views: dict, names=None, done: dict | None = None) -> dict:
    """A step's extra views made portable: those in ``names`` (None: all) and its measures; ``done``: views made
    portable before, reused."""
    done = done or {}
    return {name: done[name] if name in done else portable_preview(preview) for name, preview in step_views.items()
            if names is None or name in names or name == "measures"}


class PortableRun:
    """One run's events made portable, each costly preview drawn once: the frames drawn for the stream are kept,
    and a ``Done``'s history reuses them; its other costly frames are drawn or filled as ``history`` says (one
    of ``HISTORY_MODES``). Streamed steps carry the extra views named in ``views`` (None: all); the history
    carries every view of every step."""

    def __init__(self, history: str = "drawn", views=None):
        self.history = history
        self.views = None if views is None else tuple(views)
        self.sent: dict[int, Step] = {}  # step number -> the portable step sent to the server

    def events(self, event):
        """What to send for ``event``, in order (a generator: ``Done`` goes out before ``StepsDrawn`` is drawn)."""
        if isinstance(event, Step):
            self.sent[event.step] = portable(event, self.views)
            yield self.sent[event.step]
            return
        if not isinstance(event, Done):
            yield event
            return
        steps, gaps = self._history(event.steps)
        if self.history == "drawn":
            yield replace(event, steps=self._drawn(steps, gaps))
            return
        yield replace(event, steps=self._filled(steps, gaps))
        if self.history == "after":
            yield StepsDrawn(self._drawn(steps, gaps))

    def _history(self, steps) -> tuple[list[Step], list[int]]:
        """The portable steps, and the indices of those whose costly x0 preview is not drawn yet (left as it is)."""
        out, gaps = [], []
        for i, step in enumerate(steps):
            if step.preview_x0 is None and step.preview_xt is None:  # a step the loop keeps no previews of
                out.append(portable(step))
            elif step.step in self.sent:
                sent = self.sent[step.step]
                out.append(replace(sent, views=portable_views(step.views, done=sent.views)))
            elif costly(step.preview_x0):
                out.append(replace(step, preview_xt=portable_preview(step.preview_xt),
                                   views=portable_views(step.views)))
                gaps.append(i)
            else:
                out.append(portable(step))
        return out, gaps

    @staticmethod
    def _drawn(steps: list[Step], gaps: list[int]) -> tuple[Step, ...]:
        drawn = _vae_history([steps[i] for i in gaps])
        out = list(steps)
        for k, i in enumerate(gaps):
            out[i] = replace(steps[i], preview_x0=Preview(drawn[k], _enlarge(steps[i].preview_x0.previewer)))
        return tuple(out)

    @staticmethod
    def _filled(steps: list[Step], gaps: list[int]) -> tuple[Step, ...]:
        """Each gap shows the nearest drawn frame before it (after it, for gaps before the first)."""
        missing = set(gaps)
        drawn = [i for i in range(len(steps)) if i not in missing]
        out = list(steps)
        for i in gaps:
            before = [k for k in drawn if k < i]
            near = before[-1] if before else next((k for k in drawn if k > i), None)
            out[i] = replace(steps[i], preview_x0=steps[near].preview_x0 if near is not None else None)
        return tuple(out)


def _enlarge(previewer):
    """The server-side half of a VAE preview sent small: nearest-neighbour up to the previewer's size."""
    return functools.partial(upscale_nearest, min_side=_at_native_size(previewer)[1])


def _vae_history(steps) -> dict[int, np.ndarray]:
    """The x0 previews of ``steps`` that need the VAE, drawn in one batched decode: {index in steps: image}."""
    from engine.sampling.preview import VaePreviewer, X0Previewer, as_array, x0_from

    pending = []
    for i, step in enumerate(steps):
        preview = step.preview_x0
        previewer = preview.previewer if preview is not None else None
        if isinstance(previewer, VaePreviewer):
            pending.append((i, as_array(preview.tensor), previewer))
        elif isinstance(previewer, X0Previewer) and isinstance(previewer.inner, VaePreviewer):
            model_output, sample = (as_array(x) for x in preview.tensor)
            x0 = x0_from(model_output, sample, previewer.alpha_bar, previewer.prediction_type)
            pending.append((i, x0, previewer.inner))
    if not pending:
        return {}
    images = pending[0][2].many([x0 for _, x0, _ in pending], min_side=1)  # sent small, enlarged in the server
    return {i: image for (i, _, _), image in zip(pending, images)}


class Runner:
    """The worker's state: its models and the run under way."""

    def __init__(self, config: WorkerConfig, conn):
        from engine.models.devices import resolve_device
        from engine.models.registry import ModelRegistry

        self.config = config
        self.conn = conn
        self.send_lock = threading.Lock()
        self.registry = ModelRegistry(config.models_dir, resolve_device(config.device),
                                      cache_bytes=config.model_cache_bytes)
        self.runs: queue.Queue = queue.Queue()
        self.cancelled: set[int] = set()  # runs stopped before they began
        self.current: tuple[int, CancelToken] | None = None
        self.lock = threading.Lock()

    def send(self, *message) -> None:
        with self.send_lock:
            self.conn.send(message)

    def events(self, kind: str, request, cancel: CancelToken, views=None):
        check(cancel, 0)
        yield from run_events(self.registry, kind, request, cancel=cancel, outputs_dir=self.config.outputs_dir,
                              views=views)

    def run(self, run_id: int, kind: str, request, history: str = "drawn", views=None) -> None:
        cancel = CancelToken()
        with self.lock:
            if run_id in self.cancelled:
                self.cancelled.discard(run_id)
                cancel.cancel()
            self.current = (run_id, cancel)
        failed, how = True, "done"
        log.info("run %d started at %.3f (%s)", run_id, time.time(), kind)
        self.send("started", run_id, None)
        try:
            events = stream_latest(lambda token: self.events(kind, request, token, views), cancel=cancel,
                                   min_interval=self.config.min_interval)
            run = PortableRun(history, views)
            for event in events:
                for message in run.events(event):
                    self.send("event", run_id, message)
            self.send("end", run_id, None)
            failed = False
        except Cancelled as exc:
            how = f"stopped: {exc}"
            self.send("end", run_id, exc)
        except WorkbenchError as exc:
            how = f"refused: {exc}"
            self.send("end", run_id, exc)
        except Exception as exc:  # a bug: its traceback goes to this process's log, its type to the server
            how = f"failed: {type(exc).__name__}"
            log.exception("run %d (%s) failed", run_id, kind)
            self.send("end", run_id, _picklable(exc))
        finally:
            log.info("run %d ended at %.3f (%s)", run_id, time.time(), how)
            with self.lock:
                self.current = None
            if failed:  # a traceback holds the run's tensors in a reference cycle: free them now
                gc.collect()  # (not after every run: a full collection costs a tenth of a second here)
            _empty_device_cache()

    def cancel(self, run_id: int) -> None:
        with self.lock:
            if self.current is not None and self.current[0] == run_id:
                self.current[1].cancel()
            else:
                self.cancelled.add(run_id)

    def run_forever(self) -> None:
        while True:
            item = self.runs.get()
            if item is None:
                return
            self.run(*item)


def _picklable(exc: Exception) -> Exception:
    import pickle

    try:
        pickle.dumps(exc)
        return exc
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")


def _empty_device_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def serve(conn, config: WorkerConfig) -> None:
    """The worker process's main function: answer the server's messages until it says stop or goes away."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s (worker): %(message)s")
    import torch

    if config.torch_threads:
        torch.set_num_threads(config.torch_threads)
    torch.set_grad_enabled(False)
    runner = Runner(config, conn)
    thread = threading.Thread(target=runner.run_forever, name="worker-runner", daemon=True)
    thread.start()
    runner.send("ready", 0, None)
    try:
        while True:
            message = conn.recv()
            kind = message[0]
            if kind == "run":
                runner.runs.put(message[1:])
            elif kind == "cancel":
                runner.cancel(message[1])
            elif kind == "forget":
                runner.registry.forget(message[1])
            elif kind == "stop":
                break
    except (EOFError, OSError):  # the server went away
        pass
    finally:
        with runner.lock:
            if runner.current is not None:
                runner.current[1].cancel()
        runner.runs.put(None)
        thread.join(timeout=10)

