"""Checkpoint folders: reading a run while it saves leaves the save alone."""

import json

from engine.training import checkpoints as ckpt


def fake_checkpoint(folder, step):
    (folder / "model_index.json").write_text("{}")
    (folder / ckpt.TRAINER_DIR).mkdir()
    ckpt.write_json(folder / ckpt.TRAINER_DIR / ckpt.STATE_FILE, {"format": ckpt.FORMAT, "step": step})


def test_reading_a_run_while_it_saves_keeps_the_save(tmp_path):
    """Picking a run in the Training tab while it saved used to delete its .saving-<pid> folder:
    read_state recovered, and recover took our own pid for a dead process."""
    run = tmp_path / "run"
    ckpt.write_atomically(run, lambda folder: fake_checkpoint(folder, 1))
    seen = {}

    def write(folder):
        fake_checkpoint(folder, 2)
        seen["state"] = ckpt.read_state(run)  # what the run picker does, mid-save
        (folder / "weights.bin").write_bytes(b"the rest of the save")

    ckpt.write_atomically(run, write)
    assert seen["state"]["step"] == 1
    assert json.loads((run / ckpt.TRAINER_DIR / ckpt.STATE_FILE).read_text())["step"] == 2
    assert (run / "weights.bin").read_bytes() == b"the rest of the save"


def test_leftovers_of_our_own_finished_saves_are_still_cleaned(tmp_path):
    run = tmp_path / "run"
    ckpt.write_atomically(run, lambda folder: fake_checkpoint(folder, 1))
    stale = tmp_path / f".run.saving-{__import__('os').getpid()}"
    stale.mkdir()
    ckpt.recover(run)
    assert not stale.exists() and ckpt.read_state(run)["step"] == 1
