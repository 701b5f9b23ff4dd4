"""The device's queue of sampling runs as the facade uses it: one run at a time, on the worker process or on the
calling thread here, and a batch count's runs one after another with their grid.

:class:`Runs` is called like a loop: ``runs(kind, request, cancel, history, views)`` yields ``Started``, ``Step``
... ``Done``. What is known to fail (a model not here, of the other kind, a missing LoRA) is refused first.
"""

from __future__ import annotations

import secrets
import threading
from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterator

from engine.cancel import CancelToken, check
from engine.events import BatchDone, Done, Started, Step, StepsDrawn
from engine.models.registry import default_model
from engine.sampling import unconditional
from engine.records.outputs import save_png
from engine.sampling.views import DEFAULT_VIEWS
from engine.validation import check_batch_count
from engine.worker.child import MODEL_KIND, run_events
from engine.worker.process import DeviceWorker, RunRecord

ACTIVITY = {"txt2img": "a text-to-image run", "probe": "a timing probe", "img2img": "an img2img run",
            "sdedit": "an img2img run"}  # what holds the device, in words; any other kind is an unconditional run


class Runs:
    """Sampling runs on ``worker`` (None: in this process, on the calling thread, with ``registry``'s models)."""

    def __init__(self, registry, worker: DeviceWorker | None, outputs_dir: str | Path):
        self.registry, self.worker, self.outputs_dir = registry, worker, outputs_dir
        # One sampling run on the device at a time. In this process the run holds the lock in its own thread
        # until its loop has really ended; the worker process takes its runs one at a time.
        self._device = threading.Lock()

    def __call__(self, kind: str, request, cancel: CancelToken | None, history: str = "drawn",
                 views=DEFAULT_VIEWS) -> Iterator[Started | Step | Done | StepsDrawn]:
        """A sampling run of ``kind`` (see ``MODEL_KIND``); what is known to fail is refused first. ``views``: the
        extra views streamed steps carry (here every view is drawn on first look)."""
        model_kind = MODEL_KIND[kind]
        self.registry.check_available(request.model or default_model(model_kind), model_kind)
        if kind == "txt2img":
            self.registry.lora_file(request.model, request.lora)  # a missing or unfitting LoRA, before the queue
        if self.worker is not None:
            yield from self.worker.iter_run(kind, request, cancel=cancel, history=history, views=views)
            return
        with self._device:
            check(cancel, 0)  # stopped while waiting for the device: nothing to load
            for event in run_events(self.registry, kind, request, cancel=cancel,
                                    outputs_dir=self.outputs_dir, views=views):
                yield event
                if isinstance(event, Done) and history == "after":  # here every preview is drawn on first look
                    yield StepsDrawn(event.steps)

    def start(self) -> None:
        """Start the worker now, so the first run does not wait for it to import torch."""
        if self.worker is not None:
            self.worker.start()

    def close(self) -> None:
        """Stop the worker process, if any."""
        if self.worker is not None:
            self.worker.close()

    def recent(self) -> list[RunRecord]:
        """The worker's latest runs, oldest first: when each was queued, began and ended, and how."""
        return self.worker.recent() if self.worker is not None else []

    def interrupt(self) -> bool:
        """Stop the run that holds the device now, whoever started it, at its next step; False when none does."""
        return self.worker.interrupt() if self.worker is not None else False

    def forget(self, name: str) -> None:
        """Drop ``name``'s cached pipeline here and in the worker (a training run's new checkpoint)."""
        self.registry.forget(name)
        if self.worker is not None:
            self.worker.forget(name)

    def activity(self) -> str | None:
        """What holds the device now, in words ("a text-to-image run", "an unconditional run"), or None."""
        for record in reversed(self.recent()):
            if record.started is not None and record.ended is None:
                return ACTIVITY.get(record.kind, "an unconditional run")
        return None


def iter_batch(kind: str, request, batch_count: int, run: Callable[[object], Iterator],
               outputs_dir: str | Path) -> Iterator:
    """``batch_count`` runs of ``request`` (``run(request)`` gives one run's events), seeds s, s+1, ... from its seed
    (drawn once where it is -1); each run's events are passed on, tagged in their info with ``batch_index`` and
    ``batch_count``; then a :class:`BatchDone` with the grid of all their images, saved beside them under
    ``outputs_dir``. One cancel token ends the whole batch: a stopped run raises and no later run starts. A request
    that names no model runs the built-in of ``kind``."""
    # 1. One run is one run: nothing is tagged, no grid.
    request = replace(request, model=request.model or default_model(MODEL_KIND[kind]))
    check_batch_count(batch_count)
    batch_count = int(batch_count)
    if batch_count == 1:
        yield from run(request)
        return
    # 2. Seeds s .. s+N-1, all valid.
    seed = request.seed if request.seed >= 0 else secrets.randbelow(2**32)
    check_batch_count(batch_count, seed)
    # 3. The runs, one after another on the device's queue.
    dones: list[Done] = []
    for index in range(batch_count):
        for event in run(replace(request, seed=seed + index)):
            if isinstance(event, (Started, Done)):
                event = replace(event, info={**event.info, "batch_index": index + 1, "batch_count": batch_count})
            if isinstance(event, Done):
                dones.append(event)
            yield event
    # 4. Their images as one grid, saved beside them with the first run's parameters.
    images = [image for done in dones for image in done.images]
    grid = unconditional.image_grid(images)
    seeds = [d.info["seed"] for d in dones]
    info = {**dones[0].info, "seeds": seeds}
    first = dones[0].record  # the grid's settings are the first run's and the count: no run to replay alone
    record = {k: first[k] for k in ("format", "version", "kind", "request", "model") if k in first}
    path = save_png(grid, info, outputs_dir, kind, suffix="-grid",
                    record={**record, "batch_count": batch_count, "seeds": seeds})
    yield BatchDone(seeds=tuple(d.info["seed"] for d in dones),
                    paths=tuple(p for d in dones for p in d.paths), grid=str(path), image=grid, info=info)
