"""Text to image: the explicit denoising loop of the diffusers docs, streamed step by step.

The loop is the one a learner writes (tokenize, encode, ``init_noise_sigma``,
``scale_model_input``, UNet on the [uncond, text] batch, classifier-free guidance,
``scheduler.step``, VAE decode) and gives the same image as diffusers'
``StableDiffusionPipeline`` for the same components, settings and seed.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
import secrets
import time
import weakref
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Callable, Iterator

import torch
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg
from diffusers.utils.torch_utils import randn_tensor

from engine.cancel import CancelToken, check
from engine.errors import InputError
from engine.events import Done, Preview, Started, Step
from engine.sampling import fast
from engine.sampling.attention import CrossAttentionCollector, collecting, token_count
from engine.sampling.blend import blended_noise, check_blend
from engine.sampling.preview import LatentRGBPreviewer, VaePreviewer, X0Previewer, scaled, vp_scale
from engine.sampling.hashes import tensor_sha256
from engine.sampling.schedulers import (check_spacing, make_scheduler, scheduler_code, scheduler_spec,
                                        spacing_overrides)
from engine.models.loras import MAX_LORA_SCALE, check_active, check_lora_name
from engine.sampling.views import step_views
from engine.validation import check_bool, check_choice, check_float, check_int, check_seed, check_side, given

if TYPE_CHECKING:
    from diffusers import SchedulerMixin, StableDiffusionPipeline

MAX_STEPS = 150
PREVIEWS = ("auto", "latent", "vae")
MAX_PROMPT_CHARS = 10_000
# "auto" measures a decode's cost in floating-point operations (counted by torch on a 4x4 latent and scaled
# to the run's size: a count, unlike a stopwatch, does not change when the machine is busy). On a CPU it
# decodes with the VAE up to this many per frame (a few ms: at most 10 frames a second, in another thread);
VAE_PREVIEW_CPU_FLOPS = 0.5e9
# on a GPU, where a decode shares the device with the loop, up to this share of a denoising step's work.
VAE_PREVIEW_SHARE = 0.2
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
        if not isinstance(self.prompt, str) or not isinstance(self.negative_prompt, str):
            raise InputError("prompt and negative prompt must be text", field="prompt")
        for field_name, text in (("prompt", self.prompt), ("negative prompt", self.negative_prompt)):
            if len(text) > MAX_PROMPT_CHARS:  # the tokenizer keeps 77 tokens anyway; a huge text only costs time
                raise InputError(f"{field_name} must be at most {MAX_PROMPT_CHARS} characters; got {len(text)}",
                                 field=field_name)
        check_int("steps", self.num_inference_steps, 1, MAX_STEPS)
        g = self.guidance_scale
        if not isinstance(g, (int, float)) or isinstance(g, bool) or not math.isfinite(g) or not 1 <= g <= MAX_GUIDANCE:
            raise InputError(f"guidance scale must be a number from 1 (no guidance) to {MAX_GUIDANCE:g}; "
                             f"got {given(g)}", field="guidance scale")
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
        check_spacing(self.timestep_spacing, allow_own=True)
        check_float("guidance rescale", self.guidance_rescale, 0.0, 1.0)
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


def encode_prompt(pipe: StableDiffusionPipeline, prompt: str, negative_prompt: str, do_cfg: bool) -> torch.Tensor:
    """Text embeddings (B, seq, dim): [uncond, text] when guiding, else [text]."""

    def encode(text: str) -> torch.Tensor:
        tokens = pipe.tokenizer(
            [text], padding="max_length", max_length=pipe.tokenizer.model_max_length,
            truncation=True, return_tensors="pt",
        )
        mask = None
        if getattr(pipe.text_encoder.config, "use_attention_mask", False):
            mask = tokens.attention_mask.to(pipe.device)
        embeds = pipe.text_encoder(tokens.input_ids.to(pipe.device), attention_mask=mask)[0]
        return embeds.to(dtype=pipe.text_encoder.dtype, device=pipe.device)

    text = encode(prompt)
    if not do_cfg:
        return text
    return torch.cat([encode(negative_prompt), text])


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
    # 1. Resolve the seed and size, build a fresh scheduler from the model's config.
    request = request.resolved(pipe)
    check_active(pipe, request.lora, request.lora_scale)  # switched on where the pipeline was loaded
    scheduler = make_scheduler(request.scheduler, pipe.scheduler.config, **spacing_overrides(request.timestep_spacing))
    speed = fast.speed_for(pipe, compile=request.compile, eager=attention)  # the GPU path's hooks; plain on a CPU
    device, unet, vae = pipe.device, pipe.unet, pipe.vae
    generator = torch.Generator("cpu").manual_seed(request.seed)
    do_cfg = request.guidance_scale > 1 and unet.config.time_cond_proj_dim is None

    with torch.no_grad(), contextlib.ExitStack() as hooks:
        # 2. Encode the prompt and the negative prompt.
        embeds = encode_prompt(pipe, request.prompt, request.negative_prompt, do_cfg)  # (B, seq, dim)

        # 3. Timesteps and the initial noise, scaled by the scheduler's init_noise_sigma.
        scheduler.set_timesteps(request.num_inference_steps, device=speed.scheduler_device)
        timesteps = scheduler.timesteps
        unet_timesteps = speed.unet_timesteps(timesteps)  # the same values on the UNet's device
        visited = tuple(timesteps.tolist())  # read to the host once: no per-step device sync for t
        shape = (1, unet.config.in_channels, request.height // pipe.vae_scale_factor,
                 request.width // pipe.vae_scale_factor)
        latents = randn_tensor(shape, generator=generator, device=device, dtype=embeds.dtype)  # (1, 4, h, w)
        if request.seed_blend:  # the pipeline given latents=: the steps' generator starts fresh from the seed
            latents, generator = blended_noise(request.seed_blend, latents, request.seed_b), \
                torch.Generator("cpu").manual_seed(request.seed)
        noise_sha256 = tensor_sha256(latents)  # for the run's record: a replay checks it draws the same noise
        latents = latents * scheduler.init_noise_sigma
        step_kwargs = {"generator": generator} if "generator" in inspect.signature(scheduler.step).parameters else {}
        info = _info(request, scheduler)
        info["state"] = fast.run_state(pipe, compile=request.compile)  # what this run set (run_events)

        def step() -> None:  # one UNet evaluation as the loop makes it: counted only where it decides
            model_input = scheduler.scale_model_input(torch.cat([latents] * 2) if do_cfg else latents, timesteps[0])
            unet(model_input, timesteps[0], encoder_hidden_states=embeds)

        every, info["preview"] = _vae_preview_every(request, vae, latents, step)
        code = diffusers_code(pipe, request)
        denoise = speed.denoiser(torch.cat([latents] * 2) if do_cfg else latents, unet_timesteps[0], embeds)
        yield Started(total=len(visited), timesteps=tuple(int(t) for t in visited), code=code,
                      info={**info, "compiling": denoise.pending} if denoise.pending else info)
        info.update(denoise.build())  # compiled or captured now, so that the steps' times are the steps'

        # 4. The denoising loop, x0 previewed by a VAE decode every ``every`` steps (0: never).
        previewer = LatentRGBPreviewer.for_model(_model_dir(pipe), unet.config.in_channels)
        vae_previewer = VaePreviewer(vae) if every else None
        steps: list[Step] = []
        collector = CrossAttentionCollector(shape[-2:], token_count(pipe.tokenizer, request.prompt),
                                            guided=do_cfg) if attention else None
        hooks.enter_context(collecting(unet, collector))  # the model's own processors back when the block ends
        start = time.perf_counter()
        for i, t in enumerate(timesteps):
            check(cancel, i)
            model_input = torch.cat([latents] * 2) if do_cfg else latents
            model_input = scheduler.scale_model_input(model_input, t)
            noise_pred = denoise(model_input, unet_timesteps[i], embeds)
            if do_cfg:  # classifier-free guidance (Ho & Salimans 2022, eq. 6)
                noise_uncond, noise_text = noise_pred.chunk(2)
                noise_pred = noise_uncond + request.guidance_scale * (noise_text - noise_uncond)
                if request.guidance_rescale > 0:  # Lin et al. 2023, eq. 15-16: back to the text branch's std
                    noise_pred = rescale_noise_cfg(noise_pred, noise_text, guidance_rescale=request.guidance_rescale)
            out = scheduler.step(noise_pred, t, latents, **step_kwargs)
            speed.step_done()
            x0_previewer = vae_previewer if vae_previewer and (i + 1) % every == 0 else previewer
            x0 = getattr(out, "pred_original_sample", None)
            if x0 is None:  # drawn from (eps, x_t) only if a consumer looks at this step
                x0, x0_previewer = (noise_pred, latents), X0Previewer(scheduler, visited[i], x0_previewer)
            latents = out.prev_sample
            step = Step(
                step=i + 1, total=len(visited), timestep=float(visited[i]),
                preview_xt=Preview(latents, speed.previewer(scaled(previewer, vp_scale(scheduler)))),
                preview_x0=Preview(x0, speed.previewer(x0_previewer)),
                elapsed=time.perf_counter() - start,
                views=step_views(scheduler, visited[i], previewer, latents, noise_pred,
                                 (noise_uncond, noise_text) if do_cfg else None,
                                 collector.end_step() if collector is not None else None,
                                 sample=model_input.chunk(2)[0] if do_cfg else model_input),
            )
            steps.append(step)
            yield step
        check(cancel, len(visited))

        # 5. Decode with the VAE's scaling factor and post-process as the pipeline does.
        image = vae.decode(latents / vae.config.scaling_factor, return_dict=False, generator=generator)[0]
        images = pipe.image_processor.postprocess(image, output_type="pil", do_denormalize=[True])
    info["elapsed"] = round(time.perf_counter() - start, 3)
    info["steps_per_second"] = speed.steps_per_second()
    yield Done(images=tuple(images), info=info, steps=tuple(steps), code=code, request=request,
               noise_sha256=noise_sha256)  # recorded and saved by the caller (engine.records.runs)


_decode_flops: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # VAE -> {what: floating-point operations}


def _vae_preview_every(request: Txt2ImgRequest, vae, latents: torch.Tensor,
                       step: Callable[[], None]) -> tuple[int, str]:
    """(steps between VAE-decoded x0 previews, 0 = none; what the page is shown, in words)."""
    if request.vae_preview_every:
        return request.vae_preview_every, f"VAE decode every {request.vae_preview_every} steps (asked for)"
    if request.preview == "vae":
        return 1, "VAE decode (asked for)"
    if request.preview == "latent":
        return 0, "linear latent-to-RGB (asked for)"
    small = torch.zeros((1, latents.shape[1], 4, 4), device=latents.device, dtype=latents.dtype)
    per_pixel = _counted_once(vae, "decode", lambda: _flops(lambda: vae.decode(small)) / 16)
    decode = per_pixel * latents.shape[-2] * latents.shape[-1]  # decoders grow with the area
    if latents.device.type == "cpu":
        if decode <= VAE_PREVIEW_CPU_FLOPS:
            return 1, f"VAE decode: {decode / 1e9:.2f} GFLOP a frame, cheap on this CPU"
        return 0, f"linear latent-to-RGB: a VAE decode is {decode / 1e9:.1f} GFLOP here; choose 'vae' to see it"
    share = decode / max(_counted_once(vae, ("step", tuple(latents.shape)), lambda: _flops(step)), 1)
    if share <= VAE_PREVIEW_SHARE:
        return 1, f"VAE decode: {share:.0%} of a step's work on this device"
    return 0, f"linear latent-to-RGB: a VAE decode is {share:.1f}x a step's work here; choose 'vae' to see it"


def _counted_once(vae, key, measure: Callable[[], float]) -> float:
    """``measure()``, once per VAE (so per model) and ``key``."""
    measured = _decode_flops.setdefault(vae, {})
    if key not in measured:
        measured[key] = measure()
    return measured[key]


def _flops(work: Callable[[], None]) -> int:
    """Floating-point operations ``work()`` does, counted by torch."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        work()
    return counter.get_total_flops()


def _info(request: Txt2ImgRequest, scheduler: SchedulerMixin) -> dict:
    info = asdict(request)
    info["steps"] = info.pop("num_inference_steps")
    info["scheduler_class"] = type(scheduler).__name__
    return info


def _model_dir(pipe: StableDiffusionPipeline) -> str | None:
    ref = getattr(pipe, "workbench_ref", None)
    return ref.location if ref is not None and ref.source in ("builtin", "folder") else None


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
