"""Field checks shared by the request dataclasses; each raises InputError saying what was given and what is allowed."""

from __future__ import annotations

import math
import re

from engine.errors import InputError

MAX_SHOWN_CHARS = 80  # of a given value quoted in a message: a megabyte of text is not echoed back


def given(value) -> str:
    """``value`` as a message quotes it: its repr, cut short (with its length) where long."""
    text = repr(value)
    if len(text) <= MAX_SHOWN_CHARS:
        return text
    length = f"{len(value)} characters" if isinstance(value, str) else f"{len(text)} characters as text"
    return f"{text[:MAX_SHOWN_CHARS - 20]}... ({length})"


def check_int(name: str, value, lo: int, hi: int) -> None:
    """A whole number in [lo, hi]; floats that are whole (as the page sends them) pass."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise InputError(f"{name} must be a whole number from {lo} to {hi}; got {given(value)}", field=name)


def check_float(name: str, value, lo: float, hi: float, *, low_open: bool = False, high_open: bool = False) -> None:
    """A finite number between lo and hi (bounds open where asked)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (lo < value if low_open else lo <= value) and (value < hi if high_open else value <= hi)
    if not ok:
        low = f"above {lo:g}" if low_open else f"from {lo:g}"
        high = (f"and below {hi:g}" if high_open else f"and at most {hi:g}") if low_open else \
            (f"and below {hi:g}" if high_open else f"to {hi:g}")
        bounds = f"{low} {high}"
        raise InputError(f"{name} must be a number {bounds}; got {given(value)}", field=name)


def check_bool(name: str, value) -> None:
    """True or False (not 0, 1 or a string)."""
    if not isinstance(value, bool):
        raise InputError(f"{name} must be true or false; got {given(value)}", field=name)


MAX_SEED = 2**63 - 1  # what torch.Generator.manual_seed takes
MAX_SIDE = 2048  # of an image made, in pixels: past it a CPU run takes hours and a GPU's memory runs out
MAX_BATCH_COUNT = 100  # runs one click makes; each is saved, so a larger batch fills the outputs dir quickly
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # 'owner/name' on the Hugging Face Hub


def check_seed(value, *, allow_random: bool = True) -> None:
    """A seed for ``torch.Generator.manual_seed``; -1 (draw one) where ``allow_random``."""
    check_int("seed", value, -1 if allow_random else 0, MAX_SEED)


def check_side(name: str, value) -> None:
    """An image side in pixels: a whole multiple of 8 (a VAE's latent is 1/8 of it) from 8 to ``MAX_SIDE``."""
    check_int(name, value, 8, MAX_SIDE)
    if int(value) % 8:
        raise InputError(f"{name} must be a multiple of 8 (8 to {MAX_SIDE}); got {int(value)}", field=name)


def check_choice(name: str, value, allowed) -> None:
    """One of ``allowed``, named in the message."""
    if not isinstance(value, str) or value not in allowed:
        raise InputError(f"unknown {name} {given(value)}; allowed: {', '.join(allowed)}", field=name)


def check_batch_count(value, seed: int = 0) -> None:
    """Runs of a batch count: 1 to ``MAX_BATCH_COUNT``, and seeds ``seed`` .. ``seed`` + count - 1 all valid."""
    check_int("batch count", value, 1, MAX_BATCH_COUNT)
    if seed + int(value) - 1 > MAX_SEED:
        raise InputError(f"seed {seed} with batch count {int(value)} runs past the largest seed {MAX_SEED}; "
                         "choose a smaller seed", field="seed")
