"""timestep_spacing (Text to image, Unconditional) and guidance_rescale (Text to image) against diffusers'
own pipelines: StableDiffusionPipeline(..., guidance_rescale=phi) and DDPMPipeline, each with its scheduler
built ``from_config(..., timestep_spacing=...)``."""

import re

import numpy as np
import pytest
import torch

from engine.records.runs import iter_saved
from engine.errors import InputError
from engine.records.outputs import a1111_parameters
from engine.records.pnginfo import parse_a1111
from engine.sampling.schedulers import make_scheduler
from engine.sampling.txt2img import Txt2ImgRequest, iter_txt2img
from engine.sampling.unconditional import UnconditionalRequest, iter_unconditional

KW = dict(prompt="a handwritten digit seven", negative_prompt="blurry", num_inference_steps=5, guidance_scale=7.5,
          seed=1234, scheduler="DDIM")


def exactly(message: str) -> str:
    return f"^{re.escape(message)}$"


def ours(pipe, **kw) -> np.ndarray:
    done = list(iter_txt2img(Txt2ImgRequest(**kw), pipe=pipe))[-1]
    return np.asarray(done.images[0]).astype(int)


def pipeline_image(pipe, *, timestep_spacing=None, guidance_rescale=0.0, latents=None, **kw) -> np.ndarray:
    original = pipe.scheduler
    overrides = {"timestep_spacing": timestep_spacing} if timestep_spacing else {}
    pipe.scheduler = make_scheduler(kw["scheduler"], original.config, **overrides)
    try:
        out = pipe(kw["prompt"], negative_prompt=kw["negative_prompt"], num_inference_steps=kw["num_inference_steps"],
                   guidance_scale=kw["guidance_scale"], guidance_rescale=guidance_rescale, latents=latents,
                   generator=torch.Generator("cpu").manual_seed(kw["seed"]), output_type="np").images[0]
    finally:
        pipe.scheduler = original
    return (out * 255).round().astype(int)


@pytest.mark.parametrize("spacing, phi", [("trailing", 0.7), ("linspace", 0.0), ("", 1.0), ("leading", 0.3)])
def test_txt2img_with_spacing_and_guidance_rescale_matches_the_pipeline(tiny_sd, spacing, phi):
    mine = ours(tiny_sd, timestep_spacing=spacing, guidance_rescale=phi, **KW)
    theirs = pipeline_image(tiny_sd, timestep_spacing=spacing, guidance_rescale=phi, **KW)
    assert np.abs(mine - theirs).max() <= 2


def test_spacing_and_rescale_change_the_image(tiny_sd):
    """The comparison above can fail: each setting, left out of the reference, changes the image."""
    plain = pipeline_image(tiny_sd, **KW)
    assert np.abs(ours(tiny_sd, timestep_spacing="trailing", **KW) - plain).max() > 10
    assert np.abs(ours(tiny_sd, guidance_rescale=1.0, **KW) - plain).max() > 10


def test_txt2img_reports_the_timesteps_of_the_spacing(tiny_sd):
    started = next(iter_txt2img(Txt2ImgRequest(**{**KW, "num_inference_steps": 4}, timestep_spacing="trailing"),
                                pipe=tiny_sd))
    reference = make_scheduler("DDIM", tiny_sd.scheduler.config, timestep_spacing="trailing")
    reference.set_timesteps(4)
    assert list(started.timesteps) == reference.timesteps.tolist()
    assert started.timesteps[0] == tiny_sd.scheduler.config.num_train_timesteps - 1


def test_the_code_box_reproduces_a_spaced_rescaled_image(tiny_sd, tmp_path):
    tiny_sd.save_pretrained(tmp_path / "m")
    from engine.models.devices import resolve_device
    from engine.models.registry import ModelRegistry

    pipe = ModelRegistry(tmp_path, resolve_device("cpu")).load("m", "txt2img")
    done = list(iter_txt2img(Txt2ImgRequest(**{**KW, "num_inference_steps": 3}, timestep_spacing="trailing",
                                            guidance_rescale=0.7), pipe=pipe))[-1]
    assert "timestep_spacing='trailing'" in done.code and "guidance_rescale=0.7" in done.code
    namespace = {}
    exec(compile(done.code.replace("image.save('image.png')", ""), "snippet", "exec"), namespace)
    assert np.abs(np.asarray(namespace["image"]).astype(int) - np.asarray(done.images[0]).astype(int)).max() <= 2


def test_defaults_keep_todays_code_and_parameters(tiny_sd):
    done = list(iter_txt2img(Txt2ImgRequest(**{**KW, "num_inference_steps": 2}), pipe=tiny_sd))[-1]
    assert "timestep_spacing" not in done.code and "guidance_rescale" not in done.code
    assert "CFG rescale" not in a1111_parameters(done.info) and "Spacing" not in a1111_parameters(done.info)


def test_png_parameters_carry_spacing_and_rescale_and_read_back():
    info = {"prompt": "a seven", "steps": 5, "scheduler": "DDIM", "guidance_scale": 7.5, "seed": 1,
            "width": 64, "height": 64, "timestep_spacing": "trailing", "guidance_rescale": 0.7}
    text = a1111_parameters(info)
    assert "CFG rescale: 0.7" in text and "Timestep spacing: trailing" in text
    settings, unused = parse_a1111(text)
    assert settings["guidance_rescale"] == 0.7 and settings["timestep_spacing"] == "trailing"
    assert unused == []


@pytest.fixture(scope="module")
def tiny_ddpm():
    from engine.testing.tiny import tiny_ddpm_pipeline

    pipe = tiny_ddpm_pipeline(seed=0, sample_size=16)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("spacing", ["trailing", "linspace"])
def test_unconditional_with_spacing_matches_ddpm_pipeline(tiny_ddpm, spacing):
    done = list(iter_unconditional(UnconditionalRequest(scheduler="DDIM", num_inference_steps=5, seed=3,
                                                        timestep_spacing=spacing), pipe=tiny_ddpm))[-1]
    original = tiny_ddpm.scheduler
    tiny_ddpm.scheduler = make_scheduler("DDIM", original.config, timestep_spacing=spacing)
    try:
        out = tiny_ddpm(batch_size=1, generator=torch.Generator("cpu").manual_seed(3), num_inference_steps=5,
                        output_type="np").images
    finally:
        tiny_ddpm.scheduler = original
    theirs = (out * 255).round().astype(int)[0]
    assert np.abs(np.asarray(done.images[0]).astype(int) - theirs).max() <= 2
    plain = list(iter_unconditional(UnconditionalRequest(scheduler="DDIM", num_inference_steps=5, seed=3),
                                    pipe=tiny_ddpm))[-1]
    assert done.info["timestep_spacing"] == spacing
    assert not np.array_equal(np.asarray(plain.images[0]), np.asarray(done.images[0]))


BAD_VALUES = [
    (dict(guidance_rescale=1.5), "guidance rescale must be a number from 0 to 1; got 1.5"),
    (dict(guidance_rescale=-0.1), "guidance rescale must be a number from 0 to 1; got -0.1"),
    (dict(timestep_spacing="evenly"),
     "unknown timestep spacing 'evenly'; allowed: leading, linspace, trailing, '' (the model's own)"),
]


@pytest.mark.parametrize("kw, message", BAD_VALUES)
def test_bad_values_are_refused_naming_the_field(kw, message):
    with pytest.raises(InputError, match=exactly(message)) as info:
        Txt2ImgRequest("a", **kw)
    assert info.value.field == ("guidance rescale" if "guidance_rescale" in kw else "timestep spacing")


def test_unconditional_refuses_an_unknown_spacing():
    with pytest.raises(InputError, match=exactly(
            "unknown timestep spacing 'x'; allowed: leading, linspace, trailing, '' (the model's own)")):
        UnconditionalRequest(timestep_spacing="x")


def test_replay_reads_spacing_and_rescale_back_from_the_png(tiny_sd, tmp_path):
    from engine.records.replay import read_bundle

    request = Txt2ImgRequest(**{**KW, "num_inference_steps": 2}, timestep_spacing="trailing", guidance_rescale=0.7,
                             model="tiny")
    done = list(iter_saved("txt2img", iter_txt2img(request, pipe=tiny_sd), pipe=tiny_sd, outputs_dir=tmp_path))[-1]
    bundle = read_bundle(done.paths[0])
    assert (bundle.request.timestep_spacing, bundle.request.guidance_rescale) == ("trailing", 0.7)
    again = list(iter_txt2img(bundle.request, pipe=tiny_sd))[-1]
    assert np.array_equal(np.asarray(again.images[0]), np.asarray(done.images[0]))


# img2img (issue 25's leftover): the same two settings, through the loop Text to image shares (issue 23).
PHOTO = np.tile(np.linspace(0, 255, 64, dtype=np.uint8)[None, :, None], (48, 1, 3))  # a ramp at the run's 64x48
PHOTO[12:36, 16:48, 0] = 30  # and a block, so that the image has a shape to keep
I2I = dict(prompt="a handwritten digit seven", negative_prompt="blurry", strength=0.7, num_inference_steps=6,
           guidance_scale=6.0, seed=21, scheduler="DDIM")


def img2img_ours(pipe, **kw) -> np.ndarray:
    from engine.sampling.img2img import Img2ImgRequest, iter_img2img

    done = list(iter_img2img(Img2ImgRequest(PHOTO, width=64, height=48, **kw), pipe=pipe))[-1]
    return np.asarray(done.images[0]).astype(int)


def img2img_pipeline(pipe, *, timestep_spacing="", guidance_rescale=0.0, **kw) -> np.ndarray:
    """StableDiffusionImg2ImgPipeline on the same components, its scheduler built from_config(..., timestep_spacing=).
    It takes no guidance_rescale (diffusers 0.42): for phi > 0, a forward hook on the UNet applies diffusers'
    rescale_noise_cfg to the pipeline's guided noise, where StableDiffusionPipeline applies it."""
    from diffusers import StableDiffusionImg2ImgPipeline
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg
    from PIL import Image

    img2img = StableDiffusionImg2ImgPipeline(**pipe.components)
    img2img.set_progress_bar_config(disable=True)
    overrides = {"timestep_spacing": timestep_spacing} if timestep_spacing else {}
    img2img.scheduler = make_scheduler(kw["scheduler"], pipe.scheduler.config, **overrides)
    w = kw["guidance_scale"]

    def rescaled(unet, args, kwargs, output):
        uncond, text = output[0].chunk(2)
        guided = rescale_noise_cfg(uncond + w * (text - uncond), text, guidance_rescale=guidance_rescale)
        return (torch.cat([uncond, uncond + (guided - uncond) / w]),)

    hook = pipe.unet.register_forward_hook(rescaled, with_kwargs=True) if guidance_rescale else None
    try:
        out = img2img(kw["prompt"], image=Image.fromarray(PHOTO), strength=kw["strength"],
                      negative_prompt=kw["negative_prompt"], num_inference_steps=kw["num_inference_steps"],
                      guidance_scale=w, generator=torch.Generator("cpu").manual_seed(kw["seed"]),
                      output_type="np").images[0]
    finally:
        if hook is not None:
            hook.remove()
    return (out * 255).round().astype(int)


@pytest.mark.parametrize("spacing, phi", [("trailing", 0.7), ("linspace", 0.0), ("", 1.0)])
def test_img2img_with_spacing_and_guidance_rescale_matches_the_pipeline(tiny_sd, spacing, phi):
    mine = img2img_ours(tiny_sd, timestep_spacing=spacing, guidance_rescale=phi, **I2I)
    theirs = img2img_pipeline(tiny_sd, timestep_spacing=spacing, guidance_rescale=phi, **I2I)
    assert mine.shape == theirs.shape == (48, 64, 3)
    assert np.abs(mine - theirs).max() <= 2


def test_img2img_spacing_and_rescale_change_the_image(tiny_sd):
    """The comparison above can fail: each setting, left out of the reference, changes the image."""
    plain = img2img_pipeline(tiny_sd, **I2I)
    assert np.abs(img2img_ours(tiny_sd, timestep_spacing="trailing", **I2I) - plain).max() > 10
    assert np.abs(img2img_ours(tiny_sd, guidance_rescale=1.0, **I2I) - plain).max() > 10


@pytest.mark.parametrize("kw, message", BAD_VALUES)
def test_img2img_refuses_what_text_to_image_refuses(kw, message):
    from engine.sampling.img2img import Img2ImgRequest

    with pytest.raises(InputError, match=exactly(message)) as info:
        Img2ImgRequest(PHOTO, **kw)
    assert info.value.field == ("guidance rescale" if "guidance_rescale" in kw else "timestep spacing")


def test_img2img_png_and_code_box_carry_spacing_and_rescale(tiny_sd, tmp_path):
    """The PNG's parameters say both; the code box (the pipeline, its scheduler spaced, phi by a hook) gives the
    image; the start the page shows before a run is the spaced schedule's."""
    from engine.models.devices import resolve_device
    from engine.models.registry import ModelRegistry
    from engine.sampling.img2img import Img2ImgRequest, iter_img2img, start_timestep
    from engine.records.outputs import read_parameters
    from PIL import Image
    from tests.engine.test_img2img import run_snippet

    tiny_sd.save_pretrained(tmp_path / "m")
    pipe = ModelRegistry(tmp_path, resolve_device("cpu")).load("m", "txt2img")
    request = Img2ImgRequest(PHOTO, width=64, height=48, timestep_spacing="trailing", guidance_rescale=0.7, model="m",
                             **{**I2I, "num_inference_steps": 4, "strength": 0.5})
    events = list(iter_saved("img2img", iter_img2img(request, pipe=pipe), pipe=pipe, outputs_dir=tmp_path / "out"))
    started, done = events[0], events[-1]
    assert started.timesteps[0] == start_timestep("DDIM", pipe.scheduler.config, 4, 0.5, "trailing")[0] == 499
    assert start_timestep("DDIM", pipe.scheduler.config, 4, 0.5)[0] != 499  # the model's own spacing starts elsewhere
    parameters = read_parameters(done.paths[0])
    assert "CFG rescale: 0.7" in parameters and "Timestep spacing: trailing" in parameters
    assert "timestep_spacing='trailing'" in done.code and "guidance_rescale=0.7" in done.code
    Image.fromarray(PHOTO).save(tmp_path / "original.png")
    namespace = run_snippet(done.code, tmp_path)
    assert np.abs(np.asarray(namespace["image"]).astype(int) - np.asarray(done.images[0]).astype(int)).max() <= 2
