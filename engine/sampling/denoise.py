"""One denoising loop for Stable Diffusion runs: Text to image and img2img differ only in where they start.

:func:`iter_denoise` is the loop body of diffusers' Stable Diffusion pipelines, streamed: the prompt encoded
(``pipe.encode_prompt``), the run's :class:`Start` (the timesteps it visits and the latents it begins from, made by
the caller), then for each timestep ``scale_model_input``, the model, ``scheduler.step``, previews, views and cancel,
then the VAE decode. The loop calls ``model(x, t)`` and knows nothing of prompts: classifier-free guidance is the
model wrapper :class:`CFGDenoiser` (as k-diffusion's ``external.CFGDenoiser``). What diffusers computes, the loops
take from diffusers: the scheduler's extra step arguments (:func:`extra_step_kwargs`) and img2img's start
(:func:`get_timesteps`).
"""

from __future__ import annotations

import contextlib
import time
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Generator, NamedTuple

import torch
from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionPipeline
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg

from engine.cancel import CancelToken, check
from engine.events import Preview, Started, Step
from engine.sampling import fast
from engine.sampling.attention import CrossAttentionCollector, collecting, token_count
from engine.sampling.preview import LatentRGBPreviewer, VaePreviewer, X0Previewer, scaled, vp_scale
from engine.sampling.schedulers import make_scheduler, spacing_overrides
from engine.sampling.views import step_views

# "auto" measures a decode's cost in floating-point operations (counted by torch on a 4x4 latent and scaled
# to the run's size: a count, unlike a stopwatch, does not change when the machine is busy). On a CPU it
# decodes with the VAE up to this many per frame (a few ms: at most 10 frames a second, in another thread);
VAE_PREVIEW_CPU_FLOPS = 0.5e9
# on a GPU, where a decode shares the device with the loop, up to this share of a denoising step's work.
VAE_PREVIEW_SHARE = 0.2


class _Holding:
    """What diffusers' pipeline methods below read of their pipeline: its scheduler, and nothing else."""

    def __init__(self, scheduler):
        self.scheduler = scheduler


def extra_step_kwargs(scheduler, generator: torch.Generator | None, eta: float = 0.0) -> dict:
    """The extra arguments ``scheduler.step`` takes (``scheduler``: a scheduler or its class): diffusers' own
    ``prepare_extra_step_kwargs`` (``eta`` where step takes one, as DDIM's; ``generator`` where it draws noise)."""
    return StableDiffusionPipeline.prepare_extra_step_kwargs(_Holding(scheduler), generator, eta)


def get_timesteps(scheduler, num_inference_steps: int, strength: float, device=None) -> tuple[torch.Tensor, int]:
    """(the timesteps a run of ``strength`` visits, how many steps that is), ``scheduler`` (its timesteps set) told
    where to begin: diffusers' own ``StableDiffusionImg2ImgPipeline.get_timesteps``."""
    return StableDiffusionImg2ImgPipeline.get_timesteps(_Holding(scheduler), num_inference_steps, strength, device)


def encode_prompt(pipe, prompt: str, negative_prompt: str, do_cfg: bool) -> torch.Tensor:
    """Text embeddings (B, seq, dim): [uncond, text] when guiding, else [text], as ``pipe.encode_prompt`` makes them
    (textual inversion and clip skip come with it). ``lora_scale`` stays None: a LoRA's scale is its adapter weight
    here (engine.models.loras.activate), already on every LoRA layer, the text encoder's too."""
    text, uncond = pipe.encode_prompt(prompt, pipe.device, 1, do_cfg, negative_prompt)
    return torch.cat([uncond, text]) if do_cfg else text


class Prediction(NamedTuple):
    output: torch.Tensor  # the guided prediction passed to scheduler.step
    branches: tuple[torch.Tensor, torch.Tensor] | None  # (uncond, text) of the guidance; None without


class CFGDenoiser:
    """The model a loop calls, ``model(x, t)``, classifier-free guidance inside (Ho & Salimans 2022, eq. 6; and
    Lin et al. 2023, eq. 15-16, diffusers' ``rescale_noise_cfg``, for ``guidance_rescale`` > 0): ``x`` (the
    scheduler-scaled input) goes through ``unet(sample, t, embeds)`` twice in one batch, [uncond, text]."""

    def __init__(self, unet: Callable, embeds: torch.Tensor, guidance_scale: float, guidance_rescale: float = 0.0,
                 guided: bool = True):
        self.unet, self.embeds, self.guided = unet, embeds, guided
        self.guidance_scale, self.guidance_rescale = guidance_scale, guidance_rescale

    def batch(self, x: torch.Tensor) -> torch.Tensor:
        """The input the UNet is given for ``x``."""
        return torch.cat([x] * 2) if self.guided else x

    def __call__(self, x: torch.Tensor, t) -> Prediction:
        output = self.unet(self.batch(x), t, self.embeds)
        if not self.guided:
            return Prediction(output, None)
        uncond, text = output.chunk(2)
        guided = uncond + self.guidance_scale * (text - uncond)
        if self.guidance_rescale > 0:  # back toward the text branch's std
            guided = rescale_noise_cfg(guided, text, guidance_rescale=self.guidance_rescale)
        return Prediction(guided, (uncond, text))


@dataclass(frozen=True)
class Start:
    """Where a run starts."""

    timesteps: torch.Tensor  # the timesteps it visits, the scheduler told where to begin
    latents: torch.Tensor  # x at the first of them, scaled for the scheduler: (1, C, h, w)
    generator: torch.Generator  # what scheduler.step and the VAE decode draw from after the start's own draws
    noise_sha256: str = ""  # the initial noise's hash, for a run's record ("" where none is kept)


@dataclass(frozen=True)
class Finished:
    """What the loop leaves for its caller's ``Done``."""

    images: tuple
    steps: tuple
    info: dict
    code: str
    start: Start


def iter_denoise(request, pipe, start: Callable[[Any, torch.Generator, torch.dtype], Start],
                 describe: Callable[[Any, tuple], tuple[dict, str]], *, preview, compile: bool = False,
                 attention: bool = False, cancel: CancelToken | None = None
                 ) -> Generator[Started | Step, None, Finished]:
    """Yield ``Started`` and one ``Step`` per timestep of a Stable Diffusion run; return what ``Done`` carries.

    ``request``: its ``prompt``, ``negative_prompt``, ``guidance_scale``, ``guidance_rescale``, ``scheduler``,
    ``timestep_spacing``, ``seed`` and ``num_inference_steps`` are read. ``start(scheduler, generator, dtype)`` (the
    scheduler's timesteps set) makes the run's :class:`Start`; ``describe(scheduler, visited)`` its (info, code).
    ``preview``: its ``vae_preview_every`` and ``preview`` choose the x0 preview (:func:`vae_preview_every`).
    ``attention``: each step also carries the prompt tokens' cross-attention maps (view "attention"); the UNet then
    runs eager (no CUDA graph or compiled model), its cross-attention layers wrapped for the run."""
    # 1. A fresh scheduler from the model's config, the run's hooks (the GPU path's; plain on a CPU), the generator.
    scheduler = make_scheduler(request.scheduler, pipe.scheduler.config, **spacing_overrides(request.timestep_spacing))
    speed = fast.speed_for(pipe, compile=compile, eager=attention)
    unet, vae = pipe.unet, pipe.vae
    generator = torch.Generator("cpu").manual_seed(request.seed)
    guided = request.guidance_scale > 1 and unet.config.time_cond_proj_dim is None

    with torch.no_grad(), contextlib.ExitStack() as hooks:
        # 2. The prompt and the negative prompt; 3. the timesteps and the start, where the runs differ.
        embeds = encode_prompt(pipe, request.prompt, request.negative_prompt, guided)  # (B, seq, dim)
        scheduler.set_timesteps(request.num_inference_steps, device=speed.scheduler_device)
        begun = start(scheduler, generator, embeds.dtype)
        timesteps, latents, generator = begun.timesteps, begun.latents, begun.generator
        unet_timesteps = speed.unet_timesteps(timesteps)  # the same values on the UNet's device
        visited = tuple(timesteps.tolist())  # read to the host once: no per-step device sync for t
        step_kwargs = extra_step_kwargs(scheduler, generator)
        info, code = describe(scheduler, visited)
        info["state"] = fast.run_state(pipe, compile=compile)  # what this run set (run_events)
        plain = CFGDenoiser(lambda x, t, e: unet(x, t, encoder_hidden_states=e, return_dict=False)[0], embeds,
                            request.guidance_scale, guided=guided)  # the UNet as the model has it

        def evaluate() -> None:  # one UNet evaluation as the loop makes it: counted only where it decides
            plain(scheduler.scale_model_input(latents, timesteps[0]), timesteps[0])

        every, info["preview"] = vae_preview_every(preview, vae, latents, evaluate)
        denoise = speed.denoiser(plain.batch(latents), unet_timesteps[0], embeds)
        model = CFGDenoiser(denoise, embeds, request.guidance_scale, request.guidance_rescale, guided)
        yield Started(total=len(visited), timesteps=tuple(int(t) for t in visited), code=code,
                      info={**info, "compiling": denoise.pending} if denoise.pending else info)
        info.update(denoise.build())  # compiled or captured now, so that the steps' times are the steps'

        # 4. The denoising loop, x0 previewed by a VAE decode every ``every`` steps (0: never).
        previewer = LatentRGBPreviewer.for_model(model_dir(pipe), unet.config.in_channels)
        vae_previewer = VaePreviewer(vae) if every else None
        collector = CrossAttentionCollector(latents.shape[-2:], token_count(pipe.tokenizer, request.prompt),
                                            guided=guided) if attention else None
        hooks.enter_context(collecting(unet, collector))  # the model's own processors back when the block ends
        steps: list[Step] = []
        began = time.perf_counter()
        for i, t in enumerate(timesteps):
            check(cancel, i)
            sample = scheduler.scale_model_input(latents, t)
            prediction = model(sample, unet_timesteps[i])
            out = scheduler.step(prediction.output, t, latents, **step_kwargs)
            speed.step_done()
            x0_previewer = vae_previewer if vae_previewer and (i + 1) % every == 0 else previewer
            x0 = getattr(out, "pred_original_sample", None)
            if x0 is None:  # drawn from (eps, x_t) only if a consumer looks at this step
                x0, x0_previewer = (prediction.output, latents), X0Previewer(scheduler, visited[i], x0_previewer)
            latents = out.prev_sample
            step = Step(
                step=i + 1, total=len(visited), timestep=float(visited[i]),
                preview_xt=Preview(latents, speed.previewer(scaled(previewer, vp_scale(scheduler)))),
                preview_x0=Preview(x0, speed.previewer(x0_previewer)),
                elapsed=time.perf_counter() - began,
                views=step_views(scheduler, visited[i], previewer, latents, prediction.output, prediction.branches,
                                 collector.end_step() if collector is not None else None, sample=sample),
            )
            steps.append(step)
            yield step
        check(cancel, len(visited))

        # 5. Decode with the VAE's scaling factor and post-process as the pipelines do.
        image = vae.decode(latents / vae.config.scaling_factor, return_dict=False, generator=generator)[0]
        images = pipe.image_processor.postprocess(image, output_type="pil", do_denormalize=[True])
    info["elapsed"] = round(time.perf_counter() - began, 3)
    info["steps_per_second"] = speed.steps_per_second()
    return Finished(images=tuple(images), steps=tuple(steps), info=info, code=code, start=begun)


_decode_flops: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # VAE -> {what: floating-point operations}


def vae_preview_every(request, vae, latents: torch.Tensor, step: Callable[[], None]) -> tuple[int, str]:
    """(steps between VAE-decoded x0 previews, 0 = none; what the page is shown, in words), as ``request``'s
    ``vae_preview_every`` and ``preview`` ("auto", "latent", "vae") say."""
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


def model_dir(pipe) -> str | None:
    """The folder of ``pipe``'s model where it has one (its latent-to-RGB factors may lie there)."""
    ref = getattr(pipe, "workbench_ref", None)
    return ref.location if ref is not None and ref.source in ("builtin", "folder") else None
