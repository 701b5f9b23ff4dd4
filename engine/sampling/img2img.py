"""Forward, then back: an image noised to the timestep its strength reaches, then denoised from there to 0.

SDEdit (Meng et al. 2022, sec. 3): x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) noise (Ho et al. 2020,
eq. 4, through ``scheduler.add_noise``), then the reverse loop from t alone. ``strength`` says how far forward:
of ``num_inference_steps`` steps, the last ``int(num_inference_steps * strength)`` are run (diffusers'
``get_timesteps``), so strength 1 starts from the first timestep and almost nothing of the image survives.

Two loops, one per kind of model:

- :func:`iter_img2img`, text-to-image models: the loop of diffusers' ``StableDiffusionImg2ImgPipeline``
  (the image encoded by the VAE, a latent drawn from its distribution with the run's generator, noised, then
  Text to image's own loop, :func:`engine.sampling.denoise.iter_denoise`, from there) and the same image for the
  same components, image, strength, prompt, guidance (and its rescale), scheduler (and its spacing) and seed;
- :func:`iter_sdedit`, unconditional models: the /ddpm loop started from ``scheduler.add_noise`` at that t,
  equal to the plain-diffusers loop of its code snippet.

Before either, the image is brought to the run's size by one of AUTOMATIC1111's resize modes
(:data:`engine.images.RESIZE_MODES`). A text-to-image run's size is the request's width and height, by default the
image's aspect at about the model's pixel count (:func:`output_size`), as ``StableDiffusionImg2ImgPipeline`` takes
an image of any size; an unconditional model's UNet has one fixed size, so SDEdit runs at that.
"""

from __future__ import annotations

import inspect
import math
import secrets
import time
from dataclasses import dataclass, fields, replace
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np
import torch
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from engine.cancel import CancelToken, check
from engine.errors import InputError
from engine.events import Done, Preview, Started, Step
from engine.images import RESIZE_MODES, open_rgb, resize_image
from engine.sampling.denoise import Start, extra_step_kwargs, get_timesteps, iter_denoise
from engine.sampling.fast import run_state
from engine.sampling.hashes import tensor_sha256
from engine.sampling.preview import PixelPreviewer, X0Previewer, scaled, vp_scale
from engine.sampling.schedulers import make_scheduler, scheduler_code, scheduler_spec, spacing_overrides
from engine.sampling.txt2img import MAX_STEPS as MAX_TXT2IMG_STEPS
from engine.sampling.txt2img import Txt2ImgRequest, check_guidance, check_prompts, check_schedule
from engine.sampling.unconditional import UNCONDITIONAL_SCHEDULERS, loop_code_parts, sample_shape
from engine.validation import MAX_SIDE, check_choice, check_float, check_int, check_seed, check_side

if TYPE_CHECKING:
    from diffusers import DDPMPipeline, SchedulerMixin, StableDiffusionPipeline

MAX_STEPS = 1000  # a sanity bound; an unconditional model's own T is checked when the run starts
STRIP_STRENGTHS = (0.2, 0.4, 0.6, 0.8, 1.0)  # the page's strip: how much of the original survives each
AUTO_PREVIEW = Txt2ImgRequest(prompt="")  # the x0 preview is chosen as Text to image's "auto" chooses it


@dataclass(frozen=True)
class Img2ImgRequest:
    image: Any  # a path, PIL image or uint8 array; kept as an RGB PIL image (resized to the run's size when it runs)
    prompt: str = ""  # text-to-image models only; unconditional ones take none
    negative_prompt: str = ""
    strength: float = 0.6  # how far forward, in (0, 1]: 0.6 keeps the layout and redraws the details
    num_inference_steps: int = 25  # of the full schedule; int(steps * strength) of them are run
    guidance_scale: float = 7.5  # SD 1.x's default; 1 turns classifier-free guidance off
    scheduler: str = "DPM++ 2M Karras"  # the text-to-image default; unconditional models take their tab's list
    seed: int = -1  # -1 draws a random seed; the one used is reported back
    model: str = ""  # the model string: which loop runs follows its kind
    width: int | None = None  # None: the image's aspect at about the model's pixel count (output_size); SDEdit: fixed
    height: int | None = None  # one side given, the other follows the image's aspect
    # A1111's default. The default size keeps the image's aspect, so it only scales; an image already at the
    # run's size is passed on untouched in every mode.
    resize_mode: str = "Just resize"
    timestep_spacing: str = ""  # "" = the model's own; "trailing" starts at T - 1 (Lin et al. 2023, sec. 3.3)
    guidance_rescale: float = 0.0  # phi of Lin et al. 2023, sec. 3.4 (text-to-image models); 0 = plain guidance

    def __post_init__(self):
        if self.image is None:
            raise InputError("no image given; upload one (PNG, JPEG, WebP, ...)", field="image")
        object.__setattr__(self, "image", open_rgb(self.image))  # frozen: normalised once
        check_prompts(self.prompt, self.negative_prompt)
        check_float("strength", self.strength, 0, 1, low_open=True)
        check_int("steps", self.num_inference_steps, 1, MAX_STEPS)
        check_guidance(self.guidance_scale)
        scheduler_spec(self.scheduler)
        check_seed(self.seed)
        for side in ("width", "height"):
            if getattr(self, side) is not None:
                check_side(side, getattr(self, side))
        check_choice("resize mode", self.resize_mode, RESIZE_MODES)
        check_schedule(self.timestep_spacing, self.guidance_rescale)
        steps_run(self.num_inference_steps, self.strength)  # at least one step

    def resolved(self) -> "Img2ImgRequest":
        """A copy with the seed drawn where -1."""
        return replace(self, seed=self.seed if self.seed >= 0 else secrets.randbelow(2**32),
                       num_inference_steps=int(self.num_inference_steps))


def output_size(image_size: tuple[int, int], model_size: tuple[int, int], width: int | None = None,
                height: int | None = None) -> tuple[int, int]:
    """(width, height) of a text-to-image model's img2img run: as given; a side not given follows the image's
    aspect from the other; neither given, the image's aspect at about the model's pixel count (``model_size``,
    its ``sample_size * vae_scale_factor`` squared). Sides are rounded to multiples of 8, from 8 to ``MAX_SIDE``."""
    image_w, image_h = image_size
    if width is None and height is None:
        scale = math.sqrt(model_size[0] * model_size[1] / (image_w * image_h))
        scale = min(scale, MAX_SIDE / image_w, MAX_SIDE / image_h)  # a long strip: its long side at most MAX_SIDE
        return _side(image_w * scale), _side(image_h * scale)
    return (int(width) if width is not None else _side(int(height) * image_w / image_h),
            int(height) if height is not None else _side(int(width) * image_h / image_w))


def _side(pixels: float) -> int:
    return min(max(8 * round(pixels / 8), 8), MAX_SIDE)


def size_from(request: Img2ImgRequest, model_size: tuple[int, int]) -> str:
    """Where a text-to-image run's size comes from, in words (the parameters shown say it)."""
    if request.width is not None and request.height is not None:
        return "width and height as given"
    if request.width is None and request.height is None:
        return (f"the image's {request.image.width}x{request.image.height} aspect at about the model's "
                f"{model_size[0]}x{model_size[1]} pixels")
    given = "width" if request.width is not None else "height"
    return f"the {given} given, the other side at the image's {request.image.width}x{request.image.height} aspect"


def sdedit_size(request: Img2ImgRequest, model_size: tuple[int, int]) -> tuple[int, int]:
    """(width, height) of an SDEdit run: the unconditional model's fixed ``model_size`` (its UNet's
    ``sample_size``); a width or height given that differs is refused."""
    width, height = model_size
    if request.width not in (None, width) or request.height not in (None, height):
        given = ", ".join(f"{side} {getattr(request, side)}" for side in ("width", "height")
                          if getattr(request, side) is not None)
        raise InputError(f"SDEdit runs an unconditional model at its fixed size, {width}x{height} here; width and "
                         f"height are for text-to-image models: leave them out; got {given}",
                         field="width" if request.width not in (None, width) else "height")
    return width, height


FIXED_SIZE = "the unconditional model's fixed size (SDEdit takes no other)"


def steps_run(num_inference_steps: int, strength: float) -> int:
    """How many of ``num_inference_steps`` a run of ``strength`` makes (diffusers' ``get_timesteps``, counted on a
    stand-in schedule of that many steps); an :class:`InputError` where that is none."""
    schedule = SimpleNamespace(timesteps=torch.arange(num_inference_steps), order=1)
    run = get_timesteps(schedule, num_inference_steps, strength)[1]
    if run < 1:
        raise InputError(f"strength {strength:g} of {num_inference_steps} steps runs no step "
                         f"(int({num_inference_steps} x {strength:g}) = 0); raise the strength to at least "
                         f"{1 / num_inference_steps:.3g} or the steps", field="strength")
    return run


def start_timesteps(scheduler: SchedulerMixin, num_inference_steps: int, strength: float) -> torch.Tensor:
    """The timesteps a run of ``strength`` visits, the first being where the image is noised to, with the
    scheduler told to begin there (diffusers' ``StableDiffusionImg2ImgPipeline.get_timesteps``); an
    :class:`InputError` where it runs none."""
    steps_run(num_inference_steps, strength)
    return get_timesteps(scheduler, num_inference_steps, strength)[0]


def start_timestep(scheduler_name: str, scheduler_config, num_inference_steps: int, strength: float,
                   timestep_spacing: str = "") -> tuple[int, int]:
    """(the timestep a run of ``strength`` noises to, the steps it runs), from a model's scheduler config alone
    (``timestep_spacing``: "" = the config's own)."""
    scheduler = make_scheduler(scheduler_name, scheduler_config, **spacing_overrides(timestep_spacing))
    scheduler.set_timesteps(int(num_inference_steps))
    timesteps = start_timesteps(scheduler, int(num_inference_steps), strength)
    return int(round(float(timesteps[0]))), steps_run(int(num_inference_steps), strength)


def iter_img2img(
    request: Img2ImgRequest,
    *,
    pipe: StableDiffusionPipeline,
    cancel: CancelToken | None = None,
    attention: bool = False,
) -> Iterator[Started | Step | Done]:
    """Noise the image to its strength's t, then denoise with the prompt, as ``StableDiffusionImg2ImgPipeline``:
    Text to image's loop (engine.sampling.denoise), started there. ``attention``: as for Text to image."""
    request = request.resolved()  # the seed drawn
    check_int("steps", request.num_inference_steps, 1, MAX_TXT2IMG_STEPS)
    side = pipe.unet.config.sample_size * pipe.vae_scale_factor
    width, height = output_size(request.image.size, (side, side), request.width, request.height)
    image = resize_image(request.image, width, height, request.resize_mode)  # brought to the run's size

    def start(scheduler: SchedulerMixin, generator: torch.Generator, dtype: torch.dtype) -> Start:
        """The strength's timesteps, from the image's latent (drawn from the VAE's distribution) noised to the first
        (Ho et al. 2020, eq. 4, through ``scheduler.add_noise``)."""
        timesteps = start_timesteps(scheduler, request.num_inference_steps, request.strength)
        pixels = pipe.image_processor.preprocess(image).to(device=pipe.device, dtype=dtype)  # (1, 3, H, W)
        latents = pipe.vae.encode(pixels).latent_dist.sample(generator) * pipe.vae.config.scaling_factor
        noise = randn_tensor(latents.shape, generator=generator, device=pipe.device, dtype=dtype)  # (1, 4, h, w)
        return Start(timesteps, scheduler.add_noise(latents, noise, timesteps[:1]), generator, tensor_sha256(noise))

    def describe(scheduler: SchedulerMixin, visited: tuple) -> tuple[dict, str]:
        return (_info(request, scheduler, width, height, visited, size_from(request, (side, side))),
                img2img_code(pipe, request, width, height))

    run = yield from iter_denoise(request, pipe, start, describe, preview=AUTO_PREVIEW, attention=attention,
                                  cancel=cancel)
    yield Done(images=tuple(run.images), info=run.info, steps=tuple(run.steps), code=run.code, request=request,
               noise_sha256=run.start.noise_sha256)  # recorded and saved by the caller (engine.records.runs)


def iter_sdedit(
    request: Img2ImgRequest,
    *,
    pipe: DDPMPipeline,
    cancel: CancelToken | None = None,
) -> Iterator[Started | Step | Done]:
    """Noise the image to its strength's t, then run the /ddpm loop from there (SDEdit on an unconditional model)."""
    # 1. Resolve the seed, check the scheduler, steps and size against the model, bring the image to its size and
    #    channels.
    request = request.resolved()
    scheduler_spec(request.scheduler, UNCONDITIONAL_SCHEDULERS)
    height, width = sample_shape(pipe.unet.config, 1)[-2:]
    sdedit_size(request, (width, height))
    train_steps = pipe.scheduler.config.num_train_timesteps
    check_int(f"steps for this model (trained with {train_steps} timesteps)", request.num_inference_steps, 1,
              train_steps)
    scheduler = make_scheduler(request.scheduler, pipe.scheduler.config, **spacing_overrides(request.timestep_spacing))
    device, unet = pipe.device, pipe.unet
    generator = torch.Generator("cpu").manual_seed(request.seed)
    step_kwargs = extra_step_kwargs(scheduler, generator)
    picture = resize_image(request.image, width, height, request.resize_mode)
    x0 = pixel_tensor(picture, unet.config.in_channels).to(device=device, dtype=unet.dtype)  # (1, C, H, W) in [-1, 1]

    with torch.no_grad():
        # 2. The timesteps from the strength's start, read to the host once.
        try:
            scheduler.set_timesteps(request.num_inference_steps, device=device)
            timesteps = start_timesteps(scheduler, request.num_inference_steps, request.strength)
        except ValueError as exc:  # e.g. PNDM's warm-up needs at least 4 steps
            raise InputError(f"{request.scheduler} cannot run {request.num_inference_steps} steps on this model; "
                             f"try more steps or another scheduler ({exc})") from None
        visited = tuple(int(t) for t in timesteps.tolist())

        # 3. Forward: the image noised to the first timestep with diffusers' add_noise.
        noise = randn_tensor(x0.shape, generator=generator, device=device, dtype=unet.dtype)
        image = scheduler.add_noise(x0, noise, timesteps[:1])
        info = _info(request, scheduler, width, height, visited, FIXED_SIZE)
        info["state"] = run_state(pipe)  # what this run set (run_events): never compiled
        for taken_by_none in ("prompt", "negative_prompt", "guidance_scale", "guidance_rescale"):
            info.pop(taken_by_none)  # an unconditional model takes none
        code = sdedit_code(pipe, request, width, height)
        yield Started(total=len(visited), timesteps=visited, info=info, code=code)

        # 4. Back: the /ddpm loop from there.
        pixels = PixelPreviewer()
        steps: list[Step] = []
        start = time.perf_counter()
        for i, t in enumerate(timesteps):
            check(cancel, i)
            model_input = scheduler.scale_model_input(image, t)
            model_output = unet(model_input, t).sample  # (1, C, H, W)
            out = scheduler.step(model_output, t, image, **step_kwargs)
            x0_pred = getattr(out, "pred_original_sample", None)
            x0_preview = (Preview((model_output, model_input), X0Previewer(scheduler, visited[i], pixels))
                          if x0_pred is None else Preview(x0_pred, pixels))
            image = out.prev_sample
            step = Step(step=i + 1, total=len(visited), timestep=visited[i],
                        preview_xt=Preview(image, scaled(pixels, vp_scale(scheduler))), preview_x0=x0_preview,
                        elapsed=time.perf_counter() - start)
            steps.append(step)
            yield step
        check(cancel, len(visited))

        # 5. Post-process as DDPMPipeline does: [-1, 1] -> [0, 1] -> uint8 PIL.
        image = (image / 2 + 0.5).clamp(0, 1)
        images = pipe.numpy_to_pil(image.cpu().permute(0, 2, 3, 1).numpy())
    info["elapsed"] = round(time.perf_counter() - start, 3)
    yield Done(images=tuple(images), info=info, steps=tuple(steps), code=code, request=request,
               noise_sha256=tensor_sha256(noise))  # recorded and saved by the caller (engine.records.runs)


@dataclass(frozen=True, eq=False)
class StripFrame:
    """One strength of the strip: the result, where its run started, and how much of the original survives."""

    strength: float
    start_timestep: int
    image: Image.Image
    survives: float  # see similarity
    path: str = ""  # the saved PNG, "" where nothing was saved

    @property
    def caption(self) -> str:
        """Short, for a gallery's one-line captions: "0.6 · t 568 · 0.64" (strength, start, similarity)."""
        return f"{self.strength:g} · t {self.start_timestep} · {self.survives:.2f}"


def pixel_tensor(image: Image.Image, channels: int) -> torch.Tensor:
    """``image`` (greyscale for a one-channel model) as (1, C, H, W) in [-1, 1]."""
    array = np.asarray(image.convert("L" if channels == 1 else "RGB"), dtype=np.float32) / 127.5 - 1.0  # (H, W[, 3])
    array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(array))[None]


def similarity(original: Image.Image, result: Image.Image, resize_mode: str = "Just resize") -> float:
    """How much of ``original`` survives in ``result``: the correlation of their grey levels (1: the same
    picture, 0: nothing in common), the original resized to the result's size first as the run resized it."""
    a = np.asarray(resize_image(original, *result.size, resize_mode).convert("L"), dtype=np.float64).ravel()
    b = np.asarray(result.convert("L"), dtype=np.float64).ravel()
    if a.std() == 0 or b.std() == 0:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


def _info(request: Img2ImgRequest, scheduler: SchedulerMixin, width: int, height: int, visited, size: str) -> dict:
    info = {f.name: getattr(request, f.name) for f in fields(request) if f.name != "image"}
    info["steps"] = info.pop("num_inference_steps")
    info["scheduler_class"] = type(scheduler).__name__
    info["width"], info["height"], info["size_from"] = int(width), int(height), size
    info["start_timestep"] = int(round(visited[0]))
    info["steps_run"] = len(visited)
    return info


def resize_code(mode: str, width: int, height: int, convert: str = "") -> str:
    """The snippet's lines that open 'original.png' and bring it to ``width`` x ``height`` as ``mode`` does: the
    mode's own function from :mod:`engine.images`, its source as the run used it."""
    function = RESIZE_MODES[mode]
    return (inspect.getsource(function) + "\n\n"
            f"image = {function.__name__}(Image.open('original.png').convert('RGB'), {width}, {height}){convert}"
            f"  # {mode}\n")


def img2img_code(pipe: StableDiffusionPipeline, request: Img2ImgRequest, width: int, height: int) -> str:
    """A plain-diffusers snippet that reproduces ``request``'s image: ``StableDiffusionImg2ImgPipeline``."""
    ref = getattr(pipe, "workbench_ref", None)
    location = ref.location if ref is not None else "<model folder>"
    dtype = ", dtype=torch.float16" if pipe.unet.dtype == torch.float16 else ""
    cls_name, build = scheduler_code(request.scheduler, **spacing_overrides(request.timestep_spacing))
    return (
        "import torch\n"
        "from PIL import Image\n"
        f"from diffusers import StableDiffusionImg2ImgPipeline, {cls_name}\n\n"
        f"pipe = StableDiffusionImg2ImgPipeline.from_pretrained({location!r}{dtype},\n"
        f"    safety_checker=None, requires_safety_checker=False).to({pipe.device.type!r})\n"
        f"pipe.scheduler = {build}\n"
        + rescale_hook_code(request.guidance_rescale, request.guidance_scale) + "\n"
        + resize_code(request.resize_mode, width, height) +
        "image = pipe(\n"
        f"    {request.prompt!r},\n"
        "    image=image,\n"
        f"    strength={request.strength!r},\n"
        f"    negative_prompt={request.negative_prompt!r},\n"
        f"    num_inference_steps={request.num_inference_steps},\n"
        f"    guidance_scale={request.guidance_scale!r},\n"
        f"    generator=torch.Generator('cpu').manual_seed({request.seed}),\n"
        ").images[0]\n"
        "image.save('image.png')\n"
    )


def rescale_hook_code(guidance_rescale: float, guidance_scale: float) -> str:
    """The snippet's lines for ``guidance_rescale`` > 0 under guidance (else none): ``StableDiffusionImg2ImgPipeline``
    takes no ``guidance_rescale`` (diffusers 0.42), so a forward hook on the UNet applies diffusers' own
    ``rescale_noise_cfg`` where ``StableDiffusionPipeline`` applies it, after the guidance."""
    if not guidance_rescale or guidance_scale <= 1:
        return ""
    phi, w = float(guidance_rescale), float(guidance_scale)
    return (
        "\nfrom diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg\n\n\n"
        "def rescale_guidance(unet, args, kwargs, output):\n"
        f"    \"\"\"guidance_rescale={phi!r}: the img2img pipeline takes none; applied to its guided noise as "
        "StableDiffusionPipeline does.\"\"\"\n"
        "    uncond, text = output[0].chunk(2)\n"
        f"    guided = rescale_noise_cfg(uncond + {w!r} * (text - uncond), text, guidance_rescale={phi!r})\n"
        f"    return (torch.cat([uncond, uncond + (guided - uncond) / {w!r}]),)  # the pipeline's guidance gives "
        "guided\n\n\n"
        "pipe.unet.register_forward_hook(rescale_guidance, with_kwargs=True)\n"
    )


def sdedit_code(pipe: DDPMPipeline, request: Img2ImgRequest, width: int, height: int) -> str:
    """A plain-diffusers snippet that reproduces ``request``'s image: the /ddpm loop started from
    ``scheduler.add_noise`` at the strength's first timestep."""
    location, build, generator_arg, imports = loop_code_parts(pipe, request.scheduler, request.timestep_spacing)
    dtype = ", dtype=torch.float16" if pipe.unet.dtype == torch.float16 else ""
    mode = "L" if pipe.unet.config.in_channels == 1 else "RGB"
    to_chw = "x0[None]" if mode == "L" else "x0.permute(2, 0, 1)"
    steps = request.num_inference_steps
    return (
        "import numpy as np\n"
        "import torch\n"
        "from PIL import Image\n"
        f"from diffusers import {', '.join(imports)}\n"
        "from diffusers.utils.torch_utils import randn_tensor\n\n"
        f"path = {location!r}\n"
        f"unet = UNet2DModel.from_pretrained(path, subfolder='unet'{dtype}).to({pipe.device.type!r})\n"
        "config = DDPMScheduler.load_config(path, subfolder='scheduler')\n"
        f"scheduler = {build}\n"
        f"generator = torch.Generator('cpu').manual_seed({request.seed})\n\n"
        + resize_code(request.resize_mode, width, height, f".convert({mode!r})") +
        "x0 = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1)\n"
        f"x0 = {to_chw}[None].to(unet.device, unet.dtype)  # (1, C, H, W) in [-1, 1]\n"
        f"scheduler.set_timesteps({steps}, device=unet.device)\n"
        f"t_start = {steps} - int({steps} * {request.strength!r})  # strength {request.strength!r}: the last "
        f"{steps_run(steps, request.strength)} steps\n"
        "timesteps = scheduler.timesteps[t_start * scheduler.order:]\n"
        "if hasattr(scheduler, 'set_begin_index'):\n"
        "    scheduler.set_begin_index(t_start * scheduler.order)\n"
        "noise = randn_tensor(x0.shape, generator=generator, device=unet.device, dtype=unet.dtype)\n"
        "image = scheduler.add_noise(x0, noise, timesteps[:1])  # forward: x_t at the first timestep\n"
        "with torch.no_grad():\n"
        "    for t in timesteps:  # back: from t to 0\n"
        "        model_input = scheduler.scale_model_input(image, t)\n"
        "        noise_pred = unet(model_input, t).sample\n"
        f"        image = scheduler.step(noise_pred, t, image{generator_arg}).prev_sample\n"
        "image = (image / 2 + 0.5).clamp(0, 1)\n"
        "image = (image.permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype('uint8')\n"
    )
