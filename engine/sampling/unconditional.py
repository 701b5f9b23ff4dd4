"""Unconditional sampling: the seed's DDPM loop over a UNet2DModel, streamed step by step.

The loop is the one the seed notes write for ``google/ddpm-cat-256``:
``scheduler.set_timesteps``, then for each t the UNet, ``scheduler.step`` and
the next input. It gives the same images as diffusers' ``DDPMPipeline`` for the
same model, seed, scheduler and steps. Where the two differ, the loop is right
and the pipeline is not: ``DDPMPipeline`` never scales the initial noise by
``init_noise_sigma`` nor calls ``scale_model_input`` (both are no-ops for DDPM,
DDIM, PNDM, DPM++ and UniPC, but not for Euler), and it passes ``generator`` to
``scheduler.step`` even where ``step`` takes none (PNDM, UniPC), which raises.
"""

from __future__ import annotations

import math
import secrets
import time
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Iterator, Sequence

import diffusers
import torch
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image, ImageColor

from engine.cancel import CancelToken, check
from engine.errors import InputError
from engine.events import Done, Preview, Started, Step
from engine.sampling import fast
from engine.sampling.denoise import extra_step_kwargs
from engine.sampling.preview import PixelPreviewer, X0Previewer, scaled, vp_scale
from engine.sampling.hashes import tensor_sha256
from engine.sampling.schedulers import (check_spacing, make_scheduler, scheduler_code, scheduler_spec,
                                        spacing_overrides)
from engine.sampling.views import step_views
from engine.validation import check_bool, check_int, check_seed

if TYPE_CHECKING:
    from diffusers import DDPMPipeline, SchedulerMixin

MAX_STEPS = 10_000  # a sanity bound only: the model's own num_train_timesteps is checked when the run starts
MAX_BATCH = 16  # a 4x4 grid; larger batches of 256 px images outgrow memory and the page
DEFAULT_STEPS = 50  # the seed's set_timesteps(50): enough for DDIM, DPM++, UniPC, PNDM, Euler
DEFAULT_SCHEDULER = "DDIM"  # see UnconditionalRequest.scheduler
UNCONDITIONAL_SCHEDULERS = ("DDIM", "DDPM", "DPM++ 2M", "UniPC", "PNDM", "Euler")  # the tab's list, default first
SCRUB_FRAMES = 100  # Done keeps the previews of at most this many steps (every k-th), for the page's scrubber
SCRUB_BYTES = 256 * 2**20  # ... and about this much of their tensors at most (16 float32 images of 256 px keep 7)
PROBE_STEPS = 3  # a probe's steps: the first pays for warm-up, the other two are timed
GRID_GAP = 2  # pixels between the tiles of a batch's grid (torchvision's make_grid pads 2)
GRID_GAP_COLOR = "#808080"  # mid-grey: visible against the digits' black ground and their white strokes alike


@dataclass(frozen=True)
class UnconditionalRequest:
    # DDIM at 50 steps: 20x fewer steps than DDPM as trained (a 32 px digit in about 7 s on 2 CPU cores, not
    # 140 s), with the built-in's quality measured (0.982 confident against DDPM's 0.994, README "Quality"),
    # deterministic for a seed, and what the Training tab's sample grids use. DPM++ 2M needs fewer steps but
    # is unmeasured here. DDPM (as trained) stays one choice away, built from the model's own config.
    scheduler: str = DEFAULT_SCHEDULER
    num_inference_steps: int | None = None  # None: 50, or the model's T for DDPM (as trained)
    seed: int = -1  # -1 draws a random seed; the one used is reported back
    batch_size: int = 1  # images per run, shown as a grid
    model: str = ""  # the model string: what Workbench.iter_unconditional loads ("": the built-in), and the metadata
    compile: bool = False  # torch.compile the UNet: faster steps after a first run that compiles (engine/sampling/fast.py)
    timestep_spacing: str = ""  # "" = the model's own; "trailing" starts at T - 1 (Lin et al. 2023, sec. 3.3)

    def __post_init__(self):
        scheduler_spec(self.scheduler, UNCONDITIONAL_SCHEDULERS)
        check_spacing(self.timestep_spacing, allow_own=True)
        if self.num_inference_steps is not None:
            check_int("steps", self.num_inference_steps, 1, MAX_STEPS)
        check_seed(self.seed)
        check_int("batch size", self.batch_size, 1, MAX_BATCH)
        check_bool("compile", self.compile)

    def resolved(self, pipe: DDPMPipeline) -> "UnconditionalRequest":
        """A copy with the seed drawn and the steps defaulted and checked against the model's T."""
        train_steps = pipe.scheduler.config.num_train_timesteps
        steps = self.num_inference_steps or default_num_inference_steps(self.scheduler, pipe.scheduler.config)
        check_int(f"steps for this model (trained with {train_steps} timesteps)", steps, 1, train_steps)
        return replace(
            self,
            num_inference_steps=int(steps),
            seed=self.seed if self.seed >= 0 else secrets.randbelow(2**32),
            batch_size=int(self.batch_size),
        )


def default_num_inference_steps(scheduler: str, scheduler_config) -> int:
    """The model's training timesteps for DDPM (sampling as trained), else 50."""
    if scheduler == "DDPM":
        return int(scheduler_config["num_train_timesteps"])
    return min(DEFAULT_STEPS, int(scheduler_config["num_train_timesteps"]))


def sample_shape(unet_config, batch_size: int) -> tuple[int, ...]:
    """(B, C, H, W) of the initial noise, as ``DDPMPipeline`` builds it."""
    size = unet_config.sample_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    return (batch_size, unet_config.in_channels, *size)


def iter_unconditional(
    request: UnconditionalRequest,
    *,
    pipe: DDPMPipeline,  # or DDIMPipeline / PNDMPipeline: a UNet2DModel and a DDPM-family scheduler
    cancel: CancelToken | None = None,
) -> Iterator[Started | Step | Done]:
    """Denoise from pure noise, yielding ``Started``, one ``Step`` per timestep, then ``Done``.

    Previews are lazy (drawn only for the steps a consumer looks at), so a 1000-step
    DDPM run costs what the pipeline costs. ``Done.steps`` keeps each step's timing, and
    the previews of every k-th step counted back from the last (the last always): at most
    ``SCRUB_FRAMES`` steps and about ``SCRUB_BYTES`` of tensors, not every x_t of the run.
    Nothing is saved here: the caller records and saves ``Done`` (engine.records.runs; a batch's grid beside it).
    """
    # 1. Resolve the seed and steps, build a fresh scheduler from the model's config.
    request = request.resolved(pipe)
    scheduler = make_scheduler(request.scheduler, pipe.scheduler.config, **spacing_overrides(request.timestep_spacing))
    speed = fast.speed_for(pipe, compile=request.compile)  # the GPU path's hooks; the plain loop on a CPU
    device, unet = pipe.device, pipe.unet
    generator = torch.Generator("cpu").manual_seed(request.seed)
    step_kwargs = extra_step_kwargs(scheduler, generator)

    with torch.no_grad():
        # 2. The initial noise, drawn as DDPMPipeline draws it (one generator, the whole batch).
        shape = sample_shape(unet.config, request.batch_size)
        image = randn_tensor(shape, generator=generator, device=device, dtype=unet.dtype)  # (B, C, H, W)
        noise_sha256 = tensor_sha256(image)  # for the run's record: a replay checks it draws the same noise
        image = image * scheduler.init_noise_sigma  # 1 except for sigma-space schedulers (Euler)

        # 3. The timesteps the loop visits (980, 960, ..., 0 for 50 of 1000), read to the host once.
        try:
            scheduler.set_timesteps(request.num_inference_steps, device=speed.scheduler_device)
        except ValueError as exc:  # e.g. PNDM's Runge-Kutta warm-up needs at least 4 steps
            raise InputError(f"{request.scheduler} cannot run {request.num_inference_steps} steps on this model; "
                             f"try more steps or another scheduler ({exc})") from None
        timesteps = scheduler.timesteps
        unet_timesteps = speed.unet_timesteps(timesteps)  # the same values on the UNet's device
        visited = tuple(int(t) for t in timesteps.tolist())
        info = _info(request, scheduler, shape)
        info["state"] = fast.run_state(pipe, compile=request.compile)  # what this run set (run_events)
        code = diffusers_code(pipe, request)
        denoise = speed.denoiser(image, unet_timesteps[0])
        yield Started(total=len(visited), timesteps=visited, code=code,
                      info={**info, "compiling": denoise.pending} if denoise.pending else info)
        info.update(denoise.build())  # compiled or captured now, so that the steps' times are the steps'

        # 4. The denoising loop: UNet, scheduler.step, next input. Steps kept for the scrubber: every k-th.
        pixels = PixelPreviewer()
        steps: list[Step] = []
        every = scrub_every(len(visited), 3 * image.numel() * image.element_size())  # x_t, x0, UNet output
        start = time.perf_counter()
        for i, t in enumerate(timesteps):
            check(cancel, i)
            model_input = scheduler.scale_model_input(image, t)  # the same tensor except for Euler-like schedulers
            model_output = denoise(model_input, unet_timesteps[i])  # (B, C, H, W)
            out = scheduler.step(model_output, t, image, **step_kwargs)
            speed.step_done()
            x0 = getattr(out, "pred_original_sample", None)
            if x0 is None:  # drawn from (model_output, x_t) only if a consumer looks at this step
                x0_preview = Preview((model_output, model_input),
                                     speed.previewer(X0Previewer(scheduler, visited[i], pixels)))
            else:
                x0_preview = Preview(x0, speed.previewer(pixels))
            image = out.prev_sample
            step = Step(
                step=i + 1, total=len(visited), timestep=visited[i],
                preview_xt=Preview(image, speed.previewer(scaled(pixels, vp_scale(scheduler)))), preview_x0=x0_preview,
                elapsed=time.perf_counter() - start,
                # eps and v of this step whatever the model predicts, drawn from (output, x_t) as Text to image's
                views=step_views(scheduler, visited[i], pixels, image, model_output, None, sample=model_input),
            )
            steps.append(step if (len(visited) - step.step) % every == 0 else
                         replace(step, preview_xt=None, preview_x0=None, views={}))
            yield step
        check(cancel, len(visited))

        # 5. Post-process exactly as DDPMPipeline does: [-1, 1] -> [0, 1] -> uint8 PIL.
        image = (image / 2 + 0.5).clamp(0, 1)
        image = image.float() if image.dtype == torch.bfloat16 else image  # numpy has no bf16 (the GPU path's)
        images = pipe.numpy_to_pil(image.cpu().permute(0, 2, 3, 1).numpy())
    info["elapsed"] = round(time.perf_counter() - start, 3)
    info["steps_per_second"] = speed.steps_per_second()
    yield Done(images=tuple(images), info=info, steps=tuple(steps), code=code, request=request,
               noise_sha256=noise_sha256)  # recorded and saved by the caller (engine.records.runs)


def scrub_every(total: int, frame_bytes: int) -> int:
    """k such that keeping every k-th of ``total`` steps keeps at most ``SCRUB_FRAMES`` frames of
    ``frame_bytes`` each and about ``SCRUB_BYTES`` in all (two frames at least: the scrubber's ends)."""
    frames = max(2, min(SCRUB_FRAMES, SCRUB_BYTES // max(frame_bytes, 1)))
    return max(1, math.ceil(total / frames))


def iter_probe(
    request: UnconditionalRequest,
    *,
    pipe: DDPMPipeline,
    cancel: CancelToken | None = None,
) -> Iterator[Started | Step | Done]:
    """``PROBE_STEPS`` DDIM steps of ``request``'s batch size on ``pipe``, saved nowhere: what a step of this
    model costs on this device (the UNet is most of it whatever the scheduler; see :func:`seconds_per_step`)."""
    steps = min(PROBE_STEPS, pipe.scheduler.config.num_train_timesteps)
    yield from iter_unconditional(replace(request, scheduler="DDIM", num_inference_steps=steps, seed=0),
                                  pipe=pipe, cancel=cancel)


def seconds_per_step(steps: Sequence[Step]) -> float | None:
    """Seconds a step took, from a run's step timings: the mean after the first (which pays for warm-up)."""
    if not steps:
        return None
    if len(steps) == 1:
        return steps[0].elapsed
    return (steps[-1].elapsed - steps[0].elapsed) / (len(steps) - 1)


@dataclass(frozen=True)
class RunEstimate:
    """How long a run would take here, before it starts: its steps times a measured step."""

    num_inference_steps: int
    seconds_per_step: float  # measured on this device, for this model and batch size
    measured_by: str  # where seconds_per_step comes from: "the last run" or "a 3-step probe" (PROBE_STEPS)

    @property
    def seconds(self) -> float:
        return self.num_inference_steps * self.seconds_per_step


def _info(request: UnconditionalRequest, scheduler: SchedulerMixin, shape: tuple[int, ...]) -> dict:
    info = asdict(request)
    info["steps"] = info.pop("num_inference_steps")
    info["scheduler_class"] = type(scheduler).__name__
    info["height"], info["width"] = shape[-2:]
    return info


def image_grid(images: Sequence[Image.Image], gap: int = GRID_GAP, color: str = GRID_GAP_COLOR) -> Image.Image:
    """The batch as one image, as square as the batch allows, ``gap`` pixels of ``color`` between tiles
    (none round the edge); one image is returned as is."""
    if len(images) == 1:
        return images[0]
    w, h = images[0].size
    cols = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    mode = images[0].mode
    size = (cols * w + (cols - 1) * gap, rows * h + (rows - 1) * gap)
    grid = Image.new(mode, size, ImageColor.getcolor(color, mode))
    for i, im in enumerate(images):
        r, c = divmod(i, cols)
        grid.paste(im, (c * (w + gap), r * (h + gap)))
    return grid


def loop_code_parts(pipe: DDPMPipeline, scheduler: str, timestep_spacing: str) -> tuple[str, str, str, list[str]]:
    """What a plain loop's snippet on ``pipe`` needs: (the model's location, the expression that builds the
    scheduler from ``config``, ", generator=generator" where its step takes one, else "", the diffusers imports)."""
    ref = getattr(pipe, "workbench_ref", None)
    cls_name, build = scheduler_code(scheduler, "config", **spacing_overrides(timestep_spacing))
    takes_generator = "generator" in extra_step_kwargs(getattr(diffusers, cls_name), None)
    return (ref.location if ref is not None else "<model folder>", build,
            ", generator=generator" if takes_generator else "", sorted({"DDPMScheduler", "UNet2DModel", cls_name}))


def diffusers_code(pipe: DDPMPipeline, request: UnconditionalRequest) -> str:
    """A plain-diffusers snippet that reproduces ``request``'s images: the seed's loop."""
    location, build, generator_arg, imports = loop_code_parts(pipe, request.scheduler, request.timestep_spacing)
    dtype = f", dtype={pipe.unet.dtype}" if pipe.unet.dtype in (torch.float16, torch.bfloat16) else ""
    return (
        "import torch\n"
        f"from diffusers import {', '.join(imports)}\n"
        "from diffusers.utils.torch_utils import randn_tensor\n\n"
        f"path = {location!r}\n"
        f"unet = UNet2DModel.from_pretrained(path, subfolder='unet'{dtype}).to({pipe.device.type!r})\n"
        "config = DDPMScheduler.load_config(path, subfolder='scheduler')\n"
        f"scheduler = {build}\n"
        f"generator = torch.Generator('cpu').manual_seed({request.seed})\n"
        f"shape = {sample_shape(pipe.unet.config, request.batch_size)!r}  # (B, C, H, W)\n"
        "image = randn_tensor(shape, generator=generator, device=unet.device, dtype=unet.dtype)\n"
        "image = image * scheduler.init_noise_sigma\n"
        f"scheduler.set_timesteps({request.num_inference_steps}, device=unet.device)\n"
        "print(scheduler.timesteps)\n"
        "with torch.no_grad():\n"
        "    for t in scheduler.timesteps:\n"
        "        model_input = scheduler.scale_model_input(image, t)\n"
        "        noise_pred = unet(model_input, t).sample\n"
        f"        image = scheduler.step(noise_pred, t, image{generator_arg}).prev_sample\n"
        "image = (image / 2 + 0.5).clamp(0, 1)\n"
        "image = (image.permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype('uint8')\n"
    )
