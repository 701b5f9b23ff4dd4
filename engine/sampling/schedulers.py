"""Schedulers by the names users know from A1111, built with ``from_config``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import diffusers

from engine.errors import InputError
from engine.validation import check_choice, given


@dataclass(frozen=True)
class SchedulerSpec:
    cls_name: str  # a diffusers scheduler class
    kwargs: dict = field(default_factory=dict)  # overrides on top of the model's config
    stochastic: bool = False  # draws noise in step(): needs the generator


SCHEDULERS: dict[str, SchedulerSpec] = {
    "DDIM": SchedulerSpec("DDIMScheduler"),
    "DDPM": SchedulerSpec("DDPMScheduler", stochastic=True),
    "PNDM": SchedulerSpec("PNDMScheduler"),
    "LMS": SchedulerSpec("LMSDiscreteScheduler"),
    "Euler": SchedulerSpec("EulerDiscreteScheduler"),
    "Euler a": SchedulerSpec("EulerAncestralDiscreteScheduler", stochastic=True),
    "Heun": SchedulerSpec("HeunDiscreteScheduler"),
    "DPM++ 2M": SchedulerSpec("DPMSolverMultistepScheduler"),
    "DPM++ 2M Karras": SchedulerSpec("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    "DPM++ 2M SDE": SchedulerSpec(
        "DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}, stochastic=True
    ),
    "UniPC": SchedulerSpec("UniPCMultistepScheduler"),
}


# What DDPMScheduler (training, the forward process) takes; DDIM and the multistep samplers lack "sigmoid".
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid")
SAMPLER_BETA_SCHEDULES = tuple(s for s in BETA_SCHEDULES if s != "sigmoid")
TIMESTEP_SPACINGS = ("leading", "linspace", "trailing")  # diffusers' ``timestep_spacing`` values


def check_spacing(value, *, allow_own: bool = False) -> None:
    """A diffusers ``timestep_spacing``: leading, linspace or trailing ("" too, the model's own, ``allow_own``)."""
    if allow_own and value == "":
        return
    allowed = TIMESTEP_SPACINGS + (("'' (the model's own)",) if allow_own else ())
    if not isinstance(value, str) or value not in TIMESTEP_SPACINGS:
        raise InputError(f"unknown timestep spacing {given(value)}; allowed: {', '.join(allowed)}",
                         field="timestep spacing")


def spacing_overrides(timestep_spacing: str) -> dict:
    """The scheduler overrides of a request's ``timestep_spacing``: none for "" (the model's own)."""
    return {"timestep_spacing": timestep_spacing} if timestep_spacing else {}


def scheduler_spec(name: str, allowed=SCHEDULERS) -> SchedulerSpec:
    """The spec of scheduler ``name``; :class:`InputError` naming ``allowed`` when it is not one of them."""
    check_choice("scheduler", name, tuple(allowed))
    return SCHEDULERS[name]


def make_scheduler(name: str, config: Mapping[str, Any], **overrides) -> diffusers.SchedulerMixin:
    """A fresh scheduler of kind ``name`` from a model's scheduler ``config`` (``overrides`` on top: a request's
    ``timestep_spacing``)."""
    spec = scheduler_spec(name)
    cls = getattr(diffusers, spec.cls_name)
    return cls.from_config(config, **{**spec.kwargs, **overrides})


def scheduler_code(name: str, config_expr: str = "pipe.scheduler.config", **overrides) -> tuple[str, str]:
    """(class name, expression) that build the scheduler in plain diffusers code (``overrides`` as in
    :func:`make_scheduler`)."""
    spec = scheduler_spec(name)
    extra = "".join(f", {k}={v!r}" for k, v in {**spec.kwargs, **overrides}.items())
    return spec.cls_name, f"{spec.cls_name}.from_config({config_expr}{extra})"
