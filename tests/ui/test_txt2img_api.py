"""/txt2img through gradio_client against a launched app."""

import json
import time

import pytest
from gradio_client import Client
from PIL import Image

from tests.helpers import wait_for_outputs

ARGS = dict(model="digits-sd", prompt="a handwritten digit seven", negative_prompt="blurry", steps=12,
            guidance_scale=7.5, scheduler="Euler a", seed=11, width=32, height=32)


def test_streams_previews_then_final_png_with_metadata(client):
    job = client.submit(**ARGS, api_name="/txt2img")
    updates = list(job)
    assert len(updates) >= 3  # Started, at least one preview, Done
    final = job.outputs()[-1]
    image_path, info = final[0], final[3]
    info = info if isinstance(info, dict) else json.loads(info)
    assert info["seed"] == 11 and info["steps"] == 12 and info["scheduler"] == "Euler a"
    with Image.open(image_path) as im:
        assert im.format == "PNG" and im.size == (32, 32)
        params = im.text["parameters"]
    assert params.startswith("a handwritten digit seven\nNegative prompt: blurry\n")
    assert "Steps: 12, Sampler: Euler a, CFG scale: 7.5, Seed: 11, Size: 32x32, Model: digits-sd" in params
    # a preview was streamed before the final image: some update carried an x0 image
    assert any(u[0] for u in updates[:-1])


def test_random_seed_is_shown(client):
    final = client.predict(**{**ARGS, "seed": -1, "steps": 2}, api_name="/txt2img")
    info = final[3] if isinstance(final[3], dict) else json.loads(final[3])
    assert isinstance(info["seed"], int) and info["seed"] >= 0


@pytest.mark.parametrize(
    "change, words",
    [
        (dict(width=60), "multiple of 8"),
        (dict(guidance_scale="NaN"), "float"),  # NaN cannot travel as JSON; the engine test covers float NaN
        (dict(scheduler="Bogus"), "not in the list of choices"),
        (dict(model="no-such-model"), "unknown model"),
        (dict(model="missing/folder/x"), "unknown model"),
        (dict(model="../etc"), "outside the models dir"),
        (dict(model="weights.ckpt"), "safetensors only"),
        (dict(steps=151), "151"),
    ],
)
def test_bad_input_is_a_clear_error_and_server_keeps_serving(client, change, words):
    with pytest.raises(Exception) as info:
        client.predict(**{**ARGS, **change}, api_name="/txt2img")
    assert words.lower() in str(info.value).lower()
    assert "Traceback" not in str(info.value)
    ok = client.predict(**{**ARGS, "steps": 1}, api_name="/txt2img")
    assert ok[0]


def test_empty_model_folder_is_refused(client, running_app):
    _, _, dirs = running_app
    (dirs / "models" / "empty").mkdir(exist_ok=True)
    with pytest.raises(Exception, match="model_index.json"):
        client.predict(**{**ARGS, "model": "empty"}, api_name="/txt2img")


def test_hub_id_offline_says_how_to_use_a_local_copy(client):
    with pytest.raises(Exception) as info:
        client.predict(**{**ARGS, "model": "stable-diffusion-v1-5/stable-diffusion-v1-5"}, api_name="/txt2img")
    message = str(info.value)
    assert "hub" in message.lower() and "--models-dir" in message


def test_stop_ends_run_and_next_run_starts(client, running_app):
    job = client.submit(**{**ARGS, "steps": 150, "width": 256, "height": 256}, api_name="/txt2img")
    assert len(wait_for_outputs(job, 2)) >= 2, "no preview arrived"
    job.cancel()
    time.sleep(1.0)
    partial = job.outputs()
    assert "done" not in str(partial[-1][2])
    start = time.time()
    final = client.predict(**{**ARGS, "steps": 2}, api_name="/txt2img")
    assert final[0] and time.time() - start < 30
