"""/compare and /img2img through gradio_client against a launched app: the results, and bad input refused with
the server still serving."""

import re

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionImg2ImgPipeline
from gradio_client import handle_file
from PIL import Image

from engine.images import crop_and_resize
from engine.sampling.schedulers import SCHEDULERS, make_scheduler
from tests.helpers import as_dict

COMPARE = dict(model="digits-sd", prompt="a handwritten digit seven", negative_prompt="", seed=9, axis="scheduler",
               values=["DDIM", "Euler a", "DPM++ 2M Karras"], steps=8, guidance_scale=7.5,
               scheduler="DPM++ 2M Karras", width=32, height=32)
TXT2IMG = dict(model="digits-sd", prompt="a handwritten digit seven", negative_prompt="", steps=8, guidance_scale=7.5,
               scheduler="DDIM", seed=9, width=32, height=32)


def pixels(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).astype(int)


def exactly(message: str) -> str:
    return f"^{re.escape(message)}$"


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    from sklearn.datasets import load_sample_image

    path = tmp_path_factory.mktemp("img2img") / "flower.png"
    Image.fromarray(load_sample_image("flower.jpg")).save(path)
    return path


def test_compare_columns_equal_txt2img_alone_pixel_for_pixel(client):
    job = client.submit(**COMPARE, api_name="/compare")
    updates = list(job)
    assert len(updates) >= 5  # the grid fills in: started, previews and each column's end
    assert any(0 < len(u[0] or []) < 3 for u in updates[:-1]), "the grid did not fill in column by column"
    gallery, progress, info = job.outputs()[-1]
    info = as_dict(info)
    assert [item["caption"] for item in gallery] == COMPARE["values"]  # values order
    assert [c["value"] for c in info["columns"]] == COMPARE["values"] and info["seed"] == 9
    assert all(c["seconds_per_step"] > 0 and c["steps"] == 8 for c in info["columns"])
    for value, item in zip(COMPARE["values"], gallery):
        alone = client.predict(**{**TXT2IMG, "scheduler": value}, api_name="/txt2img")
        assert np.array_equal(pixels(item["image"]), pixels(alone[0])), value
    assert not np.array_equal(pixels(gallery[0]["image"]), pixels(gallery[1]["image"]))


def test_compare_steps_on_an_unconditional_model(client):
    args = dict(COMPARE, model="digits-ddpm", axis="steps", values=["5", "10"], scheduler="DDIM")
    gallery, _, info = client.predict(**args, api_name="/compare")
    assert [c["steps"] for c in as_dict(info)["columns"]] == [5, 10]
    for steps, item in zip((5, 10), gallery):
        alone = client.predict(model="digits-ddpm", scheduler="DDIM", steps=steps, seed=9, batch_size=1,
                               api_name="/ddpm")
        assert np.array_equal(pixels(item["image"]), pixels(alone[0]))


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(values=["DDIM", "Bogus"]), "scheduler value 'Bogus' is not one this axis takes: unknown scheduler "
                                         f"'Bogus'; allowed: {', '.join(SCHEDULERS)}"),
        (dict(values=["DDIM", "Euler", "PNDM", "LMS", "Heun", "UniPC", "DDPM"]),
         "give 2 to 6 values to compare; got 7"),
        (dict(axis="steps", values=["10", "many"]), "steps values must be whole numbers; got 'many'"),
        (dict(axis="model", values=["digits-sd", "digits-ddpm"]),
         "'digits-ddpm' is an unconditional model, but 'digits-sd' is a text-to-image one; the models compared must "
         "be of one kind"),
        (dict(model="digits-ddpm", axis="guidance scale", values=["1", "5"]),
         "unconditional models take no guidance scale: compare schedulers, steps or models"),
    ],
)
def test_compare_refuses_bad_input_and_keeps_serving(client, change, message):
    with pytest.raises(Exception, match=exactly(message)):
        client.predict(**{**COMPARE, **change}, api_name="/compare")
    assert client.predict(**{**COMPARE, "values": ["DDIM", "Euler"], "steps": 2}, api_name="/compare")[0]


def img2img_args(photo, **change):
    return dict(dict(model="digits-sd", image=handle_file(str(photo)), prompt="a handwritten digit three",
                     negative_prompt="", strength=0.6, steps=20, guidance_scale=7.5, scheduler="DPM++ 2M Karras",
                     seed=12), **change)


def img2img_pipeline(running_app, image, **kw) -> np.ndarray:
    """diffusers' own pipeline on the built-in digits-sd's components, given ``image`` as it is."""
    model = running_app[1].registry.load("digits-sd", "txt2img")
    pipe = StableDiffusionImg2ImgPipeline(**model.components)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = make_scheduler(kw.pop("scheduler", "DPM++ 2M Karras"), model.scheduler.config)
    out = pipe("a handwritten digit three", image=image, strength=0.6, num_inference_steps=kw.pop("steps", 20),
               guidance_scale=7.5, generator=torch.Generator("cpu").manual_seed(12), output_type="np").images[0]
    return (out * 255).round().astype(int)


def test_img2img_streams_then_the_png_equal_to_the_img2img_pipeline(client, running_app, photo):
    """No size given: the photo's 640x427 aspect at about digits-sd's 32x32 pixels (39.2 x 26.1 -> 40x24),
    stretched there (A1111's default "Just resize")."""
    job = client.submit(**img2img_args(photo), api_name="/img2img")
    updates = list(job)
    assert any(u[0] for u in updates[:-1]), "no x0 preview was streamed before the result"
    final = job.outputs()[-1]
    info = as_dict(final[3])
    start = running_app[1].img2img_start("digits-sd", "DPM++ 2M Karras", 20, 0.6)
    assert info["start_timestep"] == start["timestep"] and info["steps_run"] == start["steps_run"] == 12
    with Image.open(final[0]) as im:
        assert im.format == "PNG" and im.size == (40, 24)
        params = im.text["parameters"]
    assert params.startswith("a handwritten digit three\n")
    assert params.splitlines()[1] == ("Steps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7.5, Seed: 12, Size: 40x24, "
                                      "Model: digits-sd, Denoising strength: 0.6, Resize mode: Just resize")
    assert info["size_from"] == "the image's 640x427 aspect at about the model's 32x32 pixels"
    # diffusers' own pipeline on the built-in's components, given the image stretched to that size, within 2/255
    with Image.open(photo) as original:
        theirs = img2img_pipeline(running_app, original.convert("RGB").resize((40, 24), Image.LANCZOS))
    assert np.abs(pixels(final[0]) - theirs).max() <= 2
    assert "StableDiffusionImg2ImgPipeline" in final[4]


def test_img2img_takes_a_size_and_a_resize_mode(client, running_app, photo):
    final = client.predict(**img2img_args(photo, width=24, height=40, resize_mode="Crop and resize", steps=10),
                           api_name="/img2img")
    info = as_dict(final[3])
    assert (info["width"], info["height"], info["resize_mode"]) == (24, 40, "Crop and resize")
    with Image.open(photo) as original:
        theirs = img2img_pipeline(running_app, crop_and_resize(original.convert("RGB"), 24, 40), steps=10)
    assert pixels(final[0]).shape == (40, 24, 3)
    assert np.abs(pixels(final[0]) - theirs).max() <= 2
    assert "def crop_and_resize(" in final[4] and "crop_and_resize(Image.open('original.png')" in final[4]


def test_img2img_takes_timestep_spacing_and_guidance_rescale(client, running_app, photo):
    """/img2img passes both to the run (its image is the engine's for that request; the start line's t is the spaced
    schedule's); the PNG says them; a phi outside 0 to 1 gets the engine's message and the server keeps serving."""
    from engine.sampling.img2img import Img2ImgRequest

    args = img2img_args(photo, scheduler="DDIM", steps=10, timestep_spacing="trailing", guidance_rescale=0.7)
    final = client.predict(**args, api_name="/img2img")
    info = as_dict(final[3])
    assert (info["timestep_spacing"], info["guidance_rescale"]) == ("trailing", 0.7)
    bench = running_app[1]
    spaced = bench.img2img_start("digits-sd", "DDIM", 10, 0.6, "trailing")["timestep"]
    assert info["start_timestep"] == spaced != bench.img2img_start("digits-sd", "DDIM", 10, 0.6)["timestep"]
    with Image.open(final[0]) as im:
        params = im.text["parameters"]
    assert "CFG rescale: 0.7" in params and "Timestep spacing: trailing" in params
    with Image.open(photo) as original:
        request = Img2ImgRequest(original.convert("RGB"), prompt=args["prompt"], strength=0.6, num_inference_steps=10,
                                 scheduler="DDIM", seed=12, model="digits-sd", timestep_spacing="trailing",
                                 guidance_rescale=0.7)
    alone = list(bench.iter_img2img(request))[-1]
    assert np.array_equal(pixels(final[0]), np.asarray(alone.images[0]).astype(int))
    with pytest.raises(Exception, match=exactly("guidance rescale must be a number from 0 to 1; got 1.5")):
        client.predict(**img2img_args(photo, guidance_rescale=1.5), api_name="/img2img")
    assert client.predict(**img2img_args(photo, steps=4), api_name="/img2img")[0]


def test_img2img_on_an_unconditional_model_is_sdedit(client, photo):
    final = client.predict(**img2img_args(photo, model="digits-ddpm", scheduler="DDIM", strength=0.4),
                           api_name="/img2img")
    info = as_dict(final[3])
    assert info["steps_run"] == 8 and info["start_timestep"] < 500 and "prompt" not in info
    assert info["size_from"] == "the unconditional model's fixed size (SDEdit takes no other)"
    assert "scheduler.add_noise(x0, noise, timesteps[:1])" in final[4]
    with Image.open(final[0]) as im:  # the non-square photo, at the model's own 32x32
        assert im.size == (32, 32) and "Denoising strength: 0.4, Resize mode: Just resize" in im.text["parameters"]


def test_img2img_refuses_bad_input_and_keeps_serving(client, running_app, photo, tmp_path):
    notes = tmp_path / "notes.png"
    notes.write_text("not an image")
    odd = running_app[2] / "models" / "odd-pipeline"
    odd.mkdir()
    (odd / "model_index.json").write_text('{"_class_name": "StableDiffusionXLPipeline"}')
    try:
        cases = [
            (dict(strength=0), exactly("strength must be a number above 0 and at most 1; got 0")),
            (dict(strength=1.5), exactly("Value 1.5 is greater than maximum value 1.0.")),  # the slider's bound
            (dict(strength=0.02), exactly("strength 0.02 of 20 steps runs no step (int(20 x 0.02) = 0); raise the "
                                          "strength to at least 0.05 or the steps")),
            # the image box refuses a file that is not an image before the engine sees it; gradio names the file
            (dict(image=handle_file(str(notes))), re.escape("UnidentifiedImageError: cannot identify image file '")
             + r"[^']*/notes\.png'$"),
            (dict(model="odd-pipeline"), exactly("'odd-pipeline' is a StableDiffusionXLPipeline, which no loop here "
                                                 "runs; supported: StableDiffusionPipeline, DDPMPipeline, "
                                                 "DDIMPipeline, PNDMPipeline")),
            (dict(model="digits-ddpm", scheduler="Heun"),
             exactly("unknown scheduler 'Heun'; allowed: DDIM, DDPM, DPM++ 2M, UniPC, PNDM, Euler")),
            (dict(width=60, height=40), exactly("width must be a multiple of 8 (8 to 2048); got 60")),
            (dict(height=4), exactly("height must be a whole number from 8 to 2048; got 4")),
            (dict(model="digits-ddpm", scheduler="DDIM", width=64, height=48),
             exactly("SDEdit runs an unconditional model at its fixed size, 32x32 here; width and height are for "
                     "text-to-image models: leave them out; got width 64, height 48")),
        ]
        for change, pattern in cases:
            with pytest.raises(Exception, match=pattern):
                client.predict(**img2img_args(photo, **change), api_name="/img2img")
    finally:
        (odd / "model_index.json").unlink()
        odd.rmdir()
    assert client.predict(**img2img_args(photo, steps=4), api_name="/img2img")[0]
