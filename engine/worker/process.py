"""The server's side of the device worker: start it, send it runs, turn its messages back into events.

:meth:`DeviceWorker.iter_run` is a generator like the loops' own: ``Started``, ``Step`` ... ``Done``,
or the run's error. Closing it (or setting its cancel token) asks the worker to stop the run and
returns at once; the worker takes runs one at a time, so a stopped run keeps the device until its loop
has ended and the next one starts after it, never beside it. If the worker dies (a crash, an
out-of-memory kill), the runs under way end with a :class:`WorkerError` and the next run starts a new one.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from dataclasses import dataclass
import logging
import multiprocessing
import queue
import threading
from typing import Iterator

from engine.cancel import CancelToken
from engine.errors import Cancelled, WorkbenchError
from engine.worker.child import WorkerConfig, serve

log = logging.getLogger(__name__)

POLL = 0.05  # seconds between looks at a run's cancel token while it waits for the worker
START_TIMEOUT = 300.0  # seconds for a fresh worker to import torch and diffusers
HISTORY = 100  # runs remembered in DeviceWorker.history


class WorkerError(WorkbenchError):
    """The device worker stopped while a run was under way."""


@dataclass
class RunRecord:
    """When a run held the device, as the server saw it (``time.monotonic()``)."""

    run_id: int
    kind: str
    queued: float
    started: float | None = None  # the worker began it (after the run before it had ended)
    ended: float | None = None
    outcome: str = ""  # "done", "stopped", "failed: ..."


class DeviceWorker:
    def __init__(self, config: WorkerConfig):
        self.config = config
        self._lock = threading.Lock()
        self._process = None
        self._conn = None
        self._ready = threading.Event()
        self._runs: dict[int, queue.Queue] = {}
        self._ids = itertools.count(1)
        self.history: deque[RunRecord] = deque(maxlen=HISTORY)  # the latest runs, oldest first (see recent())
        # Runs, cancels and forgets send from their own threads, and a run's image pickles to more than a pipe's
        # buffer, so one message may go out in several writes: one sender at a time, or two messages interleave.
        self._send_lock = threading.Lock()
        self._history_lock = threading.Lock()  # runs append records while the reader thread stamps them

    # -- life --------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the worker process if it is not running (it imports torch: seconds, not milliseconds)."""
        with self._lock:
            if self._process is not None and self._process.is_alive():
                return
            context = multiprocessing.get_context("spawn")  # fork would copy the server's threads and locks
            parent, child = context.Pipe()
            self._ready = threading.Event()
            self._process = context.Process(target=serve, args=(child, self.config), name="workbench-worker",
                                            daemon=True)
            self._process.start()
            child.close()
            self._conn = parent
            threading.Thread(target=self._read, args=(parent, self._process, self._ready),
                             name="worker-reader", daemon=True).start()

    def close(self) -> None:
        with self._lock:
            process, conn, self._process, self._conn = self._process, self._conn, None, None
        if process is None:
            return
        try:
            with self._send_lock:
                conn.send(("stop",))
        except OSError:
            pass
        process.join(timeout=10)
        if process.is_alive():
            process.kill()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def recent(self) -> list[RunRecord]:
        """A copy of :attr:`history`, oldest first, taken while no run adds to it."""
        with self._history_lock:
            return list(self.history)

    def forget(self, name: str) -> None:
        """Drop the worker's cached pipelines of ``name`` (a training checkpoint was rewritten)."""
        self._send(("forget", name), start=False)

    # -- runs ----------------------------------------------------------------------------------
    def iter_run(self, kind: str, request, *, cancel: CancelToken | None = None,
                 history: str = "drawn", views=None) -> Iterator[object]:
        """Run ``request`` on the worker (a kind of ``MODEL_KIND``), yielding its events; ``history`` (one of
        ``HISTORY_MODES``) says how ``Done.steps``'s previews are drawn; ``views``, which extra views of a step
        the streamed steps carry (None: all)."""
        cancel = cancel or CancelToken()
        run_id = next(self._ids)
        inbox: queue.Queue = queue.Queue()
        self._runs[run_id] = inbox
        record = RunRecord(run_id, kind, queued=time.monotonic())
        with self._history_lock:
            self.history.append(record)
        ended = False
        try:
            self.start()
            self._send(("run", run_id, kind, request, history, views))
            while True:
                cancel.raise_if_cancelled()  # the finally below tells the worker
                try:
                    kind_of, payload = inbox.get(timeout=POLL)
                except queue.Empty:
                    continue
                if kind_of == "started":
                    continue
                if kind_of == "event":
                    yield payload
                    continue
                ended = True
                if payload is not None:
                    raise payload
                return
        finally:
            self._runs.pop(run_id, None)
            if not ended:  # stopped or closed early: the worker ends the run at its next step
                self._send(("cancel", run_id), start=False)

    def wait_ready(self, timeout: float = START_TIMEOUT) -> bool:
        """Start the worker and wait until it answers (it has imported torch and diffusers)."""
        self.start()
        return self._ready.wait(timeout)

    # -- plumbing ----------------------------------------------------------------------------
    def _send(self, message: tuple, start: bool = True) -> None:
        with self._lock:
            conn = self._conn
        if conn is None:
            if not start:
                return
            raise WorkerError("the device worker is not running")
        try:
            with self._send_lock:
                conn.send(message)
        except (OSError, ValueError) as exc:
            if start:
                raise WorkerError(f"the device worker cannot be reached ({exc}); the next run restarts it") from exc

    def _note(self, kind: str, run_id: int, payload) -> None:
        """Stamp a run's start and end as they arrive, whether or not anyone still reads its events."""
        if kind not in ("started", "end"):
            return
        with self._history_lock:
            record = next((r for r in reversed(self.history) if r.run_id == run_id), None)
            if record is None:
                return
            if kind == "started":
                record.started = time.monotonic()
            else:
                record.ended, record.outcome = time.monotonic(), _outcome(payload)

    def _read(self, conn, process, ready: threading.Event) -> None:
        """The reader thread: hand each message to its run's inbox until the worker goes away."""
        try:
            while True:
                kind, run_id, payload = conn.recv()
                if kind == "ready":
                    ready.set()
                    continue
                self._note(kind, run_id, payload)
                inbox = self._runs.get(run_id)
                if inbox is not None:
                    inbox.put((kind, payload))
        except (EOFError, OSError):
            pass
        except Exception:  # a message that cannot be read (a bug): end the worker, so its runs fail, never hang
            log.exception("the device worker's messages cannot be read; stopping it")
            process.kill()
        process.join(timeout=1)
        code = process.exitcode
        with self._lock:
            if self._process is process:
                self._process, self._conn = None, None
        if code not in (0, None):
            log.error("the device worker stopped with exit code %s", code)
        error = WorkerError(f"the device worker stopped (exit code {code}) during the run; "
                            "the next run starts a new one")
        for inbox in list(self._runs.values()):
            inbox.put(("end", error))
        with self._history_lock:
            for record in self.history:
                if record.started is not None and record.ended is None:
                    record.ended, record.outcome = time.monotonic(), "failed: the worker stopped"


def _outcome(error: BaseException | None) -> str:
    if error is None:
        return "done"
    return "stopped" if isinstance(error, Cancelled) else f"failed: {error}"
