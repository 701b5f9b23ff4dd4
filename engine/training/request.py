"""Train an unconditional diffusion model: the diffusers tutorial's recipe, streamed as events.

``iter_train(request, models_dir=..., data_dir=...)`` yields :class:`TrainStarted`,
then :class:`TrainStep` every ``log_every`` steps, :class:`TrainSample` (a DDIM grid
from fixed seeds) ``first_sample_step`` steps in and every ``sample_every`` steps, :class:`TrainCheckpoint` after each
save, and :class:`TrainDone` last. A cancel (Stop) saves a checkpoint and ends with
``TrainDone(stopped=True)``. The loop runs through ``accelerate``, so the same code
trains on one device or under ``accelerate launch --multi_gpu --num_processes N``.

Run it without the page: ``python -m engine.training --help``.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field, fields, replace
from datetime import datetime
from pathlib import Path

import numpy as np

from engine.training.base import METHODS, SCRATCH
from engine.training.data import DataReport, check_captioned
from engine.errors import InputError
from engine.sampling.schedulers import SAMPLER_BETA_SCHEDULES
from engine.training.objectives.pixel import PRESETS, size_multiple
from engine.validation import MAX_SEED, check_choice, check_float, check_int, given

log = logging.getLogger(__name__)

RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MIXED_PRECISION = ("no", "fp16", "bf16")
# Fields a resumed run may change; every other field must match the checkpoint.
RUN_CONTROL = ("max_steps", "num_epochs", "save_every", "sample_every", "first_sample_step", "log_every",
               "num_workers", "sample_images", "sample_num_inference_steps", "validation_prompts", "resume")
# LoRA adapters' target modules per ``lora_layers`` (diffusers' train_text_to_image_lora.py targets "attention").
LORA_LAYERS = {
    "attention": ("to_q", "to_k", "to_v", "to_out.0"),  # self- and cross-attention of every transformer block
    "cross-attention": ("attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0"),  # only where the text is read
}
LORA_TEXT_LAYERS = ("q_proj", "k_proj", "v_proj", "out_proj")  # the CLIP text encoder's attention
MAX_LORA_RANK = 1024
MAX_PROMPTS_CHARS = 2000

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")  # diffusers' names; a request's "" keeps the model's own


@dataclass(frozen=True)
class TrainRequest:
    data: str = "digits"  # or a folder under data_dir, or a hub id; digits are built in, so a fresh machine trains
    run_name: str = ""  # the folder under models_dir; "" makes one from the preset (or base model), data and time
    start_from: str = SCRATCH  # "scratch": a new UNet of the preset; or a model (built-in, folder, hub id) to train on
    method: str = "full"  # "full": every weight of an unconditional UNet; "lora": adapters on a text-to-image model
    # The defaults are the "quick" recipe (engine/training/recipes.py): recognisable digits within 10 minutes on a
    # 2-core CPU. The "tutorial" recipe is the diffusers tutorial's schedule (hours on a CPU).
    preset: str = "digits"  # the built-in digits-ddpm's UNet: three levels, enough for digits, fast at 16 px
    resolution: int = 16  # digits are 8 px, upsampled; 16 px is a quarter of 32 px's work. The tutorial trains at 128
    batch_size: int = 32  # twice the tutorial's 16: more images a second on a CPU, a steadier loss
    clamp_batch_size: bool = False  # with fewer images than the batch size, train on all of them instead of failing
    num_epochs: int = 50  # the tutorial's; ignored when max_steps is set
    max_steps: int = 1200  # optimizer steps (about 21 epochs of the digits); 0 = num_epochs over the data
    learning_rate: float = 1e-3  # 10x the tutorial's 1e-4, which barely moves the loss in a short run
    lr_warmup_steps: int = 100  # linear warm-up before the cosine decay (the tutorial's 500 is a third of this run)
    gradient_accumulation_steps: int = 1  # >1 trades speed for a larger effective batch
    mixed_precision: str = "no"  # fp16 needs a CUDA GPU; bf16 a recent GPU or a CPU
    use_ema: bool = True  # EMA weights sample better after short runs; the tutorial trains without
    ema_max_decay: float = 0.9999  # diffusers' train_unconditional default, reached after a warm-up
    num_train_timesteps: int = 1000  # DDPM's T (Ho et al. 2020)
    beta_schedule: str = "linear"  # DDPM's; "squaredcos_cap_v2" is improved DDPM's cosine
    random_flip: bool = False  # the tutorial's RandomHorizontalFlip; only for left-right symmetric data, never digits
    max_grad_norm: float = 1.0  # the tutorial clips gradients to norm 1; 0 turns clipping off
    seed: int = 0  # model init, data order, noise and the sample grid's fixed noise
    save_every: int = 500  # steps between checkpoints (and one at the end); 0 = only at the end and on Stop
    sample_every: int = 100  # steps between sample grids; 0 = none. A grid costs about as much as 5-20 steps
    first_sample_step: int = 25  # a first grid this many steps into a session (a resume too); 0 = none early
    sample_images: int = 16  # a 4x4 grid
    sample_num_inference_steps: int = 50  # DDIM at 50 steps is close to DDPM's 1000
    log_every: int = 10  # steps per loss/LR/speed report: reading the loss waits for the device
    num_workers: int = 0  # DataLoader worker processes; 0 decodes in the training process
    # LoRA (method "lora"): diffusers' train_text_to_image_lora.py, the base model frozen.
    lora_rank: int = 4  # the adapters' rank r, the script's default: a few thousand weights per layer
    lora_alpha: float = 4.0  # the update is scaled by alpha / r; the script sets alpha = r (scale 1)
    lora_layers: str = "attention"  # adapted: q, k, v, out of every attention (the script's), or of cross-attention
    lora_text_encoder: bool = False  # adapters on the text encoder's attention too: a new word gets its own meaning
    snr_gamma: float = 0.0  # Min-SNR loss weighting (Hang et al. 2023) with this gamma; 0 = plain MSE, 5 = the paper's
    validation_prompts: str = ""  # LoRA grids: prompts separated by '|'; "" = the data's first four distinct captions
    resume: bool = False  # continue run_name from its checkpoint
    # What the UNet learns to predict and the zero-terminal-SNR schedule (Lin et al. 2023), as diffusers' training
    # scripts take them: "" keeps the model's own (epsilon from scratch); full training of an unconditional UNet.
    prediction_type: str = ""  # epsilon, v_prediction or sample; "" keeps the model's own (epsilon from scratch)
    rescale_betas_zero_snr: bool = False  # beta_T rescaled so that alpha_bar_T = 0: pure noise at T

    def __post_init__(self):
        check_choice("preset", self.preset, PRESETS)
        self._check_start()
        if not isinstance(self.run_name, str) or (self.run_name and not RUN_NAME.match(self.run_name)):
            raise InputError(
                f"run name {given(self.run_name)} is not allowed; use 1-64 letters, digits, '.', '_' or '-', "
                "starting with a letter or digit"
            )
        if self.resume and not self.run_name:
            raise InputError("resume needs the run name of an earlier run")
        multiple = size_multiple(self.preset)
        check_int("resolution", self.resolution, 8, 1024)
        if self.start_from == SCRATCH and self.resolution % multiple:  # a base model's own size is checked at set-up
            raise InputError(
                f"resolution must be a multiple of {multiple} for preset {self.preset!r}; got {self.resolution}"
            )
        for name, label, lo, hi in (
            ("batch_size", "batch size", 1, 4096), ("num_epochs", "epochs", 1, 1_000_000),
            ("max_steps", "max steps", 0, 100_000_000), ("lr_warmup_steps", "warm-up steps", 0, 100_000_000),
            ("gradient_accumulation_steps", "gradient accumulation steps", 1, 1024),
            ("num_train_timesteps", "train timesteps", 2, 100_000), ("seed", "seed", 0, MAX_SEED),
            ("save_every", "save interval", 0, 100_000_000), ("sample_every", "sample interval", 0, 100_000_000),
            ("first_sample_step", "first sample step", 0, 100_000_000), ("sample_images", "sample images", 1, 64),
            ("log_every", "log interval", 1, 1_000_000), ("num_workers", "DataLoader workers", 0, 64),
        ):
            check_int(label, getattr(self, name), lo, hi)
        check_int("sample steps", self.sample_num_inference_steps, 1, self.num_train_timesteps)
        check_float("learning rate", self.learning_rate, 0.0, 1.0, low_open=True)
        check_float("EMA decay", self.ema_max_decay, 0.0, 1.0, low_open=True, high_open=True)
        check_float("max gradient norm", self.max_grad_norm, 0.0, 1e6)
        check_choice("mixed precision", self.mixed_precision, MIXED_PRECISION)
        check_choice("beta schedule", self.beta_schedule, SAMPLER_BETA_SCHEDULES)  # the grids sample with DDIM
        if self.prediction_type != "" and self.prediction_type not in PREDICTION_TYPES:
            raise InputError(f"unknown prediction type {given(self.prediction_type)}; allowed: "
                             f"{', '.join(PREDICTION_TYPES)}, or '' (the model's own)", field="prediction type")
        for name in ("clamp_batch_size", "use_ema", "random_flip", "lora_text_encoder", "resume",
                     "rescale_betas_zero_snr"):
            if not isinstance(getattr(self, name), bool):
                raise InputError(f"{name} must be true or false; got {given(getattr(self, name))}")
        if not isinstance(self.data, str) or not self.data.strip():
            raise InputError("data must name 'digits', a folder under the data dir, or a hub id 'owner/name'")

    def _check_start(self) -> None:
        """What the run starts from, how it trains, and the LoRA settings."""
        check_choice("method", self.method, METHODS)
        if not isinstance(self.start_from, str) or not self.start_from.strip():
            raise InputError(f"start from must be {SCRATCH!r} or a model's name; got {self.start_from!r}",
                             field="start from")
        if self.method == "lora" and self.start_from == SCRATCH:
            raise InputError("a LoRA run trains adapters on a text-to-image model: start from must name one "
                             "(e.g. digits-sd), not 'scratch'", field="start from")
        check_int("LoRA rank", self.lora_rank, 1, MAX_LORA_RANK)
        check_float("LoRA alpha", self.lora_alpha, 0.0, 1e6, low_open=True)
        check_choice("LoRA layers", self.lora_layers, tuple(LORA_LAYERS))
        check_float("SNR gamma", self.snr_gamma, 0.0, 1e6)
        if not isinstance(self.validation_prompts, str) or len(self.validation_prompts) > MAX_PROMPTS_CHARS:
            raise InputError(f"validation prompts must be text of at most {MAX_PROMPTS_CHARS} characters",
                             field="validation prompts")

    @property
    def prompts(self) -> tuple[str, ...]:
        """The validation prompts given (split at '|'), empty ones dropped."""
        return tuple(p.strip() for p in self.validation_prompts.split("|") if p.strip())

    def resolved(self, now: datetime | None = None) -> "TrainRequest":
        """A copy with the run name made where none was given."""
        if self.run_name:
            return self
        slug = re.sub(r"[^A-Za-z0-9]+", "-", self.data.split("/")[-1]).strip("-")[:24] or "data"
        stamp = (now or datetime.now()).strftime("%Y%m%d-%H%M%S")
        if self.start_from == SCRATCH:
            return replace(self, run_name=f"{self.preset}-{slug}-{stamp}")
        base = re.sub(r"[^A-Za-z0-9]+", "-", self.start_from.split("/")[-1]).strip("-")[:20] or "model"
        how = "lora" if self.method == "lora" else "ft"
        return replace(self, run_name=f"{base}-{how}-{slug}-{stamp}")


def check_startable(request: TrainRequest) -> None:
    """What starting ``request`` would be refused for at once, found without reading an image: a LoRA run's data
    must have captions (the built-in ``digits`` have none)."""
    if request.method == "lora":
        check_captioned(request.data)


def checked_run_name(run_name: str) -> str:
    """Run names are plain folder names: nothing that could point outside the models dir."""
    run_name = (run_name.strip() if isinstance(run_name, str) else run_name) or ""
    if not isinstance(run_name, str) or not RUN_NAME.match(run_name):
        raise InputError(f"run name {given(run_name)} is not allowed; give the name of a run under the models dir "
                         "(letters, digits, '.', '_' or '-')")
    return run_name


def resume_request(models_dir: str | Path, run_name: str, **changes) -> TrainRequest:
    """The request a run was started with, set to resume, with run-control fields changed.

    Only :data:`RUN_CONTROL` fields may change (e.g. ``max_steps`` to train longer;
    a changed total stretches the cosine schedule).
    """
    from engine.training.checkpoints import read_state

    bad = sorted(set(changes) - set(RUN_CONTROL))
    if bad:
        raise InputError(f"a resumed run keeps its settings; cannot change {', '.join(bad)} "
                         f"(allowed: {', '.join(RUN_CONTROL[:-1])})")
    state = read_state(Path(models_dir) / run_name)
    return replace(TrainRequest(**state["request"]), **changes, resume=True)


# -- events ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainStarted:
    """Set up and about to take the first step: data checked, model built, checkpoint restored."""

    run_name: str
    run_dir: str
    start_step: int  # 0, or the checkpoint's step when resuming
    total: int  # optimizer steps in the whole run
    steps_per_epoch: int
    batch_size: int  # per process and micro-batch, after clamping
    num_processes: int
    data: DataReport
    history: tuple[float, ...] = ()  # per-step losses of earlier sessions (resume)
    info: dict = field(default_factory=dict)
    lr_history: tuple[float, ...] = ()  # per-step learning rates of earlier sessions
    bucket_edges: tuple[int, ...] = ()  # timestep buckets: bucket i holds t in [edges[i], edges[i+1]); () = none
    bucket_history: tuple[tuple[int, tuple[float | None, ...]], ...] = ()  # (step, loss per bucket) of earlier reports


@dataclass(frozen=True)
class TrainStep:
    """A report every ``log_every`` optimizer steps."""

    step: int  # 1-based, counted over the whole run (resumes included)
    total: int
    loss: float  # mean over the steps since the last report
    losses: tuple[float, ...]  # each of those steps' loss, averaged over processes
    lr: float  # the learning rate the last step used
    steps_per_sec: float
    images_per_sec: float  # all processes together
    elapsed: float  # seconds since this session started
    lrs: tuple[float, ...] = ()  # the learning rate each of those steps used
    bucket_loss: tuple[float | None, ...] = ()  # mean loss per timestep bucket over those steps; None: none fell in it

    @property
    def eta(self) -> float:
        """Seconds left at the recent speed."""
        return (self.total - self.step) / self.steps_per_sec if self.steps_per_sec > 0 else math.inf


@dataclass(frozen=True, eq=False)
class TrainSample:
    """A grid sampled with DDIM from the same fixed seeds each time, so grids compare."""

    step: int
    grid: np.ndarray  # (H, W, 3) uint8: the samples enlarged, with gaps between them
    images: np.ndarray  # (N, h, w, 3) uint8: the samples themselves, in the grid's order (row by row)


@dataclass(frozen=True)
class TrainCheckpoint:
    step: int
    path: str  # models_dir/<run name>: loads with DDPMPipeline.from_pretrained (a LoRA run's: load_lora_weights)
    published: str | None = None  # a LoRA run's file under models_dir/loras/, which the Text to image tab lists


@dataclass(frozen=True)
class TrainDone:
    step: int
    total: int
    stopped: bool  # True when ended by a cancel (Stop) before ``total``
    path: str | None  # the last checkpoint, None when nothing was saved
    elapsed: float
    info: dict = field(default_factory=dict)


TrainEvent = TrainStarted | TrainStep | TrainSample | TrainCheckpoint | TrainDone


def field_help() -> dict[str, tuple[object, str]]:
    """Field name -> (default, the comment beside it in :class:`TrainRequest`), for the CLI's and UI's help."""
    import inspect

    comments = {}
    for line in inspect.getsource(TrainRequest).splitlines():
        match = re.match(r"\s+(\w+): [^=]+=[^#]*#\s*(.+)$", line)
        if match:
            comments[match.group(1)] = match.group(2)
    return {f.name: (f.default, comments.get(f.name, "")) for f in fields(TrainRequest)}
