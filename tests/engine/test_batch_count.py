"""Batch count: N runs with seeds s, s+1, ..., each saved as a run of its own, then a grid of them all; one cancel
token ends the whole batch."""

import re
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from engine.cancel import CancelToken
from engine.errors import Cancelled, InputError
from engine.events import BatchDone, Done, Started
from engine.sampling.txt2img import Txt2ImgRequest
from engine.sampling.unconditional import GRID_GAP, UnconditionalRequest
from engine.validation import MAX_SEED
from engine.workbench import Folders, Workbench

REQUEST = Txt2ImgRequest(prompt="a handwritten digit seven", num_inference_steps=2, scheduler="Euler")


@pytest.fixture()
def bench(tmp_path):
    return Workbench(Folders(tmp_path / "models", tmp_path / "data", tmp_path / "outputs"), device="cpu",
                     worker=False)


def pixels(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def test_runs_seeds_in_a_row_each_saved_then_a_grid(bench):
    events = list(bench.iter_txt2img(replace(REQUEST, seed=7), batch_count=3))
    started = [e for e in events if isinstance(e, Started)]
    dones = [e for e in events if isinstance(e, Done)]
    assert [(s.info["seed"], s.info["batch_index"], s.info["batch_count"]) for s in started] == \
        [(7, 1, 3), (8, 2, 3), (9, 3, 3)]
    assert [d.info["seed"] for d in dones] == [7, 8, 9] and all(len(d.paths) == 1 for d in dones)
    batch = events[-1]
    assert isinstance(batch, BatchDone) and batch.seeds == (7, 8, 9)
    assert batch.paths == tuple(d.paths[0] for d in dones) and batch.grid.endswith("-7-grid.png")
    # The grid: the three images in two columns, a gap between.
    grid = pixels(batch.grid)
    assert grid.shape == (2 * 32 + GRID_GAP, 2 * 32 + GRID_GAP, 3)
    assert np.array_equal(grid[:32, 32 + GRID_GAP:], pixels(dones[1].paths[0]))
    # Each run is the run its seed gives alone.
    alone = list(bench.iter_txt2img(replace(REQUEST, seed=8)))[-1]
    assert np.array_equal(pixels(alone.paths[0]), pixels(dones[1].paths[0]))
    assert not np.array_equal(pixels(dones[0].paths[0]), pixels(dones[1].paths[0]))


def test_a_random_seed_is_drawn_once(bench):
    events = list(bench.iter_txt2img(REQUEST, batch_count=2))
    first, second = (e.info["seed"] for e in events if isinstance(e, Done))
    assert second == first + 1 and events[-1].seeds == (first, second)


def test_stop_ends_the_whole_batch(bench):
    cancel = CancelToken()
    seen = []
    with pytest.raises(Cancelled):
        for event in bench.iter_txt2img(replace(REQUEST, seed=1), cancel=cancel,
                                        batch_count=4):
            seen.append(event)
            if isinstance(event, Started) and event.info["batch_index"] == 2:
                cancel.cancel()
    assert [type(e).__name__ for e in seen if type(e).__name__ not in ("Step", "Loading")] == ["Started", "Done",
                                                                                            "Started"]
    assert len(list(bench.folders.outputs_dir.rglob("*.png"))) == 1  # the first run's image; no grid


def test_unconditional_batch_count_grids_every_image(bench):
    request = UnconditionalRequest(num_inference_steps=2, seed=5, batch_size=2)
    events = list(bench.iter_unconditional(request, batch_count=2))
    batch = events[-1]
    assert batch.seeds == (5, 6) and len(batch.paths) == 4
    side = pixels(batch.paths[0]).shape[0]
    assert pixels(batch.grid).shape[:2] == (2 * side + GRID_GAP, 2 * side + GRID_GAP)


@pytest.mark.parametrize("count, seed, message", [
    (0, 1, "batch count must be a whole number from 1 to 100; got 0"),
    (101, 1, "batch count must be a whole number from 1 to 100; got 101"),
    (2.5, 1, "batch count must be a whole number from 1 to 100; got 2.5"),
    (3, MAX_SEED - 1, f"seed {MAX_SEED - 1} with batch count 3 runs past the largest seed {MAX_SEED}; choose a "
                      "smaller seed"),
])
def test_bad_batch_counts_are_refused_before_a_run(bench, count, seed, message):
    with pytest.raises(InputError, match=f"^{re.escape(message)}$"):
        list(bench.iter_txt2img(replace(REQUEST, seed=seed), batch_count=count))
    assert list(bench.folders.outputs_dir.rglob("*.png")) == []
