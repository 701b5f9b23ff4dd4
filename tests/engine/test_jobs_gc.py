"""A training job runs in the app's server process and imports the training stack there; what it imports must not
make every full garbage collection of that process walk it (each one stalled every request 45-60 ms)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# In a fresh interpreter (in this one the stack is imported already): the objects a full collection walks, as the
# app's server has them (gc.freeze() after start-up), while a job runs and after it ends.
PROBE = """
import gc, sys, tempfile
from pathlib import Path
from engine.training.jobs import TrainingManager
from engine.training.request import TrainRequest
root = Path(tempfile.mkdtemp())
gc.collect(); gc.freeze()
jobs = TrainingManager(root / "models", root / "data", device="cpu")
jobs.start(TrainRequest(data="digits", resolution=16, batch_size=4, max_steps=40, run_name="gc", preset="tiny",
                        save_every=0, sample_every=0, learning_rate=1e-3, lr_warmup_steps=0))
running = len(gc.get_objects())
state = jobs.wait(300).state
print(state, running, len(gc.get_objects()), len(sys.modules))
"""


def test_what_a_training_run_imports_is_left_out_of_full_collections():
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr[-2000:]
    state, running, after, modules = out.stdout.split()[-4:]
    assert state == "finished"
    assert int(modules) > 1000  # the stack was imported in that process (the case this guards)
    # Without the freezes: about 220,000 objects while it runs and after (accelerate, datasets, peft, ...).
    assert int(running) < 20_000 and int(after) < 20_000, (running, after)
