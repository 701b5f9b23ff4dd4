"""The device worker process: same images and previews as in-process, Stop returns at once, runs never
overlap, and a worker that dies takes only its run with it."""

import os
import signal
from dataclasses import replace

import numpy as np
import pytest

from engine.errors import Cancelled
from engine.events import Done, Loading, Started, Step
from engine.sampling.unconditional import UnconditionalRequest
from engine.worker.process import WorkerError
from engine.workbench import Folders, Workbench


@pytest.fixture(scope="module")
def benches(tmp_path_factory):
    """The same folders sampled through the worker and in this process."""
    from engine.testing.tiny import tiny_ddpm_pipeline

    root = tmp_path_factory.mktemp("worker")
    tiny_ddpm_pipeline(0).save_pretrained(root / "models" / "tiny-ddpm")
    folders = Folders(root / "models", root / "data", root / "outputs")
    worker, local = Workbench(folders, device="cpu", preview_interval=0.0), Workbench(folders, device="cpu",
                                                                                        worker=False)
    yield worker, local
    worker.close()


def run(bench, request, **kw):
    """A run's events after its model's load (a first run's ``Loading`` events come before ``Started``)."""
    events = [e for e in bench.iter_unconditional(request, **kw) if not isinstance(e, Loading)]
    assert isinstance(events[0], Started) and isinstance(events[-1], Done)
    return events


def test_the_workers_first_run_of_a_model_says_what_is_loading(benches):
    from engine.testing.tiny import tiny_ddpm_pipeline

    worker, _ = benches
    tiny_ddpm_pipeline(1).save_pretrained(worker.folders.models_dir / "fresh-ddpm")
    request = UnconditionalRequest(model="fresh-ddpm", scheduler="DDIM", num_inference_steps=2, seed=1)
    events = list(worker.iter_unconditional(request))
    assert [e.message for e in events[:2]] == ["Loading model fresh-ddpm: scheduler (1 of 2)",
                                               "Loading model fresh-ddpm: unet (2 of 2)"]
    assert isinstance(events[2], Started) and isinstance(events[-1], Done)
    assert not any(isinstance(e, Loading) for e in worker.iter_unconditional(request))  # kept: nothing loads


def test_worker_gives_the_same_images_and_previews_as_this_process(benches):
    worker, local = benches
    request = UnconditionalRequest(model="tiny-ddpm", scheduler="DPM++ 2M", num_inference_steps=6, seed=4,
                                   batch_size=2)
    theirs, ours = run(worker, request), run(local, request)
    assert np.array_equal(np.asarray(theirs[-1].images[1]), np.asarray(ours[-1].images[1]))
    steps = [e for e in theirs if isinstance(e, Step)]
    assert [s.step for s in steps] == list(range(1, 7))  # preview_interval 0: every step crosses
    local_steps = {e.step: e for e in ours if isinstance(e, Step)}
    for s in steps:  # drawn here from the numpy the worker sent: the same pixels
        assert np.array_equal(s.preview_x0.array(), local_steps[s.step].preview_x0.array())
        assert np.array_equal(s.preview_xt.array(), local_steps[s.step].preview_xt.array())


def test_closing_a_run_returns_at_once_and_the_next_waits_for_it(benches):
    worker, _ = benches
    slow = UnconditionalRequest(model="tiny-ddpm", scheduler="DDPM", num_inference_steps=1000, seed=1,
                                batch_size=16)
    events = worker.iter_unconditional(slow)
    assert isinstance(next(events), Started)
    assert isinstance(next(events), Step)
    events.close()  # how soon a close answers is bench/page.py's figure 4 (Stop), not a bound here
    run(worker, UnconditionalRequest(model="tiny-ddpm", scheduler="DDIM", num_inference_steps=2, seed=1))
    stopped, following = worker.recent_runs()[-2:]
    assert stopped.outcome == "stopped" and following.outcome == "done"
    assert stopped.ended <= following.started


def test_a_cancel_token_stops_the_run_with_cancelled(benches):
    from engine.cancel import CancelToken

    worker, _ = benches
    cancel = CancelToken()
    events = worker.iter_unconditional(UnconditionalRequest(model="tiny-ddpm", scheduler="DDPM",
                                                            num_inference_steps=1000, seed=1), cancel=cancel)
    next(events)
    cancel.cancel()
    with pytest.raises(Cancelled):
        list(events)


def test_a_dead_worker_fails_its_run_and_the_next_run_starts_a_new_one(benches):
    worker, _ = benches
    events = worker.iter_unconditional(UnconditionalRequest(model="tiny-ddpm", scheduler="DDPM",
                                                            num_inference_steps=1000, seed=2, batch_size=16))
    next(events)
    os.kill(worker.worker.pid, signal.SIGKILL)  # as an out-of-memory kill would
    with pytest.raises(WorkerError, match=r"^the device worker stopped \(exit code -9\) during the run; the next "
                                          r"run starts a new one$"):
        list(events)
    done = run(worker, UnconditionalRequest(model="tiny-ddpm", scheduler="DDIM", num_inference_steps=2, seed=1))
    assert done[-1].images


def test_errors_in_the_worker_reach_the_caller_as_they_were(benches):
    from engine.errors import InputError

    worker, _ = benches
    with pytest.raises(InputError, match=r"^PNDM cannot run 2 steps on this model"):
        run(worker, UnconditionalRequest(model="tiny-ddpm", scheduler="PNDM", num_inference_steps=2, seed=1))


@pytest.mark.parametrize("where", ["worker", "local"])
def test_estimate_probes_once_then_uses_the_last_run(benches, where):
    from engine.sampling.unconditional import PROBE_STEPS, seconds_per_step

    bench = benches[0] if where == "worker" else benches[1]
    batch = 3 if where == "worker" else 4  # a model and batch size that neither bench has run yet
    outputs = bench.folders.outputs_dir
    files_before = sorted(outputs.rglob("*.png"))
    as_trained = UnconditionalRequest(model="tiny-ddpm", scheduler="DDPM", batch_size=batch)
    assert bench.estimate_unconditional(as_trained, probe=False) is None  # nothing measured yet
    probed = bench.estimate_unconditional(as_trained)
    # DDPM as trained: the model's 1000 steps, times a step timed by a short probe that saved nothing
    assert probed.num_inference_steps == 1000 and probed.measured_by == f"a {PROBE_STEPS}-step probe"
    assert probed.seconds == pytest.approx(1000 * probed.seconds_per_step) and probed.seconds_per_step > 0
    assert sorted(outputs.rglob("*.png")) == files_before
    if where == "worker":
        assert bench.recent_runs()[-1].kind == "probe"
    # the same model and batch size sampled: now the estimate is that run's own time a step
    done = run(bench, UnconditionalRequest(model="tiny-ddpm", num_inference_steps=8, seed=1, batch_size=batch))[-1]
    after = bench.estimate_unconditional(replace(as_trained, num_inference_steps=200), probe=False)
    assert after.measured_by == "the last run" and after.num_inference_steps == 200
    assert after.seconds_per_step == seconds_per_step(done.steps)
    # another batch size is another measurement
    assert bench.estimate_unconditional(replace(as_trained, batch_size=batch + 10), probe=False) is None


def test_done_keeps_only_the_steps_the_loop_kept_previews_of(benches):
    """A streamed step whose previews the loop's Done does not keep (every k-th for the scrubber) crosses without
    them, as in this process."""
    worker, local = benches
    request = UnconditionalRequest(model="tiny-ddpm", scheduler="DDIM", num_inference_steps=250, seed=2)
    theirs, ours = run(worker, request)[-1], run(local, request)[-1]
    kept = [s.step for s in ours.steps if s.preview_xt is not None]
    assert len(kept) < 250 and [s.step for s in theirs.steps if s.preview_xt is not None] == kept
