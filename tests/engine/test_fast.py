"""The GPU path (engine/sampling/fast.py), run on the CPU where it can be: its previews equal the numpy ones,
its prepared models (channels_last, SDPA, fused QKV) and host-side scheduler give the plain loop's images,
the compiled UNet (torch.compile, inductor's C++ backend) gives the eager one's, and a failed compile falls back."""

import pickle
from dataclasses import replace

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler
from diffusers.models.attention_processor import AttnProcessor2_0, FusedAttnProcessor2_0

from engine.errors import InputError
from engine.events import Done, Preview, Started, Step
from engine.sampling import fast
from engine.sampling.preview import SD15_LATENT_RGB, LatentRGBPreviewer, PixelPreviewer, X0Previewer, scaled
from engine.sampling.txt2img import Txt2ImgRequest, iter_txt2img
from engine.sampling.unconditional import UnconditionalRequest, iter_unconditional
from engine.testing.shapes import ddpm_pipeline, sd_pipeline
from engine.testing.tiny import tiny_ddpm_pipeline, tiny_sd_pipeline
from engine.worker.child import portable

# Pixel tolerance of the parity tests, out of 255: the project's CPU fp32 bound.
PIXELS = 2


@pytest.fixture
def gpu_path_on_cpu(monkeypatch):
    """The GPU path's choices on the CPU: everything but CUDA graphs, pinned memory and events."""
    monkeypatch.setattr(fast, "FAST_DEVICES", ("cuda", "cpu"))


def image(done: Done) -> np.ndarray:
    return np.asarray(done.images[0]).astype(int)


def run(generator) -> tuple[Started, list[Step], Done]:
    events = list(generator)
    assert isinstance(events[0], Started) and isinstance(events[-1], Done)
    return events[0], [e for e in events if isinstance(e, Step)], events[-1]


# -- requests ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("make", [lambda c: Txt2ImgRequest(prompt="a cat", compile=c),
                                  lambda c: UnconditionalRequest(compile=c)])
def test_compile_is_true_or_false(make):
    assert make(True).compile is True and make(False).compile is False
    for value in ("yes", 1, None):
        with pytest.raises(InputError) as caught:
            make(value)
        assert str(caught.value) == f"compile must be true or false; got {value!r}"
        assert caught.value.field == "compile"


def test_compile_reaches_the_info_and_the_plain_loop_times_its_steps(tiny_sd):
    started, steps, done = run(iter_txt2img(Txt2ImgRequest(prompt="a cat", num_inference_steps=3, seed=1,
                                                           width=32, height=32), pipe=tiny_sd))
    assert done.info["compile"] is False and "compiling" not in started.info and "compile_seconds" not in done.info
    assert done.info["steps_per_second"] > 0
    assert not isinstance(steps[-1].preview_x0.previewer, fast.DevicePreviewer)  # numpy previews on a CPU


# -- previews ----------------------------------------------------------------------------------------------------
def _ddim():
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False)
    scheduler.set_timesteps(10)
    return scheduler


PREVIEW_CASES = {
    "latent, scaled": (scaled(LatentRGBPreviewer(), 0.7), lambda g: 3 * torch.randn(1, 4, 8, 8, generator=g)),
    "latent batch of 3 (grid with an empty cell)": (LatentRGBPreviewer(SD15_LATENT_RGB, (0.1, -0.2, 0.05)),
                                                    lambda g: torch.randn(3, 4, 6, 6, generator=g)),
    "latent batch of 6 (the first 4 drawn)": (LatentRGBPreviewer(), lambda g: torch.randn(6, 4, 4, 4, generator=g)),
    "grey pixels, batch of 5": (PixelPreviewer(), lambda g: torch.randn(5, 1, 8, 8, generator=g)),
    "rgb pixels, scaled": (scaled(PixelPreviewer(), 0.5), lambda g: 2 * torch.randn(1, 3, 8, 8, generator=g)),
    "x0 of latents from (eps, x_t)": (X0Previewer(_ddim(), 500, LatentRGBPreviewer()),
                                      lambda g: (torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 4, 8, 8, generator=g))),
    "x0 of pixels from (eps, x_t), batch of 2": (X0Previewer(_ddim(), 900, PixelPreviewer()),
                                                 lambda g: (torch.randn(2, 3, 8, 8, generator=g),
                                                            torch.randn(2, 3, 8, 8, generator=g))),
}


@pytest.mark.parametrize("case", list(PREVIEW_CASES))
def test_device_previewer_draws_what_the_numpy_previewer_draws(case):
    previewer, make = PREVIEW_CASES[case]
    tensor = make(torch.Generator().manual_seed(0))
    assert fast.DevicePreviewer.handles(previewer)
    ours, theirs = fast.DevicePreviewer(previewer)(tensor).astype(int), previewer(tensor).astype(int)
    assert ours.shape == theirs.shape
    assert np.abs(ours - theirs).max() <= 1  # float rounding at a .5 boundary, at most
    assert (ours == theirs).mean() > 0.99
    # The comparison can fail: another tensor draws another image.
    other = previewer(make(torch.Generator().manual_seed(1))).astype(int)
    assert np.abs(other - ours).max() > 10


def test_device_previewer_sends_the_latent_sized_image():
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    previewer = fast.DevicePreviewer(LatentRGBPreviewer())
    small = previewer.small(latents)
    assert small.shape == (8, 8, 3) and small.dtype == np.uint8
    assert previewer(latents).shape == (256, 256, 3)  # enlarged to the numpy previewer's min_side, 32x
    assert not fast.DevicePreviewer.handles(lambda x: np.zeros((1, 1, 3), np.uint8))


def test_the_worker_sends_a_device_preview_drawn_small():
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    previewer = fast.DevicePreviewer(scaled(LatentRGBPreviewer(), 0.5))
    step = Step(step=1, total=1, timestep=1.0, preview_xt=Preview(latents, previewer), preview_x0=None, elapsed=0.0)
    sent = pickle.loads(pickle.dumps(portable(step)))  # as it crosses to the server
    assert isinstance(sent.preview_xt.tensor, np.ndarray) and sent.preview_xt.tensor.shape == (8, 8, 3)
    np.testing.assert_array_equal(sent.preview_xt.array(), previewer(latents))


# -- the GPU path's models and loop, on the CPU ----------------------------------------------------------------------
def test_gpu_path_txt2img_gives_the_plain_loops_images(tiny_sd, gpu_path_on_cpu, monkeypatch):
    """channels_last, SDPA, fused QKV, the scheduler on host timesteps and previews in torch: the plain images."""
    pipe = tiny_sd_pipeline(seed=0)  # its own copy: preparing changes the models in place
    request = Txt2ImgRequest(prompt="a handwritten digit seven", negative_prompt="blurry", num_inference_steps=6,
                             scheduler="DPM++ 2M Karras", seed=7, width=32, height=32, preview="latent")
    _, steps, done = run(iter_txt2img(request, pipe=pipe))
    assert pipe.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert pipe.vae.decoder.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    # The fused projections are made, but only our CUDA graphs use them: the model keeps its own processors.
    assert fast._state(pipe.unet).fused and hasattr(pipe.unet.mid_block.attentions[0].transformer_blocks[0].attn1,
                                                    "to_qkv")
    assert {type(p) for p in pipe.unet.attn_processors.values()} == {AttnProcessor2_0}
    monkeypatch.setattr(fast, "FAST_DEVICES", ("cuda",))  # the plain loop, which leaves the shared pipeline as it is
    _, plain_steps, plain = run(iter_txt2img(request, pipe=tiny_sd))
    assert np.abs(image(done) - image(plain)).max() <= PIXELS
    for ours, theirs in zip(steps, plain_steps):  # DPM++ gives no x0: drawn from (eps, x_t), on the "device"
        assert isinstance(ours.preview_x0.previewer, fast.DevicePreviewer)
        assert np.abs(ours.preview_x0.array().astype(int) - theirs.preview_x0.array()).max() <= PIXELS
        assert np.abs(ours.preview_xt.array().astype(int) - theirs.preview_xt.array()).max() <= PIXELS
    other = run(iter_txt2img(replace(request, seed=8), pipe=tiny_sd))[2]
    assert np.abs(image(other) - image(plain)).max() > 10  # the comparison can fail


def test_fused_qkv_gives_the_unets_output_and_gives_its_processors_back(gpu_path_on_cpu):
    pipe = tiny_sd_pipeline(seed=0)
    fast.prepare(pipe)
    unet, g = pipe.unet, torch.Generator().manual_seed(0)
    sample, embeds = torch.randn(2, 4, 16, 16, generator=g), torch.randn(2, 32, 32, generator=g)
    with torch.no_grad():
        own = unet(sample, torch.tensor(500), encoder_hidden_states=embeds).sample
        with fast.fused_qkv(unet):
            assert {type(p) for p in unet.attn_processors.values()} == {FusedAttnProcessor2_0}
            fused = unet(sample, torch.tensor(500), encoder_hidden_states=embeds).sample
            other_t = unet(sample, torch.tensor(100), encoder_hidden_states=embeds).sample
        with fast.fused_qkv(unet, on=False):  # a LoRA switched on: its q, k and v layers are not in the fused ones
            assert {type(p) for p in unet.attn_processors.values()} == {AttnProcessor2_0}
    assert {type(p) for p in unet.attn_processors.values()} == {AttnProcessor2_0}
    torch.testing.assert_close(fused, own, atol=1e-5, rtol=1e-5)
    assert (other_t - own).abs().max() > 1e-2  # the comparison can fail


def with_lora(pipe, name: str = "x"):
    """``pipe`` with a random LoRA on its attention switched on, as engine.models.loras.activate leaves one."""
    from peft import LoraConfig

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False,
                                         target_modules=["to_q", "to_k", "to_v", "to_out.0"]), adapter_name=name)
    pipe.workbench_lora = (name, 1.0, None)
    return pipe


def test_a_lora_still_acts_on_a_prepared_model(monkeypatch):
    """The fused projections hold the base weights only: a LoRA on q, k and v must not run through them."""
    request = Txt2ImgRequest(prompt="a seven", num_inference_steps=4, scheduler="DDIM", seed=5, width=32, height=32,
                             preview="latent", lora="x")
    plain = run(iter_txt2img(request, pipe=with_lora(tiny_sd_pipeline(seed=0))))[2]
    base = run(iter_txt2img(replace(request, lora=""), pipe=tiny_sd_pipeline(seed=0)))[2]
    monkeypatch.setattr(fast, "FAST_DEVICES", ("cuda", "cpu"))
    pipe = with_lora(tiny_sd_pipeline(seed=0))
    done = run(iter_txt2img(request, pipe=pipe))[2]
    assert fast._state(pipe.unet).fused and fast._lora_state(pipe) == ("x", 1.0, ("x",))
    assert np.abs(image(done) - image(plain)).max() <= PIXELS
    assert np.abs(image(plain) - image(base)).max() > 10  # the LoRA changes the image: the check can fail


@pytest.mark.parametrize("scheduler", ["DDPM", "DPM++ 2M"])
def test_gpu_path_unconditional_gives_the_plain_loops_images(monkeypatch, scheduler):
    pipe, plain_pipe = tiny_ddpm_pipeline(seed=0), tiny_ddpm_pipeline(seed=0)
    request = UnconditionalRequest(scheduler=scheduler, num_inference_steps=8, seed=3, batch_size=2)
    _, plain_steps, plain = run(iter_unconditional(request, pipe=plain_pipe))
    monkeypatch.setattr(fast, "FAST_DEVICES", ("cuda", "cpu"))
    _, steps, done = run(iter_unconditional(request, pipe=pipe))
    assert pipe.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    for ours, theirs in zip(done.images, plain.images):
        assert np.abs(np.asarray(ours).astype(int) - np.asarray(theirs)).max() <= PIXELS
    for ours, theirs in zip(steps, plain_steps):
        assert isinstance(ours.preview_x0.previewer, fast.DevicePreviewer)
        assert np.abs(ours.preview_x0.array().astype(int) - theirs.preview_x0.array()).max() <= PIXELS


@pytest.mark.filterwarnings("ignore:invalid value encountered in cast")  # the overflowed model draws garbage
def test_bf16_where_a_step_overflows_in_fp16(gpu_path_on_cpu):
    pipe = tiny_ddpm_pipeline(seed=0).to(torch.float16)
    fast.prepare(pipe)
    assert pipe.unet.dtype == torch.float16  # finite in fp16: stays
    pipe = tiny_ddpm_pipeline(seed=0)
    with torch.no_grad():
        pipe.unet.conv_out.weight.mul_(1e6)  # outputs past fp16's 65504
    pipe = pipe.to(torch.float16)
    fast.prepare(pipe)
    assert pipe.unet.dtype == torch.bfloat16
    done = run(iter_unconditional(UnconditionalRequest(scheduler="DDIM", num_inference_steps=2, seed=0),
                                  pipe=pipe))[2]
    assert "dtype=torch.bfloat16" in done.code


def test_a_failed_compile_runs_eager_and_says_so(tiny_sd, monkeypatch):
    def no_compiler(*args, **kwargs):
        raise RuntimeError("no C++ compiler here")

    monkeypatch.setattr(torch, "compile", no_compiler)
    pipe = tiny_sd_pipeline(seed=0)
    request = Txt2ImgRequest(prompt="a cat", num_inference_steps=3, seed=2, width=32, height=32, compile=True)
    started, _, done = run(iter_txt2img(request, pipe=pipe))
    assert started.info["compiling"].startswith("compiling the UNet (torch.compile) for 16x16, batch 2, float32")
    assert done.info["compile_problem"] == "compile failed, running eager: RuntimeError: no C++ compiler here"
    plain = run(iter_txt2img(replace(request, compile=False), pipe=tiny_sd))[2]
    np.testing.assert_array_equal(image(done), image(plain))


# -- the compiled UNet (torch.compile on the CPU: half a minute for a one-block UNet on 2 idle cores) -----------------
@pytest.fixture(scope="module")
def compiles(compile_cache):
    """This module's compiles read and fill the session's compile cache (fresh at the session's start: the first
    compile of each model here is a cold one)."""
    import os

    before = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(compile_cache)
    yield
    if before is None:
        os.environ.pop("TORCHINDUCTOR_CACHE_DIR")
    else:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = before


@pytest.mark.slow
def test_compiled_txt2img_equals_the_pipeline_and_compiles_once(compiles):
    from tests.engine.test_txt2img import pipeline_image

    pipe = sd_pipeline("tiny")  # one UNet block: the least to compile
    kw = dict(prompt="a handwritten digit seven", negative_prompt="blurry", num_inference_steps=5, guidance_scale=6.0,
              seed=11)
    request = Txt2ImgRequest(scheduler="DDIM", compile=True, **kw)
    started, steps, done = run(iter_txt2img(request, pipe=pipe))
    assert started.info["compiling"] == (
        "compiling the UNet (torch.compile) for 8x8, batch 2, float32: the first run of a model and size compiles "
        "(a minute or more); later runs, and restarts through the cache on disk, take seconds")
    assert done.info["compile_seconds"] > 0 and "compile_problem" not in done.info
    theirs = pipeline_image(sd_pipeline("tiny"), "DDIM", **kw).astype(int)
    assert np.abs(image(done) - theirs).max() <= PIXELS
    eager = run(iter_txt2img(Txt2ImgRequest(scheduler="DDIM", **kw), pipe=pipe))[2]
    assert np.abs(image(done) - image(eager)).max() <= 1  # measured: 0 (latents within 1e-5)
    again = run(iter_txt2img(replace(request, seed=12), pipe=pipe))
    assert "compiling" not in again[0].info and "compile_seconds" not in again[2].info  # kept for this shape
    assert np.abs(image(again[2]) - image(done)).max() > 10


@pytest.mark.slow
def test_compiled_unconditional_equals_eager(compiles):
    pipe = ddpm_pipeline("tiny")
    request = UnconditionalRequest(scheduler="DPM++ 2M", num_inference_steps=6, seed=4, compile=True)
    started, steps, done = run(iter_unconditional(request, pipe=pipe))
    assert started.info["compiling"].startswith("compiling the UNet (torch.compile) for 8x8, batch 1, float32")
    eager = run(iter_unconditional(replace(request, compile=False), pipe=pipe))
    assert np.abs(image(done) - image(eager[2])).max() <= 1
    for ours, theirs in zip(steps, eager[1]):
        np.testing.assert_allclose(ours.preview_xt.tensor.numpy(), theirs.preview_xt.tensor.numpy(), rtol=1e-4,
                                   atol=1e-4)  # measured: 1.3e-5 relative at most
