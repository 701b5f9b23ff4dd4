"""The server's side of the device worker under threads, each race forced (no sleep that hopes for it): two sends
never interleave on the pipe, and the reader thread survives a run added to the history while it reads it."""

import queue
import threading
from collections import deque

from engine.worker.process import HISTORY, DeviceWorker

HANG = 30  # seconds: only a guard that ends a test that would otherwise hang; never reached when it passes


class ContendedLock:
    """A lock that sets ``contended`` when a thread finds it held and waits for it."""

    def __init__(self, contended: threading.Event):
        self.lock = threading.Lock()
        self.contended = contended

    def __enter__(self):
        if not self.lock.acquire(blocking=False):
            self.contended.set()
            self.lock.acquire()
        return self

    def __exit__(self, *exc):
        self.lock.release()


class Pipe:
    """The server's end of the pipe: ``send`` records what goes out; the first message's send stops half-way until
    ``release`` is set (a big message written in several pieces); ``recv`` hands out what ``incoming`` holds."""

    def __init__(self, entered: threading.Event):
        self.log: list[str] = []
        self.halfway = threading.Event()
        self.release = threading.Event()
        self.entered = entered  # set when a later send begins
        self.incoming: queue.Queue = queue.Queue()

    def send(self, message):
        first = not self.log
        self.log.append(f"begin {message[0]}")
        if first:
            self.halfway.set()
            assert self.release.wait(HANG)
        else:
            self.entered.set()
        self.log.append(f"end {message[0]}")

    def recv(self):
        message = self.incoming.get(timeout=HANG)
        if message is None:
            raise EOFError
        return message


class Process:
    exitcode = 0

    def join(self, timeout=None):
        pass

    def kill(self):
        pass


def idle_worker(pipe: Pipe) -> DeviceWorker:
    worker = DeviceWorker(config=None)
    worker.start = lambda: None  # the pipe above stands for a started worker
    worker._conn = pipe
    return worker


def test_a_cancel_sent_while_a_run_is_half_sent_goes_out_after_it():
    """A run's message is half-written when a Stop sends its cancel from another thread: the cancel waits."""
    second = threading.Event()  # the cancel's send began, or found the pipe held and waits
    pipe = Pipe(second)
    worker = idle_worker(pipe)
    worker._send_lock = ContendedLock(second)
    run = threading.Thread(target=worker._send, args=(("run", 1, "img2img", "a big image"),))
    run.start()
    assert pipe.halfway.wait(HANG)
    cancel = threading.Thread(target=worker._send, args=(("cancel", 1),), kwargs={"start": False})
    cancel.start()
    assert second.wait(HANG)
    pipe.release.set()
    run.join(HANG)
    cancel.join(HANG)
    assert pipe.log == ["begin run", "end run", "begin cancel", "end cancel"]


class PausingHistory(deque):
    """A history whose next read, once ``armed``, stops after it began (before its first record) until ``resume``
    is set."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.armed = False
        self.paused = threading.Event()
        self.resume = threading.Event()
        self.appended = threading.Event()

    def _pausing(self, records):
        if self.armed:
            self.armed = False
            self.paused.set()
            assert self.resume.wait(HANG)
        yield from records

    def __iter__(self):
        return self._pausing(super().__iter__())

    def __reversed__(self):
        return self._pausing(super().__reversed__())

    def append(self, record):
        super().append(record)
        self.appended.set()


def test_the_reader_survives_a_run_queued_while_it_stamps_another():
    """The reader is stamping run 1's start when run 2 is queued from another thread: both runs still end."""
    added = threading.Event()  # run 2's record was appended, or its append found the history held and waits
    sent = threading.Event()  # run 2's message went out (so the worker can answer it)
    pipe = Pipe(sent)
    pipe.release.set()
    worker = idle_worker(pipe)
    worker._history_lock = ContendedLock(added)
    worker.history = history = PausingHistory(maxlen=HISTORY)
    history.appended = added
    reader = threading.Thread(target=worker._read, args=(pipe, Process(), threading.Event()), daemon=True)
    reader.start()
    results: dict[int, list] = {}

    def run(n):
        results[n] = list(worker.iter_run("probe", f"request {n}"))

    first = threading.Thread(target=run, args=(1,), daemon=True)
    first.start()
    assert pipe.halfway.wait(HANG)  # run 1 is sent: it is in the history
    history.armed = True
    pipe.incoming.put(("started", 1, None))
    assert history.paused.wait(HANG)  # the reader is inside the history, looking for run 1
    added.clear()
    second = threading.Thread(target=run, args=(2,), daemon=True)
    second.start()
    assert added.wait(HANG)
    history.resume.set()
    assert sent.wait(HANG)
    for n in (1, 2):
        pipe.incoming.put(("event", n, f"step of {n}"))
        pipe.incoming.put(("end", n, None))
    first.join(HANG)
    second.join(HANG)
    assert results == {1: ["step of 1"], 2: ["step of 2"]}
    assert [(r.run_id, r.outcome) for r in worker.recent()] == [(1, "done"), (2, "done")]
    assert reader.is_alive()
    pipe.incoming.put(None)
    reader.join(HANG)
