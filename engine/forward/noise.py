"""The forward (noising) process, made visible: x_t for chosen t, and the schedule's curves.

Ho et al. 2020, eq. 4: q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I), so
x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) noise. The pixels come from
diffusers' ``DDPMScheduler.add_noise``; the curves from the same scheduler's
``betas`` and ``alphas_cumprod``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from diffusers import DDPMScheduler
from PIL import Image

from engine.errors import InputError, ModelLoadError, WorkbenchError
from engine.images import open_rgb
from engine.models.configs import read_scheduler_config
from engine.sampling.compare import sigmas_at
from engine.sampling.schedulers import (BETA_SCHEDULES, TIMESTEP_SPACINGS, check_spacing, make_scheduler,
                                        scheduler_spec)
from engine.validation import check_choice, check_int, check_seed, given

DEFAULT_TIMESTEPS = (0, 50, 100, 200, 400, 600, 800, 999)
SAMPLE_IMAGES = ("china.jpg", "flower.jpg")  # scikit-learn ships both inside its wheel: offline
MAX_TRAIN_TIMESTEPS = 10_000
MAX_FRAMES = 32  # a strip wider than this is unreadable anyway
MIN_RESOLUTION, MAX_RESOLUTION = 16, 512
MIN_ALPHA_BAR = 2.0**-24  # what diffusers' DDIM/Euler put in for a zero terminal SNR; keeps log SNR finite
CURVES = ("beta", "alpha_bar", "sqrt(alpha_bar)", "sqrt(1 - alpha_bar)", "log SNR")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class NoiseSchedule:
    """The fields of a scheduler config that fix beta_t (and so alpha_bar_t)."""

    beta_schedule: str = "linear"  # DDPM's (Ho et al. 2020, sec. 4)
    num_train_timesteps: int = 1000  # DDPM's T
    beta_start: float = 0.0001  # DDPM's beta_1
    beta_end: float = 0.02  # DDPM's beta_T
    rescale_betas_zero_snr: bool = False  # Lin et al. 2023, alg. 1: alpha_bar_T = 0 (pure noise at T)
    trained_betas: tuple[float, ...] | None = None  # a model's explicit betas; when set, they win

    def __post_init__(self):
        check_choice("beta schedule", self.beta_schedule, BETA_SCHEDULES)
        check_int("num_train_timesteps", self.num_train_timesteps, 2, MAX_TRAIN_TIMESTEPS)
        for name in ("beta_start", "beta_end"):
            value = getattr(self, name)
            if not _is_number(value) or not 0 < value < 1:
                raise InputError(f"{name} must be a number between 0 and 1 (exclusive); got {given(value)}")
        if self.beta_start > self.beta_end:
            raise InputError(f"beta_start must not exceed beta_end; got {self.beta_start!r} > {self.beta_end!r}")
        if not isinstance(self.rescale_betas_zero_snr, bool):
            raise InputError(f"rescale_betas_zero_snr must be true or false; got {given(self.rescale_betas_zero_snr)}")
        if self.trained_betas is not None and len(self.trained_betas) != self.num_train_timesteps:
            raise InputError(f"trained_betas has {len(self.trained_betas)} values; "
                             f"num_train_timesteps is {self.num_train_timesteps}")

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "NoiseSchedule":
        """The schedule of a model, from its scheduler's config (any diffusers scheduler)."""
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in dict(config).items() if k in known and v is not None}
        if "trained_betas" in kwargs:
            kwargs["trained_betas"] = tuple(float(b) for b in kwargs["trained_betas"])
        return cls(**kwargs)

    def scheduler(self) -> DDPMScheduler:
        kwargs = {f.name: getattr(self, f.name) for f in fields(self)}
        if self.trained_betas is not None:
            kwargs["trained_betas"] = list(self.trained_betas)
        return DDPMScheduler(**kwargs)


@dataclass(frozen=True)
class NoiseRequest:
    timesteps: tuple[int, ...] = DEFAULT_TIMESTEPS  # DDPM's T=1000 seen from clean to pure noise
    schedule: NoiseSchedule = field(default_factory=NoiseSchedule)  # DDPM's linear betas
    seed: int = 0  # one fixed noise sample per seed, so only t changes between frames
    resolution: int = 128  # pixels per side: enough to see the noise, small enough to be instant
    sample_image: str = "china.jpg"  # used when no image is given

    def __post_init__(self):
        if not isinstance(self.schedule, NoiseSchedule):
            raise InputError(f"schedule must be a NoiseSchedule; got {type(self.schedule).__name__}")
        object.__setattr__(self, "timesteps", parse_timesteps(self.timesteps))  # frozen: normalise once
        last = self.schedule.num_train_timesteps - 1
        if not 1 <= len(self.timesteps) <= MAX_FRAMES:
            raise InputError(f"give 1 to {MAX_FRAMES} timesteps; got {len(self.timesteps)}")
        for t in self.timesteps:
            if not 0 <= t <= last:
                raise InputError(f"timesteps must be whole numbers from 0 to {last} (num_train_timesteps - 1); "
                                 f"got {t!r}")
        check_seed(self.seed, allow_random=False)
        check_int("resolution", self.resolution, MIN_RESOLUTION, MAX_RESOLUTION)
        if self.sample_image not in SAMPLE_IMAGES:
            raise InputError(f"unknown sample image {given(self.sample_image)}; allowed: {', '.join(SAMPLE_IMAGES)}")


@dataclass(frozen=True, eq=False)
class NoiseStrip:
    """x_t for each requested t, and what made them."""

    images: tuple[np.ndarray, ...]  # (H, W, 3) uint8, one per timestep
    timesteps: tuple[int, ...]
    alpha_bars: tuple[float, ...]  # alpha_bar_t per frame: signal coefficient squared
    x0: torch.Tensor  # (1, 3, H, W) in [-1, 1]
    noise: torch.Tensor  # (1, 3, H, W), N(0, I) from the seed


def parse_timesteps(value: str | Sequence) -> tuple[int, ...]:
    """``"0, 50, 100"`` (commas or spaces), a number or a sequence of numbers -> whole-number timesteps."""
    if value is None:
        parts = []
    elif isinstance(value, str):
        parts = value.replace(",", " ").split()
    elif isinstance(value, (int, float)):
        parts = [value]
    else:
        parts = list(value)
    if not parts:
        raise InputError("no timesteps given; give whole numbers like 0, 50, 100, 999")
    out = []
    for part in parts:
        try:
            number = float(part)
        except (TypeError, ValueError):
            raise InputError(f"timesteps must be whole numbers like 0, 50, 999; got {given(part)}") from None
        if isinstance(part, bool) or not math.isfinite(number) or not number.is_integer():
            raise InputError(f"timesteps must be whole numbers like 0, 50, 999; got {given(part)}")
        out.append(int(number))
    return tuple(out)


def clamp_timesteps(value: str | Sequence, num_train_timesteps: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Timesteps fitted to a schedule of ``num_train_timesteps``: (the timesteps, the ones past its end).

    Those past the end (above num_train_timesteps - 1) move to the end, and the end is then shown
    once: 0, 600, 999 on a 500-step schedule give 0, 499 (and 600, 999 as past it). Negative ones
    stay as given, for :class:`NoiseRequest` to refuse.
    """
    check_int("num_train_timesteps", num_train_timesteps, 2, MAX_TRAIN_TIMESTEPS)
    last = int(num_train_timesteps) - 1
    fitted, past = [], []
    for t in parse_timesteps(value):
        if t > last:
            past.append(t)
            t = last
        if t == last and past and last in fitted:
            continue
        fitted.append(t)
    return tuple(fitted), tuple(past)


def load_image(source: str | Path | Image.Image | np.ndarray | None, sample_image: str = "china.jpg") -> Image.Image:
    """An RGB PIL image from a path, a PIL image or an array; ``None`` gives a built-in sample."""
    if source is None:
        from sklearn.datasets import load_sample_image

        return Image.fromarray(load_sample_image(sample_image)).convert("RGB")
    return open_rgb(source)


def sample_image(name: str) -> Image.Image:
    """One of the sample images (:data:`SAMPLE_IMAGES`)."""
    check_choice("sample image", name, SAMPLE_IMAGES)
    return load_image(None, name)


def image_to_tensor(image: Image.Image, resolution: int) -> torch.Tensor:
    """Center-crop to a square, resize to ``resolution``, scale to [-1, 1]: (1, 3, H, W)."""
    w, h = image.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    image = image.crop((left, top, left + side, top + side)).resize((resolution, resolution), Image.BICUBIC)
    array = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0)  # (H, W, 3)
    return array.permute(2, 0, 1)[None].contiguous()


def make_noise(shape: Sequence[int], seed: int) -> torch.Tensor:
    """The fixed noise of ``seed``: ``torch.randn(shape, generator=torch.Generator('cpu').manual_seed(seed))``."""
    return torch.randn(tuple(shape), generator=torch.Generator("cpu").manual_seed(seed))


def to_uint8_images(images: torch.Tensor) -> tuple[np.ndarray, ...]:
    """(N, 3, H, W) in [-1, 1] -> N arrays (H, W, 3) uint8, clamped and rounded before the cast."""
    images = ((images / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
    return tuple(im.permute(1, 2, 0).numpy() for im in images)


def add_noise(request: NoiseRequest, image=None) -> NoiseStrip:
    """x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) noise for each requested t, one noise for all."""
    # 1. The clean image x0 and the seed's noise, both (1, 3, H, W).
    x0 = image_to_tensor(load_image(image, request.sample_image), request.resolution)
    noise = make_noise(x0.shape, request.seed)

    # 2. The forward process through diffusers' own add_noise, all frames in one batch.
    scheduler = request.schedule.scheduler()
    n = len(request.timesteps)
    timesteps = torch.tensor(request.timesteps, dtype=torch.long)
    x_t = scheduler.add_noise(x0.expand(n, -1, -1, -1), noise.expand(n, -1, -1, -1), timesteps)  # (N, 3, H, W)
    alpha_bars = tuple(float(scheduler.alphas_cumprod[t]) for t in request.timesteps)
    return NoiseStrip(to_uint8_images(x_t), request.timesteps, alpha_bars, x0, noise)


def schedule_arrays(schedule: NoiseSchedule) -> dict[str, np.ndarray]:
    """beta_t, alpha_bar_t, sqrt(alpha_bar_t), sqrt(1 - alpha_bar_t) and log SNR for t = 0..T-1."""
    scheduler = schedule.scheduler()
    betas = scheduler.betas.double().numpy()
    alpha_bar = scheduler.alphas_cumprod.double().numpy()
    # SNR_t = alpha_bar_t / (1 - alpha_bar_t) (Kingma et al. 2021, eq. 2); clipped where a zero-SNR
    # schedule reaches alpha_bar_T = 0, as diffusers itself does.
    clipped = np.clip(alpha_bar, MIN_ALPHA_BAR, 1 - 1e-12)
    return {
        "t": np.arange(len(betas)),
        "beta": betas,
        "alpha_bar": alpha_bar,
        "sqrt(alpha_bar)": np.sqrt(alpha_bar),
        "sqrt(1 - alpha_bar)": np.sqrt(1 - alpha_bar),
        "log SNR": np.log(clipped) - np.log1p(-clipped),
    }


def schedule_curves(schedules: Mapping[str, NoiseSchedule]):
    """One long DataFrame (t, value, curve, schedule): every curve of every named schedule, for overlays."""
    import pandas as pd

    frames = []
    for label, schedule in schedules.items():
        arrays = schedule_arrays(schedule)
        for curve in CURVES:
            frames.append(pd.DataFrame({"t": arrays["t"], "value": arrays[curve], "curve": curve, "schedule": label}))
    return pd.concat(frames, ignore_index=True)


def visited_timesteps(scheduler: str, num_inference_steps: int, schedule: NoiseSchedule) -> tuple[int, ...]:
    """The timesteps a sampler visits for ``num_inference_steps`` on ``schedule`` (980, 960, ... for DDIM 50)."""
    scheduler_spec(scheduler)
    check_int("steps", num_inference_steps, 1, schedule.num_train_timesteps)
    # Through trained_betas: every scheduler takes explicit betas; not every one knows every beta_schedule.
    reference = schedule.scheduler()
    sampler = make_scheduler(scheduler, {**reference.config, "trained_betas": reference.betas.tolist()})
    sampler.set_timesteps(int(num_inference_steps))
    return tuple(int(round(float(t))) for t in sampler.timesteps.tolist())


def visited_points(scheduler: str, num_inference_steps: int, schedules: Mapping[str, NoiseSchedule]):
    """The curves' values at the visited timesteps: a DataFrame like :func:`schedule_curves`'s, for markers."""
    import pandas as pd

    frames = []
    for label, schedule in schedules.items():
        visited = np.array(sorted(set(visited_timesteps(scheduler, num_inference_steps, schedule))))
        arrays = schedule_arrays(schedule)
        for curve in CURVES:
            frames.append(pd.DataFrame({"t": visited, "value": arrays[curve][visited], "curve": curve,
                                        "schedule": label}))
    return pd.concat(frames, ignore_index=True)


def schedule_of_model(location: str | Path) -> NoiseSchedule:
    """The noise schedule a model was trained with, from its scheduler config."""
    return NoiseSchedule.from_config(read_scheduler_config(location))


def model_schedule(registry, model: str) -> NoiseSchedule:
    """The noise schedule ``model`` (found by ``registry``) was trained with; an error names its folder as shown."""
    try:
        return schedule_of_model(registry.resolve(model).location)
    except ModelLoadError as exc:  # it names the config's folder
        raise ModelLoadError(registry.shown(str(exc))) from exc


def model_schedule_facts(registry, schedule: NoiseSchedule, scheduler: str = "DDIM", num_inference_steps: int = 10,
                         timestep_spacing: str | None = None, model: str | None = None) -> dict:
    """:func:`schedule_facts` of ``schedule``, or of ``model``'s own schedule where one is named (with its
    scheduler config: its steps_offset and spacing count)."""
    if model:
        schedule = model_schedule(registry, model)
        config = read_scheduler_config(registry.resolve(model).location)
        return schedule_facts(schedule, scheduler, num_inference_steps, timestep_spacing, config)
    return schedule_facts(schedule, scheduler, num_inference_steps, timestep_spacing)


def schedule_models(registry) -> list[str]:
    """Models whose schedule the Noise tab can show: every model with a scheduler config."""
    return registry.list_models("unconditional") + [m for m in registry.list_models("txt2img")
                                                    if not m.endswith(".safetensors")]


def run_sigmas(registry, model: str, timesteps: Sequence[float]) -> tuple[float, ...]:
    """sigma at each of a run's ``timesteps``, from ``model``'s schedule (NaN where the schedule is unreadable)."""
    try:
        alpha_bar = schedule_arrays(model_schedule(registry, model))["alpha_bar"]
    except (WorkbenchError, KeyError, TypeError, ValueError, OSError):
        return (float("nan"),) * len(timesteps)
    return sigmas_at(timesteps, alpha_bar)


# -- what the schedule leaves at the end (Lin et al. 2023) ------------------------------------------------
# Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps are Flawed", Table 1: the schedules it
# names, with sqrt(alpha_bar_T) and SNR(T) to the digits printed there.
LIN_ET_AL_TABLE_1 = {
    "Stable Diffusion": (NoiseSchedule("scaled_linear", 1000, 0.00085, 0.012), 0.068265, 0.004682),
    "DDPM linear": (NoiseSchedule("linear", 1000, 0.0001, 0.02), 0.006353, 0.000040),
}
FACTS_DIGITS = 6  # significant figures of the readouts: Table 1 prints six


def significant(value: float, digits: int = FACTS_DIGITS) -> float:
    """``value`` rounded to ``digits`` significant figures (0 stays 0)."""
    return float(f"{value:.{digits}g}")


def spacing_timesteps(scheduler: str, num_inference_steps: int, config: Mapping[str, Any]) -> dict[str, tuple]:
    """{spacing: the timesteps ``scheduler`` built from ``config`` visits in ``num_inference_steps``}, per spacing."""
    out = {}
    for spacing in TIMESTEP_SPACINGS:
        sampler = make_scheduler(scheduler, {**config, "timestep_spacing": spacing})
        sampler.set_timesteps(int(num_inference_steps))
        out[spacing] = tuple(int(round(float(t))) for t in sampler.timesteps.tolist())
    return out


def schedule_facts(schedule: NoiseSchedule, scheduler: str = "DDIM", num_inference_steps: int = 10,
                   timestep_spacing: str | None = None, config: Mapping[str, Any] | None = None) -> dict:
    """What ``schedule`` leaves at its last timestep T, and where a sampler starts under each spacing.

    ``config``: the model's own scheduler config (its ``steps_offset`` and ``timestep_spacing`` count), else
    the schedule's DDPMScheduler config. ``timestep_spacing`` None: the config's own. Returns a dict of plain
    values: sqrt(alpha_bar_T), sqrt(1 - alpha_bar_T) and SNR(T) = alpha_bar_T / (1 - alpha_bar_T) to six
    significant figures, Table 1's numbers where the schedule is one it names, the visited timesteps per
    spacing (the first of each is where sampling starts) and a sentence on what SNR(T) means.
    """
    # 1. The inputs: the sampler, its steps and the spacing, checked as a run checks them.
    scheduler_spec(scheduler)
    check_int("steps", num_inference_steps, 1, schedule.num_train_timesteps)
    reference = schedule.scheduler()
    config = {**reference.config, **(config or {}), "trained_betas": reference.betas.tolist()}
    config.pop("_use_default_values", None)  # from_config would drop the keys it lists (timestep_spacing among them)
    if timestep_spacing in (None, ""):
        timestep_spacing = config.get("timestep_spacing") or "leading"
    check_spacing(timestep_spacing)

    # 2. The end of the schedule, in double precision from diffusers' own alphas_cumprod.
    last = schedule.num_train_timesteps - 1
    alpha_bar_T = float(reference.alphas_cumprod.double()[last])
    snr_T = alpha_bar_T / (1 - alpha_bar_T)  # Kingma et al. 2021, eq. 2
    paper = next(({"schedule": name, "sqrt_alpha_bar_T": sqrt_a, "snr_T": snr}
                  for name, (s, sqrt_a, snr) in LIN_ET_AL_TABLE_1.items() if s == schedule), None)

    # 3. Where a sampler starts under each spacing: the first timestep of each.
    visited = spacing_timesteps(scheduler, num_inference_steps, config)
    return {
        "T": schedule.num_train_timesteps,
        "sqrt_alpha_bar_T": significant(math.sqrt(alpha_bar_T)),
        "sqrt_one_minus_alpha_bar_T": significant(math.sqrt(1 - alpha_bar_T)),
        "snr_T": significant(snr_T),
        "lin_et_al_table_1": paper,
        "scheduler": scheduler,
        "steps": int(num_inference_steps),
        "timestep_spacing": timestep_spacing,
        "timesteps": {spacing: list(ts) for spacing, ts in visited.items()},
        "first_timestep": {spacing: ts[0] for spacing, ts in visited.items()},
        "meaning": terminal_snr_sentence(snr_T, math.sqrt(alpha_bar_T), last),
    }


def terminal_snr_sentence(snr_T: float, sqrt_alpha_bar_T: float, last: int) -> str:
    """What a schedule's SNR(T) means for sampling (Lin et al. 2023, sec. 2)."""
    if snr_T == 0:
        return (f"SNR(T) is 0: at t = {last} nothing of the image is left, so the model learned to start from pure "
                "noise, which is what sampling gives it. Start sampling at t = T - 1 (trailing spacing).")
    return (f"SNR(T) is {significant(snr_T)}, not 0: at t = {last} the training images still kept "
            f"{significant(sqrt_alpha_bar_T)} of their signal, so the model never learned to start from pure noise. "
            "Sampling starts from pure noise anyway, and the model puts back the mean brightness it always saw "
            "there: its images stay medium-bright.")
