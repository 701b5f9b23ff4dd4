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


@pytest.mark.parametrize("kw, message", [
    (dict(guidance_rescale=1.5), "guidance rescale must be a number from 0 to 1; got 1.5"),
    (dict(guidance_rescale=-0.1), "guidance rescale must be a number from 0 to 1; got -0.1"),
    (dict(timestep_spacing="evenly"),
     "unknown timestep spacing 'evenly'; allowed: leading, linspace, trailing, '' (the model's own)"),
])
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
