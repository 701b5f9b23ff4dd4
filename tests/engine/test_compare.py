"""Compare: each column is the very run Text to image (or Unconditional) makes alone, the columns come in values
order, a scrub lines every column up at the same timestep, and values an axis does not take are refused."""

import re

import numpy as np
import pytest

from engine.errors import InputError
from engine.events import Done, Started, Step
from engine.sampling.compare import (MAX_COLUMNS, Column, CompareDone, CompareRequest, CompareStarted, lockstep,
                                     sigmas_at)
from engine.sampling.schedulers import SCHEDULERS
from engine.sampling.txt2img import Txt2ImgRequest
from engine.sampling.unconditional import UNCONDITIONAL_SCHEDULERS, UnconditionalRequest


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """The facade on the built-ins, sampling in this process."""
    from engine.workbench import Folders, Workbench

    root = tmp_path_factory.mktemp("compare")
    return Workbench(Folders(root / "models", root / "data", root / "outputs"), device="cpu", worker=False)


def pixels(image) -> np.ndarray:
    return np.asarray(image).astype(int)


def final_alone(bench, request) -> np.ndarray:
    run = bench.iter_txt2img if isinstance(request, Txt2ImgRequest) else bench.iter_unconditional
    return pixels(list(run(request))[-1].images[0])


def test_columns_equal_text_to_image_alone_in_values_order(bench):
    request = CompareRequest(axis="scheduler", values=("DDIM", "Euler a", "DPM++ 2M Karras"), prompt="a seven",
                             seed=5, num_inference_steps=8, model="digits-sd")
    events = list(bench.iter_compare(request))
    assert isinstance(events[0], CompareStarted) and isinstance(events[-1], CompareDone)
    # Each column: Column, then its run's Started, Steps and Done, in values order.
    columns = [e for e in events if isinstance(e, Column)]
    assert [(c.index, c.value) for c in columns] == [(0, "DDIM"), (1, "Euler a"), (2, "DPM++ 2M Karras")]
    kinds = [type(e) for e in events[1:-1]]
    assert kinds.count(Started) == kinds.count(Done) == 3 and kinds.count(Step) == 24
    done = events[-1]
    for value, column in zip(request.values, done.columns):
        alone = final_alone(bench, Txt2ImgRequest(prompt="a seven", scheduler=value, num_inference_steps=8, seed=5,
                                                  model="digits-sd"))
        assert column.value == value and np.array_equal(pixels(column.done.images[0]), alone)
    finals = [pixels(c.done.images[0]) for c in done.columns]
    assert np.abs(finals[0] - finals[2]).max() > 10  # the columns differ: the comparison shows something
    summary = done.info["columns"]
    assert [c["value"] for c in summary] == list(request.values)
    assert all(c["seconds_per_step"] > 0 and c["steps"] == 8 for c in summary)


def test_steps_and_guidance_axes(bench):
    for axis, values, field in (("steps", ("3", "6"), "num_inference_steps"),
                                ("guidance scale", (1, 9.5), "guidance_scale")):
        request = CompareRequest(axis=axis, values=values, prompt="a three", seed=2, num_inference_steps=4,
                                 model="digits-sd")
        done = list(bench.iter_compare(request))[-1]
        for value, column in zip(request.values, done.columns):
            alone = final_alone(bench, Txt2ImgRequest(prompt="a three", seed=2, model="digits-sd",
                                                      **{"num_inference_steps": 4, field: value}))
            assert np.array_equal(pixels(column.done.images[0]), alone)


def test_unconditional_columns_equal_ddpm_alone(bench):
    request = CompareRequest(axis="scheduler", values=("DDIM", "DPM++ 2M"), seed=3, num_inference_steps=6,
                             model="digits-ddpm")
    done = list(bench.iter_compare(request))[-1]
    assert done.info["kind"] == "unconditional"
    for value, column in zip(request.values, done.columns):
        alone = final_alone(bench, UnconditionalRequest(scheduler=value, num_inference_steps=6, seed=3,
                                                        model="digits-ddpm"))
        assert np.array_equal(pixels(column.done.images[0]), alone)


def test_a_random_seed_is_drawn_once_for_every_column(bench):
    request = CompareRequest(axis="steps", values=(2, 3), seed=-1, model="digits-sd", prompt="a one")
    done = list(bench.iter_compare(request))[-1]
    seeds = {c.done.info["seed"] for c in done.columns}
    assert len(seeds) == 1 and seeds == {done.info["seed"]}


def test_lockstep_puts_every_column_at_the_same_timestep(bench):
    request = CompareRequest(axis="steps", values=(10, 20, 40), prompt="a seven", seed=1, scheduler="DDIM",
                             model="digits-sd")
    done = list(bench.iter_compare(request))[-1]
    timesteps = [[s.timestep for s in c.done.steps] for c in done.columns]
    first = max(ts[0] for ts in timesteps)
    for fraction in (0.1, 0.5, 0.9):
        frames = lockstep(done.columns, fraction)
        target = (1 - fraction) * first
        # each column at its step nearest the target, so the three stand within the coarsest column's spacing
        for frame, ts in zip(frames, timesteps):
            assert abs(frame.step.timestep - target) == min(abs(t - target) for t in ts)
        gap = max(ts[0] - ts[1] for ts in timesteps)
        assert max(f.step.timestep for f in frames) - min(f.step.timestep for f in frames) <= gap
        assert [f.step.total for f in frames] == [10, 20, 40] and not any(f.final for f in frames)
        assert all(f.caption == f"step {f.step.step}/{f.step.total} · t = {f.step.timestep:g} · σ = {f.sigma:.3g}"
                   for f in frames)
    # the columns' step numbers differ (10, 20, 40 steps) where their timesteps agree
    assert [f.step.step for f in lockstep(done.columns, 0.5)] == [5, 10, 20]  # half of each run
    assert [f.step.step for f in lockstep(done.columns, 0.0)] == [1, 1, 1]
    assert all(f.final and f.step.step == f.step.total for f in lockstep(done.columns, 1.0))
    # sigma is the schedule's at that t: it falls along the trajectory
    sigmas = [lockstep(done.columns, f)[0].sigma for f in (0.1, 0.5, 0.9)]
    assert sigmas[0] > sigmas[1] > sigmas[2] > 0


def test_sigmas_follow_alpha_bar():
    alpha_bar = [0.99, 0.5, 0.2]
    assert sigmas_at([0, 1, 2], alpha_bar) == pytest.approx([(0.01 / 0.99) ** 0.5, 1.0, 2.0])


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(values=("DDIM",)), "give 2 to 6 values to compare; got 1"),
        (dict(values=("DDIM", "Euler", "PNDM", "LMS", "Heun", "UniPC", "DDPM")),
         "give 2 to 6 values to compare; got 7"),
        (dict(values="DDIM, DDIM"), "the values to compare must differ; got DDIM, DDIM"),
        (dict(axis="seed"), "unknown axis 'seed'; allowed: scheduler, steps, guidance scale, model, guidance rescale, "
                            "timestep spacing, seed blend"),
        (dict(axis="steps", values=("10", "ten")), "steps values must be whole numbers; got 'ten'"),
        (dict(axis="steps", values=(10, 2.5)), "steps values must be whole numbers; got 2.5"),
        (dict(axis="guidance scale", values=(3, "high")), "guidance scale values must be numbers; got 'high'"),
    ],
)
def test_bad_requests_are_refused(kw, message):
    with pytest.raises(InputError, match=f"^{re.escape(message)}$") as caught:
        CompareRequest(**{"axis": "scheduler", "values": ("DDIM", "Euler"), **kw})
    assert caught.value.field in ("values", "axis")


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(values=("DDIM", "Bogus")), "scheduler value 'Bogus' is not one this axis takes: unknown scheduler "
                                         f"'Bogus'; allowed: {', '.join(SCHEDULERS)}"),
        (dict(axis="steps", values=(10, 200)), "steps value 200 is not one this axis takes: steps must be a whole "
                                               "number from 1 to 150; got 200"),
        (dict(axis="guidance scale", values=(2, 25)), "guidance scale value 25.0 is not one this axis takes: "
                                                      "guidance scale must be a number from 1 (no guidance) to 20; "
                                                      "got 25.0"),
        (dict(model="digits-ddpm", values=("DDIM", "Heun")),
         "scheduler value 'Heun' is not one this axis takes: unknown scheduler 'Heun'; allowed: "
         f"{', '.join(UNCONDITIONAL_SCHEDULERS)}"),
        (dict(model="digits-ddpm", axis="guidance scale", values=(1, 5)),
         "unconditional models take no guidance scale: compare schedulers, steps or models"),
        (dict(axis="model", values=("digits-sd", "digits-ddpm")),
         "'digits-ddpm' is an unconditional model, but 'digits-sd' is a text-to-image one; the models compared "
         "must be of one kind"),
    ],
)
def test_values_the_axis_does_not_take_are_refused_before_anything_runs(bench, kw, message):
    request = CompareRequest(**{"axis": "scheduler", "values": ("DDIM", "Euler"), "model": "digits-sd",
                                "scheduler": "DDIM", **kw})
    events = bench.iter_compare(request)
    with pytest.raises(InputError, match=f"^{re.escape(message)}$"):
        next(events)  # refused before the first event: no column ran


def test_at_most_six_columns():
    assert MAX_COLUMNS == 6
    request = CompareRequest(axis="steps", values=tuple(range(1, 7)))
    assert request.values == (1, 2, 3, 4, 5, 6)


# -- the schedule lab's axes: guidance rescale and timestep spacing --------------------------------------------
@pytest.mark.parametrize("axis, values, field", [
    ("guidance rescale", ("0", "0.7"), "guidance_rescale"),
    ("timestep spacing", ("leading", "trailing"), "timestep_spacing"),
])
def test_columns_equal_text_to_image_alone(bench, axis, values, field):
    request = CompareRequest(axis=axis, values=values, prompt="a seven", seed=5, num_inference_steps=4,
                             scheduler="DDIM", model="digits-sd")
    done = list(bench.iter_compare(request))[-1]
    assert isinstance(done, CompareDone)
    finals = []
    for value, column in zip(done.info["values"], done.columns):
        alone = list(bench.iter_txt2img(Txt2ImgRequest(prompt="a seven", seed=5, num_inference_steps=4,
                                                       scheduler="DDIM", model="digits-sd", **{field: value})))[-1]
        assert np.array_equal(pixels(column.done.images[0]), pixels(alone.images[0]))
        finals.append(pixels(column.done.images[0]))
    assert np.abs(finals[0] - finals[1]).max() > 0  # the axis changes the image


def test_unconditional_compares_spacings_but_not_guidance_rescale(bench):
    request = CompareRequest(axis="timestep spacing", values=("leading", "trailing"), seed=1, num_inference_steps=3,
                             scheduler="DDIM", model="digits-ddpm")
    kind, columns = bench.compare_columns(request)
    assert kind == "unconditional"
    assert columns[1] == UnconditionalRequest(scheduler="DDIM", num_inference_steps=3, seed=1, model="digits-ddpm",
                                              timestep_spacing="trailing")
    with pytest.raises(InputError, match="^" + re.escape(
            "unconditional models take no guidance rescale: compare schedulers, steps or models") + "$"):
        bench.compare_columns(CompareRequest(axis="guidance rescale", values=("0", "0.7"), model="digits-ddpm"))


@pytest.mark.parametrize("axis, values, message", [
    ("guidance rescale", ("0", "1.5"), "guidance rescale value 1.5 is not one this axis takes: "
                                       "guidance rescale must be a number from 0 to 1; got 1.5"),
    ("guidance rescale", ("0", "lots"), "guidance rescale values must be numbers; got 'lots'"),
    ("timestep spacing", ("leading", "evenly"), "timestep spacing value 'evenly' is not one this axis takes: "
     "unknown timestep spacing 'evenly'; allowed: leading, linspace, trailing, '' (the model's own)"),
])
def test_values_an_axis_does_not_take_are_said_on_values(bench, axis, values, message):
    with pytest.raises(InputError, match="^" + re.escape(message) + "$") as info:
        bench.compare_columns(CompareRequest(axis=axis, values=values, model="digits-sd"))
    assert info.value.field == "values"
