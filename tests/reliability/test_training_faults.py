"""Training under faults: a save between two loss reports keeps every step's loss; a refused start keeps the
last run's status."""

import pytest

from engine.cancel import CancelToken
from engine.errors import DataError
from engine.training import checkpoints as ckpt
from engine.training.jobs import FINISHED, TrainingManager
from engine.training.loop import iter_train
from engine.training.request import TrainCheckpoint, TrainStarted, TrainStep, resume_request
from tests.engine.test_train import data_dir, losses_of, request  # noqa: F401  (data_dir is a fixture)
from tests.training_setups import train_events


def test_losses_stay_continuous_when_a_save_falls_between_reports(tmp_path, data_dir):  # noqa: F811
    """Losses are reported every 3 steps, a checkpoint is saved every 4, and Stop comes at the first save. The
    checkpoint used to keep only the reported three, so after a resume losses[i] was no longer step i+1's loss."""
    base = dict(max_steps=12, log_every=3, save_every=4, seed=5)
    expected = losses_of(train_events(request(run_name="straight", **base), tmp_path, data_dir))
    assert len(expected) == 12
    cancel = CancelToken()
    for event in iter_train(request(run_name="stopped", **base), models_dir=tmp_path, data_dir=data_dir,
                            cancel=cancel, device="cpu"):
        if isinstance(event, TrainCheckpoint):
            cancel.cancel()
    state = ckpt.read_state(tmp_path / "stopped")
    assert state["step"] % 3 != 0  # a save between two reports
    assert len(state["history"]) == state["step"]
    assert state["history"] == pytest.approx(expected[:state["step"]], rel=1e-5)
    resumed = train_events(resume_request(tmp_path, "stopped"), tmp_path, data_dir)
    started = resumed[0]
    assert isinstance(started, TrainStarted)
    assert list(started.history) + losses_of(resumed) == pytest.approx(expected, rel=1e-5)
    assert [e.step for e in resumed if isinstance(e, TrainStep)][-1] == 12


def test_a_refused_start_leaves_the_last_runs_status(tmp_path, data_dir):  # noqa: F811
    """A finished run with a checkpoint used to show 'failed', checkpoint None, after another start was refused."""
    manager = TrainingManager(tmp_path, data_dir, device="cpu")
    manager.start(request(run_name="good", max_steps=2, save_every=0))
    done = manager.wait(120)
    assert done.state == FINISHED and done.checkpoint
    with pytest.raises(DataError):
        manager.start(request(run_name="bad", data="empty", max_steps=2))
    after = manager.status()
    assert (after.state, after.run_name, after.checkpoint, after.step) == (FINISHED, "good", done.checkpoint, 2)
