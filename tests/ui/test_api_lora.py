"""A LoRA through the API: /train_start with method "lora", its side-by-side grids and file, then /txt2img with
the LoRA at a scale; bad LoRA input refused with a message and nothing written."""

import re

import numpy as np
import pytest
from PIL import Image

from tests.helpers import as_dict
from tests.training_setups import make_captioned, train_status, wait_for_status

LORA_RUN = dict(dataset="api-captioned", resolution=32, batch_size=4, max_steps=400, learning_rate=1e-2,
                lr_warmup_steps=0, mixed_precision="no", ema=False, seed=0, run_name="api-lora", save_every=0,
                sample_every=4, first_sample_step=0, start_from="digits-sd", method="lora", lora_rank=4,
                lora_alpha=4.0, lora_layers="attention", lora_text_encoder=True,
                validation_prompts="a framed handwritten digit 7 | a handwritten digit 1")

pytestmark = pytest.mark.usefixtures("no_training_job_left")  # each test ends with no training job


@pytest.fixture(scope="module")
def captioned(running_app):
    make_captioned(running_app[2] / "data" / "api-captioned")
    return "api-captioned"


def test_lora_run_then_text_to_image_with_it(client, running_app, captioned):
    bench = running_app[1]
    models_dir = bench.folders.models_dir
    before = set(bench.list_loras("digits-sd"))  # the app is shared: other tests may have published LoRAs
    # 1. Start a LoRA run on digits-sd; its grids show the prompts at scale 0 and at scale 1, side by side.
    started = as_dict(client.predict(**LORA_RUN, api_name="/train_start"))
    assert started["state"] == "running" and started["method"] == "lora"
    assert started["message"] == "16 captioned images from 'api-captioned'; converted 16 grey/RGBA image(s) to RGB"
    s, grid = wait_for_status(client, lambda s, g: g is not None, timeout=180, what="a side-by-side grid")
    assert s["grid_caption"].startswith("left: LoRA scale 0 (the base model) · right: LoRA scale 1")
    with Image.open(grid) as im:
        pixels = np.asarray(im.convert("RGB"))
    panel = 4 * 96 + 3 * 6  # a side: a row of 4 seeds (16 sample images over 2 prompts and 2 sides), 96 px tiles
    assert pixels.shape == (2 * 96 + 6, 2 * panel + 40, 3)  # a row a prompt; the panels 40 px apart
    assert (pixels[:, panel:panel + 40] == (31, 41, 55)).all()
    # 2. Stop: the LoRA is published under the models dir and listed for digits-sd.
    stopped = as_dict(client.predict(api_name="/train_stop"))
    # The LoRA's path as the page shows paths: under the models dir's name, never the server's absolute folders.
    assert stopped["state"] == "stopped" and stopped["lora"] == "models/loras/api-lora.safetensors"
    assert (models_dir / "loras" / "api-lora.safetensors").is_file()
    assert set(bench.list_loras("digits-sd")) - before == {"api-lora"}

    # 3. /txt2img with the LoRA at 0.5: the PNG and the parameters say it; at 0 it is the model alone.
    args = dict(model="digits-sd", prompt="a framed handwritten digit 7", negative_prompt="", steps=8,
                guidance_scale=7.5, scheduler="DPM++ 2M Karras", seed=3, width=32, height=32)
    final = client.predict(**args, lora="api-lora", lora_scale=0.5, api_name="/txt2img")
    info = as_dict(final[3])
    assert info["lora"] == "api-lora" and info["lora_scale"] == 0.5
    with Image.open(final[0]) as im:
        assert "LoRA: api-lora:0.5" in im.text["parameters"]
        with_lora = np.asarray(im.convert("RGB")).astype(int)
    assert "pipe.load_lora_weights(" in final[4] and "cross_attention_kwargs={'scale': 0.5}" in final[4]
    plain = client.predict(**args, api_name="/txt2img")
    at_zero = client.predict(**args, lora="api-lora", lora_scale=0.0, api_name="/txt2img")
    with Image.open(plain[0]) as a, Image.open(at_zero[0]) as b:
        plain_pixels, zero_pixels = (np.asarray(x.convert("RGB")).astype(int) for x in (a, b))
    assert np.abs(plain_pixels - zero_pixels).max() <= 2
    assert np.abs(plain_pixels - with_lora).max() > 10

    # 4. A LoRA that is not there is refused, naming the ones that are (other tests of the shared app add theirs).
    there = sorted(p.stem for p in (models_dir / "loras").glob("*.safetensors"))
    assert "api-lora" in there
    with pytest.raises(Exception, match=re.escape(
            f"no LoRA 'nope' in {models_dir / 'loras'} (found: {', '.join(there)})")):
        client.predict(**args, lora="nope", api_name="/txt2img")


@pytest.mark.parametrize("change, message", [
    (dict(lora_rank=0), "LoRA rank must be a whole number from 1 to 1024; got 0"),
    (dict(lora_rank=2000), "LoRA rank must be a whole number from 1 to 1024; got 2000"),
    (dict(start_from="digits-ddpm"), "cannot start from 'digits-ddpm': it is a DDPMPipeline; a LoRA run needs a "
                                     "text-to-image model (StableDiffusionPipeline)"),
    (dict(dataset="digits"), "'digits' has class labels, not captions"),
])
def test_bad_lora_requests_are_refused_and_nothing_is_written(client, running_app, captioned, change, message):
    models_dir = running_app[1].folders.models_dir
    before = sorted(p.name for p in models_dir.rglob("*"))
    with pytest.raises(Exception, match=re.escape(message)):
        client.predict(**{**LORA_RUN, "run_name": "api-lora-refused", **change}, api_name="/train_start")
    assert sorted(p.name for p in models_dir.rglob("*")) == before
    assert train_status(client)[0]["state"] in ("idle", "stopped", "finished")
