"""Numbered PNGs: the server (grids) and the device worker (images) save into the same folders from two
processes; each number goes to one image and no image replaces another, whatever the order of their steps."""

import multiprocessing
from datetime import date
from pathlib import Path

import numpy as np
from PIL import Image

from engine.records.outputs import save_png

HANG = 60  # seconds: only a guard that ends a test that would otherwise hang


def write(outputs_dir: str, value: int, suffix: str, scanned=None, go=None) -> None:
    """Save a flat image of ``value``; with events: stop after looking at the folder for the first time, tell
    ``scanned``, and go on when ``go`` is set (a writer that picked its number and has not written yet)."""
    if scanned is not None:
        real = Path.iterdir
        calls = []

        def iterdir(self):
            names = list(real(self))
            if not calls:
                calls.append(1)
                scanned.set()
                assert go.wait(HANG)
            return iter(names)

        Path.iterdir = iterdir
    image = Image.fromarray(np.full((4, 4, 3), value, np.uint8))
    save_png(image, {"seed": 7}, outputs_dir, "txt2img", suffix=suffix)


def test_two_processes_numbering_in_one_folder_never_share_a_number(tmp_path):
    context = multiprocessing.get_context("spawn")
    scanned, go = context.Event(), context.Event()
    slow = context.Process(target=write, args=(str(tmp_path), 10, "", scanned, go))
    slow.start()
    assert scanned.wait(HANG)  # it has looked for the next number and is about to write
    fast = context.Process(target=write, args=(str(tmp_path), 200, "-grid"))  # the server's grid of a batch
    fast.start()
    fast.join(HANG)
    go.set()
    slow.join(HANG)
    assert (slow.exitcode, fast.exitcode) == (0, 0)
    folder = tmp_path / "txt2img" / date.today().isoformat()
    saved = sorted(p.name for p in folder.iterdir())
    assert saved == ["00001-7-grid.png", "00002-7.png"]  # no claim left behind either
    values = {int(np.asarray(Image.open(folder / name))[0, 0, 0]) for name in saved}
    assert values == {10, 200}


def test_numbers_continue_after_the_folder_s_highest(tmp_path):
    folder = tmp_path / "txt2img" / date.today().isoformat()
    folder.mkdir(parents=True)
    (folder / "00041-3-grid.png").write_bytes(b"")
    path = save_png(Image.new("RGB", (4, 4)), {"seed": 9}, tmp_path, "txt2img")
    assert path.name == "00042-9.png"
