"""/txt2img and /ddpm take timestep_spacing (and /txt2img guidance_rescale): equal to diffusers' pipelines on the
built-ins, written in the PNG, and bad values said clearly while the server keeps serving."""

import json
import re

import numpy as np
import pytest
import torch
from diffusers import DDPMPipeline, StableDiffusionPipeline
from PIL import Image

from engine.models.registry import BUILTIN_DIR
from engine.records.pnginfo import png_info
from engine.sampling.schedulers import make_scheduler

ARGS = dict(model="digits-sd", prompt="a handwritten digit seven", negative_prompt="blurry", steps=6,
            guidance_scale=7.5, scheduler="DDIM", seed=11, width=32, height=32)


def exactly(message: str) -> str:
    return f"^{re.escape(message)}$"


def pixels(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).astype(int)


def test_txt2img_with_spacing_and_rescale_equals_the_pipeline_and_says_so_in_the_png(client):
    final = client.predict(**ARGS, timestep_spacing="trailing", guidance_rescale=0.7, api_name="/txt2img")
    info = final[3] if isinstance(final[3], dict) else json.loads(final[3])
    assert (info["timestep_spacing"], info["guidance_rescale"]) == ("trailing", 0.7)

    pipe = StableDiffusionPipeline.from_pretrained(BUILTIN_DIR / "digits-sd", local_files_only=True,
                                                   safety_checker=None, requires_safety_checker=False)
    pipe.scheduler = make_scheduler("DDIM", pipe.scheduler.config, timestep_spacing="trailing")
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(ARGS["prompt"], negative_prompt=ARGS["negative_prompt"], num_inference_steps=6, guidance_scale=7.5,
                  guidance_rescale=0.7, width=32, height=32, generator=torch.Generator("cpu").manual_seed(11),
                  output_type="np").images[0]
    assert np.abs(pixels(final[0]) - (theirs * 255).round().astype(int)).max() <= 2

    found = png_info(final[0])  # what PNG Info and replay read back
    assert found.settings["timestep_spacing"] == "trailing" and found.settings["guidance_rescale"] == 0.7
    with Image.open(final[0]) as im:
        assert "CFG rescale: 0.7, Timestep spacing: trailing" in im.text["parameters"]


def test_ddpm_with_trailing_spacing_equals_ddpm_pipeline(client):
    grid, *_, info = client.predict(model="digits-ddpm", scheduler="DDIM", steps=5, seed=2, batch_size=1,
                                    timestep_spacing="trailing", api_name="/ddpm")[:5]
    pipe = DDPMPipeline.from_pretrained(BUILTIN_DIR / "digits-ddpm", local_files_only=True)
    pipe.scheduler = make_scheduler("DDIM", pipe.scheduler.config, timestep_spacing="trailing")
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(batch_size=1, generator=torch.Generator("cpu").manual_seed(2), num_inference_steps=5,
                  output_type="np").images[0]
    assert np.abs(pixels(grid) - (theirs * 255).round().astype(int)).max() <= 2


@pytest.mark.parametrize("endpoint, change, pattern", [
    ("/txt2img", dict(guidance_rescale=1.5), exactly("guidance rescale must be a number from 0 to 1; got 1.5")),
    ("/txt2img", dict(timestep_spacing="evenly"),
     exactly("unknown timestep spacing 'evenly'; allowed: leading, linspace, trailing, '' (the model's own)")),
    ("/ddpm", dict(timestep_spacing="evenly"),
     exactly("unknown timestep spacing 'evenly'; allowed: leading, linspace, trailing, '' (the model's own)")),
])
def test_bad_values_are_a_clear_error_and_the_server_keeps_serving(client, endpoint, change, pattern):
    base = ARGS if endpoint == "/txt2img" else dict(model="digits-ddpm", scheduler="DDIM", steps=2, seed=1,
                                                     batch_size=1)
    with pytest.raises(Exception, match=pattern) as info:
        client.predict(**{**base, **change}, api_name=endpoint)
    assert "Traceback" not in str(info.value)
    assert client.predict(**{**ARGS, "steps": 1}, api_name="/txt2img")[0]


COMPARE = dict(model="digits-sd", prompt="a seven", negative_prompt="", seed=3, steps=3, guidance_scale=7.5,
               scheduler="DDIM", width=32, height=32)


def test_compare_along_spacing_gives_text_to_images_columns(client):
    finals, _, info = client.predict(**COMPARE, axis="timestep spacing", values="leading, trailing",
                                     guidance_rescale=0.7, api_name="/compare")
    assert info["values"] == ["leading", "trailing"] and len(finals) == 2
    alone = client.predict(**{k: v for k, v in COMPARE.items()}, timestep_spacing="trailing", guidance_rescale=0.7,
                           api_name="/txt2img")
    assert np.array_equal(pixels(finals[1]["image"]), pixels(alone[0]))


def test_compare_refuses_a_guidance_rescale_value_out_of_range(client):
    message = ("guidance rescale value 2.0 is not one this axis takes: guidance rescale must be a number from 0 to 1; "
               "got 2.0")
    with pytest.raises(Exception, match=exactly(message)):
        client.predict(**COMPARE, axis="guidance rescale", values="0, 2", api_name="/compare")


@pytest.mark.parametrize("change, message", [
    (dict(values="0, 1.5", seed_b=4),
     "seed blend value 1.5 is not one this axis takes: seed blend must be a number from 0 to 1; got 1.5"),
    (dict(values="0, 0.5", seed_b=4, model="digits-ddpm"),
     "seed blend takes a text-to-image model: an unconditional run's noise is a batch of images, not blended here"),
    (dict(values="0, 0.5", seed_b=-1), f"seed blend needs a second seed (seed_b) from 0 to {2**63 - 1}; got -1"),
])
def test_bad_seed_blends_are_a_clear_error_and_the_server_keeps_serving(client, change, message):
    with pytest.raises(Exception, match=exactly(message)):
        client.predict(**{**COMPARE, "axis": "seed blend", **change}, api_name="/compare")
    assert client.predict(**{**ARGS, "steps": 1}, api_name="/txt2img")[0]
