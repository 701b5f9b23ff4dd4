"""What a run will make, and what it would be refused for, read from its model's configs before it loads: the
schedulers a kind takes, an unconditional model's default steps, a text-to-image model's size, and img2img's kind,
size and start. Also the strength strip, img2img at several strengths one after another.

Each function takes the model registry (:class:`engine.models.registry.ModelRegistry`) it reads through.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable, Iterator

import numpy as np

from engine.errors import WorkbenchError
from engine.events import Done
from engine.models.configs import native_size, read_scheduler_config, unet_side
from engine.models.registry import default_model, local_config_folder
from engine.sampling.img2img import (FIXED_SIZE, STRIP_STRENGTHS, Img2ImgRequest, StripFrame, output_size, sdedit_size,
                                     similarity, size_from, start_timestep)
from engine.sampling.schedulers import SCHEDULERS, scheduler_spec
from engine.sampling.unconditional import UNCONDITIONAL_SCHEDULERS, default_num_inference_steps
from engine.validation import check_int


def scheduler_names(kind: str) -> tuple[str, ...]:
    """The scheduler names a tab of ``kind`` offers (and its requests accept), default first."""
    return UNCONDITIONAL_SCHEDULERS if kind == "unconditional" else tuple(SCHEDULERS)


def default_steps(registry, model: str, scheduler: str) -> int | None:
    """The default steps for an unconditional ``model`` and ``scheduler``; None where its config is unreadable."""
    try:
        location = registry.resolve(model or default_model("unconditional")).location
        return default_num_inference_steps(scheduler, read_scheduler_config(location))
    except (WorkbenchError, KeyError, TypeError, ValueError):
        return None


def default_size(registry, model: str) -> tuple[int, int] | None:
    """(width, height) a text-to-image model was trained at, read from its configs only; None where that needs a
    download (hub ids) or the configs are unreadable."""
    folder = local_config_folder(registry, model or default_model("txt2img"))
    return native_size(folder) if folder is not None else None


def check_img2img(registry, request: Img2ImgRequest) -> str:
    """The run kind ``request`` makes ("img2img" or "sdedit"), or the error it would end with, found without
    loading the model: its kind, its availability, a scheduler or steps an unconditional run does not take."""
    model = request.model or default_model("txt2img")
    kind = registry.kind_of(model)
    registry.check_available(model, kind)
    if kind == "txt2img":
        return "img2img"
    scheduler_spec(request.scheduler, UNCONDITIONAL_SCHEDULERS)
    img2img_size(registry, request)  # a width or height SDEdit does not take
    train_steps = default_steps(registry, model, "DDPM")
    if train_steps is not None:
        check_int(f"steps for this model (trained with {train_steps} timesteps)", request.num_inference_steps, 1,
                  train_steps)
    return "sdedit"


def img2img_size(registry, request: Img2ImgRequest) -> dict | None:
    """The size a run of ``request`` makes, read from its model's configs before it runs: ``{"width", "height",
    "size_from"}`` (in words, as the run's parameters say it); None where that needs the model downloaded.
    Raises the :class:`InputError` of a width or height an unconditional model (SDEdit) does not take."""
    model = request.model or default_model("txt2img")
    if registry.kind_of(model) == "txt2img":
        model_size = default_size(registry, model)
        if model_size is None:
            return None
        width, height = output_size(request.image.size, model_size, request.width, request.height)
        return {"width": width, "height": height, "size_from": size_from(request, model_size)}
    folder = local_config_folder(registry, model)
    side = unet_side(folder) if folder is not None else None
    if side is None:
        return None
    width, height = sdedit_size(request, (side, side))
    return {"width": width, "height": height, "size_from": FIXED_SIZE}


def img2img_start(registry, model: str, scheduler: str, num_inference_steps: int, strength: float,
                  timestep_spacing: str = "") -> dict:
    """Where a run of ``strength`` starts on ``model``'s schedule, before it runs: ``{"timestep", "steps_run",
    "num_train_timesteps"}``, read from its scheduler config."""
    model = model or default_model("txt2img")
    Img2ImgRequest(image=np.zeros((8, 8, 3), np.uint8), strength=strength, num_inference_steps=num_inference_steps,
                   scheduler=scheduler, timestep_spacing=timestep_spacing)  # the same checks as a run's
    config = read_scheduler_config(registry.resolve(model).location)
    t, steps_run = start_timestep(scheduler, config, num_inference_steps, strength, timestep_spacing)
    return {"timestep": t, "steps_run": steps_run, "num_train_timesteps": int(config["num_train_timesteps"])}


def iter_strength_strip(request: Img2ImgRequest, iter_img2img: Callable[..., Iterator], *,
                        strengths=STRIP_STRENGTHS, cancel=None) -> Iterator[StripFrame]:
    """``request`` at each of ``strengths`` (one seed for all), one run after another (``iter_img2img(request,
    cancel=..., history=...)`` makes one): each result, where it started, and how much of the original survives."""
    request = request.resolved()
    for strength in strengths:
        done = None
        for event in iter_img2img(replace(request, strength=strength), cancel=cancel, history="streamed"):
            if isinstance(event, Done):
                done = event
        image = done.images[0]
        yield StripFrame(strength=strength, start_timestep=done.info["start_timestep"], image=image,
                         survives=similarity(request.image, image, request.resize_mode),
                         path=done.paths[0] if done.paths else "")
