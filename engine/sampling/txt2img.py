"""Text to image: the explicit denoising loop of the diffusers docs, streamed step by step.

The loop is the one a learner writes (encode the prompt, ``init_noise_sigma``, ``scale_model_input``, UNet on the
[uncond, text] batch, classifier-free guidance, ``scheduler.step``, VAE decode), shared with img2img
(:mod:`engine.sampling.denoise`): a run here starts from pure noise at the first timestep. It gives the same image
as diffusers' ``StableDiffusionPipeline`` for the same components, settings and seed.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Iterator

import torch
from diffusers.utils.torch_utils import randn_tensor

from engine.cancel import CancelToken
from engine.errors import InputError
from engine.events import Done, Started, Step
from engine.models.loras import MAX_LORA_SCALE, check_active, check_lora_name
from engine.sampling.blend import blended_noise, check_blend
from engine.sampling.denoise import Start, encode_prompt, iter_denoise  # noqa: F401 (encode_prompt: the loop's)
from engine.sampling.hashes import tensor_sha256
from engine.sampling.schedulers import check_spacing, scheduler_code, scheduler_spec, spacing_overrides
from engine.validation import check_bool, check_choice, check_float, check_int, check_seed, check_side, given

if TYPE_CHECKING:
    from diffusers import SchedulerMixin, StableDiffusionPipeline

MAX_STEPS = 150
PREVIEWS = ("auto", "latent", "vae")
MAX_PROMPT_CHARS = 10_000
MAX_GUIDANCE = 20.0


@dataclass(frozen=True)
class Txt2ImgRequest:
    prompt: str
    negative_prompt: str = ""
    num_inference_steps: int = 25  # enough for multistep solvers; diffusers' docs use 25 with UniPC
    guidance_scale: float = 7.5  # SD 1.x's default; 1 turns classifier-free guidance off
    scheduler: str = "DPM++ 2M Karras"  # good images in 20-30 steps, A1111's default
    seed: int = -1  # -1 draws a random seed; the one used is reported back
    width: int | None = None  # None: the model's own size (unet sample_size * vae scale factor)
    height: int | None = None
    vae_preview_every: int = 0  # full VAE decode of x0 every N steps; 0: as ``preview`` says
    preview: str = "auto"  # x0 preview: "auto" (a VAE decode where one is cheap, else "latent"), "latent", "vae"
    model: str = ""  # the model string, for the image's metadata
    lora: str = ""  # a LoRA under <models-dir>/loras/ by name, switched on in the pipeline; "" = none
    lora_scale: float = 1.0  # the LoRA's weight: 0 = the base model alone, 1 = as trained, up to 2
    compile: bool = False  # torch.compile the UNet: faster steps after a first run that compiles (engine/sampling/fast.py)
    timestep_spacing: str = ""  # "" = the model's own; "trailing" starts at T - 1 (Lin et al. 2023, sec. 3.3)
    guidance_rescale: float = 0.0  # phi of Lin et al. 2023, sec. 3.4 (they use 0.7); 0 = plain guidance
    seed_b: int = -1  # a second seed whose noise ``seed_blend`` slerps toward (engine/sampling/blend.py); -1: none
    seed_blend: float = 0.0  # 0 = the seed's own noise, as every run without a second seed

    def __post_init__(self):
        check_prompts(self.prompt, self.negative_prompt)
        check_int("steps", self.num_inference_steps, 1, MAX_STEPS)
        check_guidance(self.guidance_scale)
        scheduler_spec(self.scheduler)
        check_seed(self.seed)
        for side in ("width", "height"):
            if getattr(self, side) is not None:
                check_side(side, getattr(self, side))
        check_int("VAE preview interval", self.vae_preview_every, 0, MAX_STEPS)
        check_choice("preview", self.preview, PREVIEWS)
        check_lora_name(self.lora)
        check_float("LoRA scale", self.lora_scale, 0.0, MAX_LORA_SCALE)
        check_bool("compile", self.compile)
        check_schedule(self.timestep_spacing, self.guidance_rescale)
        check_blend(self.seed_b, self.seed_blend)

    def resolved(self, pipe: StableDiffusionPipeline) -> "Txt2ImgRequest":
        """A copy with the seed drawn and the size taken from the model where not given."""
        default = pipe.unet.config.sample_size * pipe.vae_scale_factor
        return replace(
            self,
            seed=self.seed if self.seed >= 0 else secrets.randbelow(2**32),
            width=self.width or default,
            height=self.height or default,
        )


def check_prompts(prompt, negative_prompt) -> None:
    """A prompt and a negative prompt: text, each at most ``MAX_PROMPT_CHARS`` characters."""
    if not isinstance(prompt, str) or not isinstance(negative_prompt, str):
        raise InputError("prompt and negative prompt must be text", field="prompt")
    for field_name, text in (("prompt", prompt), ("negative prompt", negative_prompt)):
        if len(text) > MAX_PROMPT_CHARS:  # the tokenizer keeps 77 tokens anyway; a huge text only costs time
            raise InputError(f"{field_name} must be at most {MAX_PROMPT_CHARS} characters; got {len(text)}",
                             field=field_name)


def check_guidance(g) -> None:
    """A guidance scale: from 1 (no guidance) to ``MAX_GUIDANCE``."""
    if not isinstance(g, (int, float)) or isinstance(g, bool) or not math.isfinite(g) or not 1 <= g <= MAX_GUIDANCE:
        raise InputError(f"guidance scale must be a number from 1 (no guidance) to {MAX_GUIDANCE:g}; "
                         f"got {given(g)}", field="guidance scale")


def check_schedule(timestep_spacing, guidance_rescale) -> None:
    """A ``timestep_spacing`` ("" = the model's own) and a ``guidance_rescale`` phi from 0 to 1."""
    check_spacing(timestep_spacing, allow_own=True)
    check_float("guidance rescale", guidance_rescale, 0.0, 1.0)


def iter_txt2img(
    request: Txt2ImgRequest,
    *,
    pipe: StableDiffusionPipeline,
    cancel: CancelToken | None = None,
    attention: bool = False,
) -> Iterator[Started | Step | Done]:
    """Denoise step by step, yielding ``Started``, one ``Step`` per timestep, then ``Done``. ``attention``: each
    step also carries the prompt tokens' cross-attention maps (view "attention", engine.sampling.attention); the
    UNet then runs eager (no CUDA graph or compiled model), its cross-attention layers wrapped for the run."""
    request = request.resolved(pipe)  # the seed drawn, the size the model's where not given
    check_active(pipe, request.lora, request.lora_scale)  # switched on where the pipeline was loaded

    def start(scheduler: SchedulerMixin, generator: torch.Generator, dtype: torch.dtype) -> Start:
        """Every timestep, from the seed's noise (or its slerp toward ``seed_b``'s) scaled by init_noise_sigma."""
        shape = (1, pipe.unet.config.in_channels, request.height // pipe.vae_scale_factor,
                 request.width // pipe.vae_scale_factor)
        latents = randn_tensor(shape, generator=generator, device=pipe.device, dtype=dtype)  # (1, 4, h, w)
        if request.seed_blend:  # the pipeline given latents=: the steps' generator starts fresh from the seed
            latents, generator = blended_noise(request.seed_blend, latents, request.seed_b), \
                torch.Generator("cpu").manual_seed(request.seed)
        # the noise's hash is for the run's record: a replay checks it draws the same noise
        return Start(scheduler.timesteps, latents * scheduler.init_noise_sigma, generator, tensor_sha256(latents))

    run = yield from iter_denoise(request, pipe, start, lambda scheduler, _: (_info(request, scheduler),
                                                                             diffusers_code(pipe, request)),
                                  preview=request, compile=request.compile, attention=attention, cancel=cancel)
    images, info, code = run.images, run.info, run.code
    yield Done(images=tuple(images), info=info, steps=run.steps, code=code, request=request,
               noise_sha256=run.start.noise_sha256)  # recorded and saved by the caller (engine.records.runs)


def _info(request: Txt2ImgRequest, scheduler: SchedulerMixin) -> dict:
    info = asdict(request)
    info["steps"] = info.pop("num_inference_steps")
    info["scheduler_class"] = type(scheduler).__name__
    return info


def diffusers_code(pipe: StableDiffusionPipeline, request: Txt2ImgRequest) -> str:
    """A plain-diffusers snippet that reproduces ``request``'s image."""
    ref = getattr(pipe, "workbench_ref", None)
    location = ref.location if ref is not None else "<model folder>"
    dtype = f", dtype={pipe.unet.dtype}" if pipe.unet.dtype in (torch.float16, torch.bfloat16) else ""
    if ref is not None and ref.source == "single_file":
        load = (f"StableDiffusionPipeline.from_single_file({location!r}, config=<a diffusers SD folder>{dtype},\n"
                "    safety_checker=None, requires_safety_checker=False)")
    else:
        load = (f"StableDiffusionPipeline.from_pretrained({location!r}{dtype},\n"
                "    safety_checker=None, requires_safety_checker=False)")
    cls_name, build = scheduler_code(request.scheduler, **spacing_overrides(request.timestep_spacing))
    lora_path = getattr(pipe, "workbench_lora", ("", 1.0, None))[2] if request.lora else None
    lora = (f"pipe.load_lora_weights({str(lora_path.parent)!r}, weight_name={lora_path.name!r})\n"
            if lora_path is not None else "")
    return (
        "import torch\n"
        f"from diffusers import StableDiffusionPipeline, {cls_name}\n\n"
        f"pipe = {load}.to({pipe.device.type!r})\n"
        f"pipe.scheduler = {build}\n"
        + lora +
        "image = pipe(\n"
        f"    {request.prompt!r},\n"
        f"    negative_prompt={request.negative_prompt!r},\n"
        f"    num_inference_steps={request.num_inference_steps},\n"
        f"    guidance_scale={request.guidance_scale!r},\n"
        + (f"    guidance_rescale={float(request.guidance_rescale)!r},\n" if request.guidance_rescale else "") +
        f"    width={request.width}, height={request.height},\n"
        + (f"    cross_attention_kwargs={{'scale': {float(request.lora_scale)!r}}},\n" if lora else "") +
        f"    generator=torch.Generator('cpu').manual_seed({request.seed}),\n"
        ").images[0]\n"
        + "image.save('image.png')\n"
    )
