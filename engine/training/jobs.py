"""One training job at a time, in a background thread, with a status anyone can poll.

The job belongs to the process, not to a page: closing the browser does not stop
it, and a page opened later reads the same :meth:`TrainingManager.status`. Stop
asks the loop to save a checkpoint and end; a second Start while a job runs raises
:class:`JobRunningError`.
"""

from __future__ import annotations

import gc
import logging
import math
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np

from engine.cancel import CancelToken
from engine.training.checkpoints import recover_all
from engine.errors import JobRunningError, WorkbenchError
from engine.files import shown_paths
from engine.training.loop import iter_train
from engine.training.recipes import steps_hint
from engine.training.request import TrainCheckpoint, TrainDone, TrainRequest, TrainSample, TrainStarted, TrainStep

log = logging.getLogger(__name__)

SMOOTHING = 0.9  # TensorBoard's default weight for the smoothed loss curve
IDLE, STARTING, RUNNING, STOPPING, FINISHED, STOPPED, FAILED = (
    "idle", "starting", "running", "stopping", "finished", "stopped", "failed")


@dataclass(frozen=True, eq=False)
class TrainStatus:
    """A snapshot of the current (or last) job. ``losses[i]`` is the loss of step ``i + 1``."""

    state: str = IDLE
    run_name: str = ""
    run_dir: str = ""
    step: int = 0
    total: int = 0
    start_step: int = 0  # where this session began (the checkpoint's step when resuming)
    losses: tuple[float, ...] = ()  # raw, one per step
    smoothed: tuple[float, ...] = ()  # debiased exponential moving average of ``losses``
    lr: float | None = None
    lrs: tuple[float, ...] = ()  # the learning rate of each step, as ``losses``
    bucket_edges: tuple[int, ...] = ()  # timestep buckets: bucket i holds t in [edges[i], edges[i+1]); () = none
    bucket_steps: tuple[int, ...] = ()  # the steps of the reports below
    bucket_losses: tuple[tuple[float | None, ...], ...] = ()  # per report, the mean loss in each bucket since the last
    steps_per_sec: float = 0.0
    images_per_sec: float = 0.0
    eta: float | None = None  # seconds
    elapsed: float = 0.0
    grid: np.ndarray | None = None  # (H, W, 3) uint8, the latest sample grid
    grid_step: int | None = None
    grid_caption: str = ""  # how the grid is laid out, where the objective says (a LoRA run's two panels)
    checkpoint: str | None = None  # folder of the latest checkpoint (a DDPMPipeline, or a LoRA run's adapters)
    checkpoint_step: int | None = None
    lora: str | None = None  # a LoRA run's file under models_dir/loras/, as the Text to image tab lists it
    method: str = "full"  # the run's: "full" or "lora"
    message: str = ""  # what the data held, or why the job failed
    hint: str = ""  # how many steps the samples need before they look like something, where measured

    @property
    def active(self) -> bool:
        return self.state in (STARTING, RUNNING, STOPPING)


def smooth(values, weight: float = SMOOTHING) -> list[float]:
    """Exponential moving average with TensorBoard's bias correction (early points are not pulled to 0)."""
    out, ema = [], 0.0
    for n, value in enumerate(values, 1):
        ema = weight * ema + (1 - weight) * value
        out.append(ema / (1 - weight**n))
    return out


class TrainingManager:
    """Runs :func:`engine.training.loop.iter_train` jobs one at a time and keeps their status."""

    def __init__(self, models_dir: str | Path, data_dir: str | Path, *, device: str = "auto",
                 on_checkpoint: Callable[[str, Path], None] | None = None, smoothing: float = SMOOTHING):
        self.models_dir = Path(models_dir)
        self.data_dir = Path(data_dir)
        self.device = device
        self.on_checkpoint = on_checkpoint
        self.smoothing = smoothing
        self._lock = threading.Lock()
        self._status = TrainStatus()
        self._thread: threading.Thread | None = None
        self._cancel: CancelToken | None = None
        self._setup_done = threading.Event()
        self._setup_error: BaseException | None = None
        self._before = self._status
        recover_all(self.models_dir)  # a process killed mid-save leaves its previous checkpoint in place

    # -- control ----------------------------------------------------------------------------
    def start(self, request: TrainRequest, *, wait_for_setup: bool = True) -> TrainStatus:
        """Start ``request`` in the background.

        With ``wait_for_setup`` (the default) this returns once the data is checked and
        the first step is about to run, and raises the :class:`WorkbenchError` (bad data,
        a taken run name, ...) that stopped it from starting. Raises
        :class:`JobRunningError` while another job is active.
        """
        request = request.resolved()
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                s = self._status
                raise JobRunningError(
                    f"a training job is running ({s.run_name!r}, step {s.step} of {s.total or '?'}); "
                    "stop it or wait for it to finish before starting another"
                )
            self._cancel = CancelToken()
            self._before = self._status  # shown again if this start is refused
            self._status = TrainStatus(state=STARTING, run_name=request.run_name,
                                       run_dir=str(self.models_dir / request.run_name), hint=steps_hint(request))
            self._setup_done.clear()
            self._setup_error = None
            self._thread = threading.Thread(target=self._run, args=(request, self._cancel),
                                            name=f"train-{request.run_name}", daemon=True)
            self._thread.start()
        if wait_for_setup:
            self._setup_done.wait()
            if isinstance(self._setup_error, WorkbenchError):
                raise self._setup_error
        return self.status()

    def stop(self) -> TrainStatus:
        """Ask the job to save a checkpoint and end; returns at once (see :meth:`wait`)."""
        with self._lock:
            if self._cancel is not None and self._status.active:
                self._cancel.cancel()
                self._status = replace(self._status, state=STOPPING)
            return self._status

    def wait(self, timeout: float | None = None) -> TrainStatus:
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return self.status()

    def status(self) -> TrainStatus:
        with self._lock:
            return self._status

    @property
    def busy(self) -> bool:
        return self.status().active

    # -- the worker thread -----------------------------------------------------------------------
    def _run(self, request: TrainRequest, cancel: CancelToken) -> None:
        try:
            events = iter_train(request, models_dir=self.models_dir, data_dir=self.data_dir, cancel=cancel,
                                device=self.device, on_checkpoint=self.on_checkpoint)
            for event in events:
                self._apply(event)
                if isinstance(event, TrainStarted):
                    gc.freeze()  # what setting up imported and built stays out of full collections (see below)
                    self._setup_done.set()
        except WorkbenchError as exc:
            self._fail(exc, str(exc))
        except Exception as exc:  # a bug: keep the traceback in the log, show a short message
            log.exception("training job %s failed", request.run_name)
            cause = shown_paths(str(exc), {"models": self.models_dir, "data": self.data_dir})
            self._fail(exc, f"training failed ({type(exc).__name__}: {cause}); the log has the details")
        finally:
            self._setup_done.set()
            _collect_frozen()
            _free_device_memory()

    def _fail(self, exc: BaseException, message: str) -> None:
        with self._lock:
            if not self._setup_done.is_set():  # refused before its first step: the last run's status stays
                self._setup_error = exc if isinstance(exc, WorkbenchError) else WorkbenchError(message)
                self._status = self._before
                return
            self._status = replace(self._status, state=FAILED, message=message, eta=None)

    def _apply(self, event) -> None:
        with self._lock:
            s = self._status
            if isinstance(event, TrainStarted):
                losses = tuple(event.history)
                s = replace(s, state=STOPPING if s.state == STOPPING else RUNNING, run_dir=event.run_dir,
                            step=event.start_step, total=event.total, start_step=event.start_step,
                            losses=losses, smoothed=tuple(smooth(losses, self.smoothing)),
                            message=event.data.summary(), lrs=tuple(event.lr_history),
                            bucket_edges=event.bucket_edges,
                            bucket_steps=tuple(step for step, _ in event.bucket_history),
                            bucket_losses=tuple(values for _, values in event.bucket_history),
                            grid_caption=event.info.get("grid_caption", ""),
                            method=event.info.get("method", "full"))
            elif isinstance(event, TrainStep):
                losses = s.losses + event.losses
                smoothed = s.smoothed + tuple(self._continue_smoothing(s, event.losses))
                s = replace(s, step=event.step, total=event.total, losses=losses, smoothed=smoothed, lr=event.lr,
                            steps_per_sec=event.steps_per_sec, images_per_sec=event.images_per_sec,
                            eta=event.eta if math.isfinite(event.eta) else None, elapsed=event.elapsed,
                            lrs=s.lrs + event.lrs)
                if event.bucket_loss:
                    s = replace(s, bucket_steps=s.bucket_steps + (event.step,),
                                bucket_losses=s.bucket_losses + (event.bucket_loss,))
            elif isinstance(event, TrainSample):
                s = replace(s, grid=event.grid, grid_step=event.step)
            elif isinstance(event, TrainCheckpoint):
                s = replace(s, checkpoint=event.path, checkpoint_step=event.step, lora=event.published)
            elif isinstance(event, TrainDone):
                s = replace(s, state=STOPPED if event.stopped else FINISHED, step=event.step, eta=0.0,
                            elapsed=event.elapsed)
            self._status = s

    def _continue_smoothing(self, s: TrainStatus, new: tuple[float, ...]) -> list[float]:
        """Extend the smoothed curve by ``new`` without recomputing it from the start."""
        w, n = self.smoothing, len(s.smoothed)
        ema = s.smoothed[-1] * (1 - w**n) if n else 0.0  # undo the bias correction
        out = []
        for value in new:
            n += 1
            ema = w * ema + (1 - w) * value
            out.append(ema / (1 - w**n))
        return out


def _collect_frozen() -> None:
    """After a run: collect what it left in reference cycles, then freeze what lives on.

    The job runs in the caller's process (the app's server), and its first run imports the training stack there
    (accelerate, datasets, peft, torchvision, more of diffusers and transformers: about 120,000 objects). Each
    full collection walked them: 45-60 ms in the 2-core server, every second or so while requests came in, each
    request waiting meanwhile (bench/page.py, the p99 of its routes during and after training). So a run freezes
    what exists once it is set up (``gc.freeze``: left out of collections, still freed by reference counting), and
    here freezes what the run imported later. A frozen object in a cycle that became garbage would stay: after
    full and LoRA runs a full pass finds no model, module or tensor of theirs left (checked by unfreezing).
    """
    gc.collect()
    gc.freeze()


def _free_device_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
