"""kill -9 in the middle of a write: a process saving PNGs (the sampling worker's save) or uploads (the Training
tab's) is killed at random moments. Nothing half-written is ever listed, nothing finished is lost, and the next
start removes what the killed writes left."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from engine.training.data import list_sources
from engine.workbench import Folders, Workbench

ROOT = Path(__file__).resolve().parents[2]
KILLS = 8
# Each child writes in a loop and prints what it finished; nearly all its time is spent inside a write.
PNG_WRITER = """
import sys
sys.path.insert(0, sys.argv[1])
import numpy as np
from PIL import Image
from engine.records.outputs import save_png
image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (384, 384, 3), dtype=np.uint8))
print("ready", flush=True)
while True:
    print(save_png(image, {"prompt": "noise", "seed": 1}, sys.argv[2], "txt2img"), flush=True)
"""
UPLOAD_WRITER = """
import sys
sys.path.insert(0, sys.argv[1])
from engine.training.uploads import save_uploads
import os
files = sys.argv[3:]
print("ready", flush=True)
for n in range(10**6):
    print(save_uploads(files, sys.argv[2], f"up-{os.getpid()}-{n}").name, flush=True)
"""


def kill_while_writing(script: str, args: list, seed: int) -> tuple[list[str], int]:
    """Run ``script`` ``KILLS`` times, each killed with SIGKILL a random moment after it starts writing (every other
    time, the first moment after that when a write of it is under way: a random moment alone missed every write
    in some runs, an upload's time outside its write growing with the uploads before it); returns what it
    reported finished, and after how many kills a partial write was left behind."""
    rng = random.Random(seed)
    finished, kills_mid_write, partials = [], 0, 0
    for k in range(KILLS):
        child = subprocess.Popen([sys.executable, "-c", script, str(ROOT), *map(str, args)], stdout=subprocess.PIPE,
                                 text=True)
        assert child.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.05, 0.6))
        deadline = time.time() + 5
        while k % 2 and hidden_entries(args[0]) <= partials and time.time() < deadline:
            time.sleep(0.001)
        child.send_signal(signal.SIGKILL)
        child.wait()  # reaped, as a server's parent reaps it: its pid no longer runs
        finished += [line.strip() for line in child.stdout.read().splitlines() if line.strip()]
        left = len(partial_writes(args[0]))
        kills_mid_write, partials = kills_mid_write + (left > partials), left
    return finished, kills_mid_write


def partial_writes(folder) -> list[Path]:
    """Hidden files and folders: where a write is under way (what is listed never starts with '.')."""
    return sorted(Path(folder).rglob(".*"))


def hidden_entries(folder) -> int:
    """How many entries :func:`partial_writes` would list, counted while writes come and go (os.walk passes over a
    folder removed under it)."""
    return sum(name.startswith(".") for _, dirs, files in os.walk(folder) for name in dirs + files)


def complete_png(path: Path) -> bool:
    try:
        with Image.open(path) as im:
            im.load()
            return im.text.get("parameters", "").startswith("noise")
    except OSError:
        return False


def restart(tmp_path) -> Workbench:
    """What the server does first when it starts again."""
    return Workbench(Folders(tmp_path / "models", tmp_path / "data", tmp_path / "outputs"), device="cpu",
                     worker=False)


def test_a_png_write_killed_midway_is_never_listed_and_is_removed_at_start(tmp_path):
    outputs = tmp_path / "outputs"
    finished, mid_write = kill_while_writing(PNG_WRITER, [outputs], seed=1)
    listed = sorted(p for p in outputs.rglob("*.png") if not p.name.startswith("."))
    assert mid_write >= 1, "no kill landed inside a write: the test proved nothing"
    # Every finished PNG is listed; one more a kill at most, renamed into place before its name was printed.
    assert len(finished) >= 1 and set(finished) <= {str(p) for p in listed} and len(listed) - len(finished) <= KILLS
    assert all(complete_png(p) for p in listed)  # and everything listed is whole
    restart(tmp_path)
    assert partial_writes(outputs) == []
    assert sorted(p for p in outputs.rglob("*.png") if not p.name.startswith(".")) == listed  # nothing lost


def test_an_upload_killed_midway_is_never_a_data_source_and_is_removed_at_start(tmp_path):
    images = []
    for i in range(30):
        images.append(tmp_path / f"digit-{i}.png")
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (128, 128, 3), dtype=np.uint8)).save(images[-1])
    data = tmp_path / "data"
    finished, mid_write = kill_while_writing(UPLOAD_WRITER, [data, *images], seed=2)
    assert mid_write >= 1, "no kill landed inside an upload: the test proved nothing"
    sources = list_sources(data)[3:]  # after the built-in digits (plain and captioned)
    # Every finished upload is a data source; one more a kill at most, renamed into place before it was printed.
    assert len(finished) >= 1 and set(finished) <= set(sources) and len(sources) - len(finished) <= KILLS
    for name in sources:  # and every source is whole
        assert len(list((data / name).iterdir())) == 30
    workbench = restart(tmp_path)
    assert partial_writes(data) == [] and sorted(p.name for p in data.iterdir()) == sorted(sources)
    assert workbench.list_training_data()[3:] == sources
