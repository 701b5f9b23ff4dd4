"""How long an unconditional run will take here, before it starts: the seconds a step of its model and batch size
took in the last such run on this device, else in a short probe run queued like any other."""

from __future__ import annotations

from dataclasses import replace
from typing import Iterator

from engine.cancel import CancelToken
from engine.events import Done, Started, Step
from engine.models.registry import default_model
from engine.sampling.prerun import default_steps
from engine.sampling.unconditional import PROBE_STEPS, RunEstimate, UnconditionalRequest, seconds_per_step
from engine.sampling.views import DEFAULT_VIEWS


class StepTimes:
    """Seconds a step of an unconditional (model, batch size) took here, and how it was measured; ``run`` is the
    device's queue (:class:`engine.worker.runs.Runs`), ``registry`` reads the models' default steps."""

    def __init__(self, registry, run):
        self.registry, self.run = registry, run
        self.seconds: dict[tuple[str, int], tuple[float, str]] = {}

    def timed(self, request: UnconditionalRequest, cancel: CancelToken | None,
              views=DEFAULT_VIEWS) -> Iterator[Started | Step | Done]:
        """One unconditional run (its streamed steps carrying ``views``); its time a step is kept for
        :meth:`estimate` (a stopped run's too)."""
        last, done = None, None
        try:
            for event in self.run("unconditional", request, cancel, views=views):
                if isinstance(event, Step):
                    last = event
                elif isinstance(event, Done):
                    done = event
                yield event
        finally:
            key = (request.model, request.batch_size)
            if done is not None:
                self.seconds[key] = (seconds_per_step(done.steps), "the last run")
            elif last is not None and last.step >= PROBE_STEPS:  # stopped: its steps so far, past the warm-up
                self.seconds[key] = (last.elapsed / last.step, "the last run")

    def estimate(self, request: UnconditionalRequest, *, probe: bool = True) -> RunEstimate | None:
        """How long ``request`` would take on this device: its steps times the seconds a step of its model and batch
        size took in the last such run here, else (``probe``) in a probe run of ``PROBE_STEPS`` steps, saved nowhere,
        queued on the device like any run. None where nothing was measured (and ``probe`` is False) or the model's
        steps are unknown."""
        request = replace(request, model=request.model or default_model("unconditional"))
        steps = request.num_inference_steps or default_steps(self.registry, request.model, request.scheduler)
        key = (request.model, request.batch_size)
        if steps is None:
            return None
        if key not in self.seconds and probe:
            done = list(self.run("probe", request, None))[-1]
            self.seconds.setdefault(key, (seconds_per_step(done.steps), f"a {PROBE_STEPS}-step probe"))
        if key not in self.seconds:
            return None
        seconds, measured_by = self.seconds[key]
        return RunEstimate(num_inference_steps=int(steps), seconds_per_step=seconds, measured_by=measured_by)
