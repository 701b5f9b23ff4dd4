"""Named recipes: sets of :class:`TrainRequest` settings that go together, picked by name in the page and the CLI.

``quick`` is :class:`TrainRequest`'s default: recognisable digits within 10 minutes on a 2-core CPU
(``bench/train_first_minutes.py`` measures it). ``tutorial`` is the diffusers tutorial's schedule, which the
defaults used to be: 50 epochs at lr 1e-4 with 500 warm-up steps, a grid every 500 steps (hours on a CPU).
A recipe sets only the fields in :data:`RECIPE_FIELDS`; the data, the flip, the seed and the rest stay as given.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from engine.errors import InputError
from engine.training.request import TrainRequest

# What a recipe sets: the model's size, the schedule, and how often it reports.
RECIPE_FIELDS = ("preset", "resolution", "batch_size", "num_epochs", "max_steps", "learning_rate", "lr_warmup_steps",
                 "use_ema", "save_every", "sample_every")
# The recipe fields that change what the model learns (the two intervals only change what is shown and saved).
TRAINING_FIELDS = tuple(f for f in RECIPE_FIELDS if f not in ("save_every", "sample_every"))
DIGITS = "digits"


@dataclass(frozen=True)
class Recipe:
    name: str
    summary: str  # one line for the page and --help
    settings: dict  # RECIPE_FIELDS -> value
    # Steps after which at least half of the sample grid's digits are recognisable (the digit classifier's
    # "recognisable": classified with a margin and as close to a real digit as real digits are), measured with
    # bench/train_first_minutes.py; None where nobody has measured it.
    digits_steps: int | None = None


def _defaults() -> dict:
    return {f.name: f.default for f in fields(TrainRequest) if f.name in RECIPE_FIELDS}


RECIPES: dict[str, Recipe] = {
    "quick": Recipe(
        "quick", "recognisable digits in under 10 minutes on a 2-core CPU: digits preset, 16 px, batch 32, "
                 "1,200 steps, lr 1e-3 with 100 warm-up steps, EMA, a grid every 100 steps",
        _defaults(), digits_steps=800),
    "tutorial": Recipe(
        "tutorial", "the diffusers tutorial's schedule: tiny preset, 32 px, batch 16, 50 epochs (5,600 steps on "
                    "the digits), lr 1e-4 with 500 warm-up steps, a grid every 500 steps; hours on a CPU",
        dict(preset="tiny", resolution=32, batch_size=16, num_epochs=50, max_steps=0, learning_rate=1e-4,
             lr_warmup_steps=500, use_ema=False, save_every=500, sample_every=500)),
}
DEFAULT_RECIPE = "quick"


def recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise InputError(f"unknown recipe {name!r}; allowed: {', '.join(RECIPES)}")
    return RECIPES[name]


def matching_recipe(request: TrainRequest) -> Recipe | None:
    """The recipe whose training settings ``request`` has (its intervals may differ), or None."""
    for candidate in RECIPES.values():
        if all(getattr(request, f) == candidate.settings[f] for f in TRAINING_FIELDS):
            return candidate
    return None


def steps_hint(request: TrainRequest) -> str:
    """For a run on the digits: how many steps its samples need before they look like digits, where measured."""
    if request.data != DIGITS:
        return ""
    quick = RECIPES[DEFAULT_RECIPE]
    found = matching_recipe(request)
    if found is not None and found.digits_steps is not None:
        return f"digits need about {found.digits_steps} steps at the {found.name!r} recipe for recognisable samples"
    what = f"the {found.name!r} recipe" if found is not None else "these settings"
    return (f"no measured figure for {what}; at the {quick.name!r} recipe digits need about "
            f"{quick.digits_steps} steps for recognisable samples")
