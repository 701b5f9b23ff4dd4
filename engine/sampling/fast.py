"""The GPU path of the two sampling loops: every choice that makes a step fast on a CUDA device, in one place.

The loops call a few hooks on a :class:`Speed` (``speed_for(pipe, compile=...)``). Off the GPU path (a CPU,
MPS) each hook is the plain step it stands for, so the CPU fp32 loop is the loop as written, and with
``compile`` only the UNet changes (torch.compile; inductor's C++ backend). On CUDA:

1. The models, once per pipeline (:func:`prepare`): fp16 as loaded (the registry's placement), bf16 instead
   where a UNet step in fp16 overflows; channels_last; PyTorch SDPA attention (``AttnProcessor2_0``) wherever a
   module still has the classic processor; fused QKV projections where diffusers offers them
   (``UNet2DConditionModel.fuse_qkv_projections``; ``UNet2DModel`` has none), used only inside our graphs and
   only without a LoRA (a LoRA's q, k and v layers are not in the fused ones): the model's own processors stay,
   for every other caller (img2img, Compare) and for a LoRA.
2. The UNet as a CUDA graph per input signature (model, shapes, dtypes, the LoRA switched on and its scale,
   which a graph bakes in): the loop is launch-bound (hundreds of kernels a step), a replay is one launch.
   With ``compile``, torch.compile (inductor, whole model, ``fullgraph=True``) first, its caches on disk
   (:func:`compile_cache_dir`), so a restart re-traces but does not re-compile. Built before the first step,
   its cost reported (``info["compile_seconds"]``, ``info["capture_seconds"]``).
   diffusers' regional compilation (``compile_repeated_blocks``) is not used: it compiles the blocks in place,
   so every caller of the model (the plain path too) would run them compiled, and a UNet's blocks differ in
   width and resolution, so few compiled blocks are shared.
3. Timesteps: the scheduler works on host timesteps (its index arithmetic reads no device value) and the
   UNet gets a device copy made once before the loop.
4. Previews (:class:`DevicePreviewer`): drawn only for the frames a consumer looks at (lazily, as everywhere),
   the latent-to-RGB (or pixel) math in torch on the device at latent size, uint8 copied without a sync
   (``non_blocking`` into pinned memory, then a CUDA event that the drawing thread waits for), the nearest
   enlargement and the image encode in the consumer's thread. The loop never waits for a preview.
5. Host waits inside the loop. Ours: one, the :class:`Pacer`: after each step the loop waits until the step
   ``AHEAD`` steps back has finished on the device, while the steps after it are queued. Without it, a loop whose
   UNet is one graph launch queues the whole run in milliseconds: every Step event would come long before its
   step is computed, the previews would lag to the end, and Stop could not stop what was queued. It never lets
   the device run dry (two steps are queued when it waits). The schedulers' own, with the host timesteps
   above, as their code reads (``bench/gpu.py`` counts them with ``torch.cuda.set_sync_debug_mode``): those that
   draw noise in ``step`` from the run's CPU generator copy it to the device each step, one sync (DDPM, Euler,
   Euler a, DPM++ 2M SDE; Euler draws even though its default ``s_churn=0`` never uses the draw); UniPC copies
   host sigmas to the device and checks ``torch.linalg.solve``'s result each step, several. DDIM, PNDM, LMS, Heun,
   DPM++ 2M and DPM++ 2M Karras read nothing from the device per step.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import logging
import math
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from engine.models.registry import REPO_ROOT
from engine.sampling.preview import LatentRGBPreviewer, PixelPreviewer, X0Previewer, upscale_nearest, x0_from

log = logging.getLogger(__name__)

FAST_DEVICES = ("cuda",)  # device types that take the GPU path (the tests add "cpu" to run its torch parts there)
MAX_GRAPHS = 2  # UNet graphs kept per model: each holds one forward's activations on the device
GRAPH_WARMUP = 2  # eager calls on a side stream before a capture (lazy inits, cuDNN's algorithm choice)
AHEAD = 2  # steps the loop may be ahead of the device (see Pacer)
RECOMPILE_LIMIT = 16  # shapes (sizes, batch, guidance on or off) one model may compile before dynamo runs it eager
PROJECT_CACHE = REPO_ROOT / ".cache" / "torch-compile"  # the default of compile_cache_dir()
# One capture and the previews drawn in other threads never overlap (an allocation in another thread during a
# capture can invalidate it): both hold this lock while they launch work.
DEVICE_LOCK = threading.Lock()


def compile_cache_dir() -> Path:
    """Where torch.compile keeps what it compiled: inductor's FX graph cache, AOTAutograd's cache and the
    Triton kernels (under ``triton/``). ``TORCHINDUCTOR_CACHE_DIR`` where set, else the project's
    ``.cache/torch-compile``. Set before the first compile, so every compile of this process uses it."""
    folder = Path(os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(PROJECT_CACHE)))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def speed_for(pipe, *, compile: bool = False) -> "Speed":
    """The hooks a run of ``pipe`` uses: the GPU path on CUDA, the plain loop elsewhere (compiled if asked)."""
    device = pipe.device
    fast = device.type in FAST_DEVICES
    if fast:
        prepare(pipe)
    return Speed(pipe.unet, device, fast=fast, compile=compile, lora=_lora_state(pipe))


def _lora_state(pipe) -> tuple:
    """The LoRA switched on in ``pipe`` (engine.models.loras.activate): (name, scale, its adapters); () for none."""
    name, scale, _ = getattr(pipe, "workbench_lora", ("", 1.0, None))
    if not name:
        return ()
    adapters = pipe.get_active_adapters() if hasattr(pipe, "get_active_adapters") else ()
    return name, float(scale), tuple(adapters)


class Speed:
    """The loop's hooks for one run (see the module docstring for what each does on the GPU path)."""

    def __init__(self, unet, device: torch.device, *, fast: bool, compile: bool, lora: tuple = ()):
        self.unet = unet
        self.device = device
        self.fast = fast
        self.compile = compile
        self.lora = lora
        self.graphs = fast and device.type == "cuda"
        self.pacer = Pacer(device if self.graphs else None)

    @property
    def scheduler_device(self) -> torch.device:
        """Where the scheduler keeps its timesteps: the host on the GPU path (see 3. above)."""
        return torch.device("cpu") if self.fast else self.device

    def unet_timesteps(self, timesteps: torch.Tensor) -> torch.Tensor:
        """The timesteps the UNet is given, on its device (copied once, before the loop)."""
        return timesteps.to(self.device) if self.fast else timesteps

    def denoiser(self, sample: torch.Tensor, timestep: torch.Tensor, embeds: torch.Tensor | None = None) -> "Denoiser":
        """The UNet for inputs shaped as these, as this run calls it: ``denoiser(sample, t, embeds) -> output``."""
        eager = _call(self.unet)
        if not (self.compile or self.graphs):
            return Denoiser(eager)
        state = _state(self.unet)
        key = (self.compile, self.lora, *_signature(sample, timestep, embeds))
        ready = state.ready.get(key)
        if ready is not None:
            state.ready.move_to_end(key)
            return Denoiser(ready)
        what = "compiling the UNet (torch.compile)" if self.compile else "capturing the UNet"
        size = "x".join(str(s) for s in sample.shape[-2:])
        note = (f"{what} for {size}, batch {sample.shape[0]}, {str(sample.dtype).removeprefix('torch.')}"
                + (": the first run of a model and size compiles (a minute or more); later runs, and restarts "
                   "through the cache on disk, take seconds" if self.compile else ": once per model and size"))
        return Denoiser(None, note, functools.partial(self._build, state, key, sample, timestep, embeds),
                        "compile_seconds" if self.compile else "capture_seconds")

    def _build(self, state: "_State", key: tuple, sample, timestep, embeds) -> tuple[Callable, str]:
        """(the callable for ``key``, what went wrong, "" if nothing): compiled and captured now, kept for later."""
        fn, problem = _call(self.unet), ""
        with fused_qkv(self.unet, on=self.graphs and not self.lora):  # what the graph captures; not outside it
            if self.compile:
                try:
                    fn = _call(state.compiled(self.unet))
                    fn(sample, timestep, embeds)  # compiles now (from the disk cache where it can), not in step 1
                except Exception as exc:  # inductor needs a C++ compiler (CPU) or Triton (GPU): the loop goes on
                    log.warning("torch.compile failed; this model runs eager", exc_info=True)
                    fn, problem = _call(self.unet), f"compile failed, running eager: {type(exc).__name__}: {exc}"
            if self.graphs:
                try:
                    fn = CudaGraphed(fn, sample, timestep, embeds)
                except Exception as exc:
                    log.warning("CUDA graph capture failed; this model runs without one", exc_info=True)
                    problem = problem or f"CUDA graph capture failed, running without: {type(exc).__name__}: {exc}"
        state.ready[key] = fn
        while len(state.ready) > MAX_GRAPHS:
            state.ready.popitem(last=False)
        return fn, problem

    def previewer(self, previewer):
        """``previewer`` drawn on the device where it can be (latent-to-RGB, pixels, their x0), else itself."""
        return DevicePreviewer(previewer) if self.fast and DevicePreviewer.handles(previewer) else previewer

    def step_done(self) -> None:
        """Called after each ``scheduler.step``: keeps the loop near the device and times the steps."""
        self.pacer.step_done()

    def steps_per_second(self) -> float | None:
        """Denoising steps a second between the first step's end and the last's (device time on CUDA)."""
        return self.pacer.steps_per_second()


class Denoiser:
    """The UNet call of one run; ``pending`` says in words what :meth:`build` compiles or captures first."""

    def __init__(self, fn: Callable | None, pending: str = "", build: Callable | None = None, cost: str = ""):
        self.fn = fn
        self.pending = pending
        self._build = build
        self.cost = cost  # the name of build()'s seconds in a run's info

    def build(self) -> dict:
        """Compile and capture now (before the first step); for the run's info, the seconds it took
        (``compile_seconds`` or ``capture_seconds``) and what failed, if anything (``compile_problem``)."""
        if self.fn is not None:
            return {}
        start = time.perf_counter()
        self.fn, problem = self._build()
        return {self.cost: round(time.perf_counter() - start, 3), **({"compile_problem": problem} if problem else {})}

    def __call__(self, sample: torch.Tensor, timestep: torch.Tensor, embeds: torch.Tensor | None = None):
        if self.fn is None:
            self.build()
        return self.fn(sample, timestep, embeds)


def _call(unet) -> Callable:
    """``unet`` as ``fn(sample, timestep, embeds) -> output``, as the loops called it before (``embeds`` None:
    a UNet2DModel, which takes none)."""

    def call(sample, timestep, embeds=None):
        if embeds is None:
            return unet(sample, timestep, return_dict=False)[0]
        return unet(sample, timestep, encoder_hidden_states=embeds, return_dict=False)[0]

    return call


def _signature(*tensors) -> tuple:
    return tuple((tuple(x.shape), x.dtype, x.device.type) if x is not None else None for x in tensors)


@dataclass(eq=False)
class _State:
    """What the GPU path keeps with a model (an attribute of its UNet, so it goes when the model goes)."""

    prepared: bool = False
    fused: bool = False  # fused QKV projections made (UNet2DConditionModel): fused_qkv() may switch them on
    compiled_unet: torch.nn.Module | None = None
    ready: collections.OrderedDict = field(default_factory=collections.OrderedDict)  # signature -> callable
    processors: dict | None = None  # the attention processors every run starts with (reset)

    def compiled(self, unet) -> torch.nn.Module:
        if self.compiled_unet is None:
            compile_cache_dir()
            import torch._dynamo

            config = torch._dynamo.config
            limit = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"  # older torch
            setattr(config, limit, max(getattr(config, limit), RECOMPILE_LIMIT))
            self.compiled_unet = torch.compile(unet, fullgraph=True, dynamic=False)
        return self.compiled_unet


def _state(unet) -> _State:
    state = unet.__dict__.get("_workbench_speed")
    if state is None:
        state = unet.__dict__["_workbench_speed"] = _State()  # a plain attribute: not a submodule, not saved
    return state


def reset(pipe) -> None:
    """Before a run: ``pipe``'s attention processors as every run of it has them, whatever the run before left: the
    model's own (on the GPU path, as :func:`prepare` made them, prepared before any run of any kind)."""
    if pipe.device.type in FAST_DEVICES:
        prepare(pipe)
    state = _state(pipe.unet)
    if state.processors is None:
        state.processors = _processors(pipe.unet)
        return
    for name, module in _attention(pipe.unet):
        if module.processor is not state.processors[name]:
            module.set_processor(state.processors[name])


def _attention(unet):
    """(name, module) of each attention module of ``unet`` (a UNet2DModel has no ``attn_processors``)."""
    from diffusers.models.attention_processor import Attention

    return [(name, module) for name, module in unet.named_modules() if isinstance(module, Attention)]


def _processors(unet) -> dict:
    return {name: module.processor for name, module in _attention(unet)}


def run_state(pipe, *, compile: bool = False) -> dict:
    """What a run of ``pipe`` depended on besides its request's numbers, as it was set (see
    :func:`engine.worker.child.run_events`): the LoRA and scale, the attention processors, compiled or not."""
    name, scale, _ = getattr(pipe, "workbench_lora", ("", 1.0, None))
    return {"lora": name or None, "lora_scale": float(scale) if name else None,
            "attention": sorted({type(p).__name__ for p in _processors(pipe.unet).values()}),
            "compiled": bool(compile)}


def release(unet) -> None:
    """Drop what the GPU path built for ``unet`` (compiled code, graphs and their memory); its preparation stays."""
    state = _state(unet)
    state.ready.clear()
    state.compiled_unet = None


# -- 1. the models -------------------------------------------------------------------------------------------------
def prepare(pipe) -> None:
    """Once per pipeline: bf16 where fp16 overflows, channels_last, SDPA, fused QKV (see the module docstring)."""
    from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0

    state = _state(pipe.unet)
    if state.prepared:
        return
    unet = pipe.unet
    if unet.dtype == torch.float16 and _overflows_in_fp16(pipe) and _bf16_supported(pipe.device):
        log.warning("a UNet step in fp16 overflows: running this model in bf16")
        pipe.to(torch.bfloat16)
    for module in (unet, getattr(pipe, "vae", None)):
        if module is not None:
            module.to(memory_format=torch.channels_last)
    for module in unet.modules():
        if isinstance(module, Attention) and type(module.processor) is AttnProcessor:
            module.set_processor(AttnProcessor2_0())  # scaled_dot_product_attention: flash / memory-efficient
    if hasattr(unet, "fuse_qkv_projections"):
        own = unet.attn_processors
        try:
            unet.fuse_qkv_projections()  # makes each attention's to_qkv (to_kv) from its to_q, to_k, to_v
            state.fused = True
        except ValueError as exc:  # added-KV attention: diffusers refuses, the projections stay apart
            log.info("QKV projections not fused: %s", exc)
        finally:
            unet.set_attn_processor(own)  # the model's own, but inside our graphs (fused_qkv)
    state.prepared = True


@contextlib.contextmanager
def fused_qkv(unet, *, on: bool = True):
    """Inside: ``unet``'s attention through its fused projections (made by :func:`prepare`), where ``on`` and it
    has them; after: the processors it had."""
    if not (on and _state(unet).fused):
        yield
        return
    from diffusers.models.attention_processor import FusedAttnProcessor2_0

    own = unet.attn_processors
    unet.set_attn_processor(FusedAttnProcessor2_0())
    try:
        yield
    finally:
        unet.set_attn_processor(own)


def _overflows_in_fp16(pipe) -> bool:
    """Whether one UNet step on noise, at the model's size and mid-schedule, gives inf or NaN in fp16."""
    unet = pipe.unet
    size = unet.config.sample_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    generator = torch.Generator(pipe.device).manual_seed(0)
    sample = torch.randn((1, unet.config.in_channels, *size), generator=generator, device=pipe.device,
                         dtype=unet.dtype)
    t = torch.tensor(pipe.scheduler.config.num_train_timesteps // 2, device=pipe.device)
    embeds = None
    if unet.config.get("cross_attention_dim") is not None:  # a UNet2DConditionModel
        length = getattr(getattr(pipe, "tokenizer", None), "model_max_length", 77)
        width = unet.config.cross_attention_dim
        embeds = torch.randn((1, length, width if isinstance(width, int) else width[0]), generator=generator,
                             device=pipe.device, dtype=unet.dtype)
    with torch.no_grad():
        out = _call(unet)(sample, t, embeds)
    return not bool(torch.isfinite(out).all())  # one read, once per model, before any run


def _bf16_supported(device: torch.device) -> bool:
    return device.type != "cuda" or torch.cuda.is_bf16_supported()


# -- 2. the UNet as a CUDA graph -----------------------------------------------------------------------------------
class CudaGraphed:
    """``fn(sample, timestep, embeds)`` for one input signature as a CUDA graph (the recipe of PyTorch's
    "CUDA Graphs" notes: warm up on a side stream, capture, replay): each call copies its inputs into the
    graph's static ones, replays it, and returns a copy of its output (the next replay overwrites the graph's)."""

    def __init__(self, fn: Callable, sample, timestep, embeds):
        self.inputs = tuple(x.clone() if x is not None else None for x in (sample, timestep, embeds))
        with DEVICE_LOCK:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(GRAPH_WARMUP):
                    fn(*self.inputs)
            torch.cuda.current_stream().wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            # thread_local: only this thread is held to capture's rules; a preview drawn elsewhere may allocate.
            with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
                self.output = fn(*self.inputs)

    def __call__(self, sample, timestep, embeds=None):
        for static, x in zip(self.inputs, (sample, timestep, embeds)):
            if static is not None:
                static.copy_(x)  # device to device: no sync
        self.graph.replay()
        return self.output.clone()


# -- 5. the pacer --------------------------------------------------------------------------------------------------
class Pacer:
    """Keeps the loop at most ``AHEAD`` steps ahead of a CUDA device, and times the steps.

    After step i is queued, waits for the CUDA event recorded after step i - AHEAD: steps i - 1 and i are
    still queued then, so the device never waits for the loop. ``device`` None: timed on the host, no wait.
    """

    def __init__(self, device: torch.device | None, ahead: int | None = None):
        self.cuda = device is not None and device.type == "cuda"
        self.ahead = AHEAD if ahead is None else ahead
        self.queued: collections.deque = collections.deque()
        self.first = self.last = None  # CUDA events, or perf_counter() values
        self.count = 0

    def step_done(self) -> None:
        self.count += 1
        if not self.cuda:
            self.last = time.perf_counter()
            self.first = self.first if self.first is not None else self.last
            return
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        self.first = self.first if self.first is not None else event
        self.last = event
        self.queued.append(event)
        if len(self.queued) > self.ahead:
            self.queued.popleft().synchronize()

    def steps_per_second(self) -> float | None:
        if self.count < 2:
            return None
        if self.cuda:
            self.last.synchronize()
            seconds = self.first.elapsed_time(self.last) / 1000
        else:
            seconds = self.last - self.first
        return round((self.count - 1) / seconds, 2) if seconds > 0 else None


# -- 4. previews on the device -------------------------------------------------------------------------------------
class DevicePreviewer:
    """A numpy previewer's math (:mod:`engine.sampling.preview`) done in torch where the tensor lives.

    Handles :class:`LatentRGBPreviewer` and :class:`PixelPreviewer`, with a ``scale`` (``preview.scaled``),
    and either inside an :class:`X0Previewer` (x0 drawn from a (model_output, x_t) pair). :meth:`small` gives
    the uint8 image at the tensor's own size (what the device worker sends); calling it enlarges that as the
    numpy previewer does. The same pixels as the numpy previewer, up to float rounding (x0 in float32 here too).
    """

    def __init__(self, previewer):
        self.previewer = previewer  # unpacked when first drawn: building one in the loop costs nothing

    @staticmethod
    def handles(previewer) -> bool:
        base, _, inner = _unpack(previewer)
        return isinstance(inner, (LatentRGBPreviewer, PixelPreviewer))

    @property
    def min_side(self) -> int:
        return _unpack(self.previewer)[2].min_side

    def __call__(self, tensor) -> np.ndarray:
        return upscale_nearest(self.small(tensor), self.min_side)

    def small(self, tensor) -> np.ndarray:
        """(h, w, 3) uint8 at the tensor's size (a grid for a batch), drawn on the tensor's device."""
        x0_of, scale, inner = _unpack(self.previewer)
        with DEVICE_LOCK, torch.no_grad():
            if x0_of is not None:
                model_output, sample = tensor
                count = 4 if isinstance(inner, LatentRGBPreviewer) else 16
                x = x0_from(model_output[:count].float(), sample[:count].float(), x0_of.alpha_bar,
                            x0_of.prediction_type)
            else:
                x = tensor
            grid = _to_uint8(inner, x, scale)  # (3, H, W) uint8, on the device
            host, done = _to_host(grid)
        if done is not None:
            done.synchronize()  # this thread waits, not the loop
        return np.ascontiguousarray(host.numpy().transpose(1, 2, 0))


def _unpack(previewer) -> tuple[X0Previewer | None, float, object]:
    """(the X0Previewer around it or None, the scale, the LatentRGB/Pixel previewer or whatever else is inside)."""
    scale = 1.0
    if isinstance(previewer, functools.partial):
        scale = float(previewer.keywords.get("scale", 1.0))
        previewer = previewer.func
    if isinstance(previewer, X0Previewer):
        return previewer, scale, previewer.inner
    return None, scale, previewer


def _to_uint8(inner, x: torch.Tensor, scale: float) -> torch.Tensor:
    """LatentRGBPreviewer's or PixelPreviewer's math on ``x`` (B, C, h, w): (3, H, W) uint8, a batch as
    :func:`engine.sampling.preview.make_grid` lays it out (empty cells are zeros before the cast, mid-grey)."""
    if isinstance(inner, LatentRGBPreviewer):
        x = x[:4].float() * scale
        matrix, bias = (_on(x.device, torch.from_numpy(a)) for a in (inner.matrix, inner.bias))  # (C, 3), (3,)
        x = torch.einsum("bchw,cd->bdhw", x, matrix) + bias[None, :, None, None]
    else:
        x = x[:16].float() * scale
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
    b, c, h, w = x.shape
    if b == 1:
        x = x[0]
    else:
        cols = math.ceil(math.sqrt(b))
        rows = math.ceil(b / cols)
        x = torch.cat([x, x.new_zeros((rows * cols - b, c, h, w))])
        x = x.reshape(rows, cols, c, h, w).permute(2, 0, 3, 1, 4).reshape(c, rows * h, cols * w)
    # Clamp and round before casting (ComfyUI latent_preview.py::preview_to_image).
    return torch.round(torch.clamp(x / 2 + 0.5, 0, 1) * 255).to(torch.uint8)


def _on(device: torch.device, host: torch.Tensor) -> torch.Tensor:
    """``host`` on ``device``; to CUDA from pinned memory, without a sync."""
    if device.type != "cuda":
        return host.to(device)
    return host.pin_memory().to(device, non_blocking=True)


def _to_host(images: torch.Tensor) -> tuple[torch.Tensor, torch.cuda.Event | None]:
    """A host copy of ``images``; on CUDA a non-blocking copy into pinned memory and the event that ends it."""
    if images.device.type != "cuda":
        return images.cpu(), None
    host = torch.empty(images.shape, dtype=images.dtype, pin_memory=True)
    host.copy_(images, non_blocking=True)
    done = torch.cuda.Event()
    done.record()
    return host, done

