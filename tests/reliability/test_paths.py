"""Nothing a caller reads holds the server's absolute paths: every endpoint's JSON, text and error messages name
the app's folders relative (``outputs/txt2img/...``, ``models/<run>``). The images themselves still arrive, and
the files named exist where the names say."""

import json
from pathlib import Path

import numpy as np
import pytest
from gradio_client import handle_file
from PIL import Image

from tests.helpers import wait_until
from tests.training_setups import train_status

TXT2IMG = dict(model="digits-sd", prompt="a handwritten digit seven", negative_prompt="", steps=2,
               guidance_scale=7.5, scheduler="DDIM", seed=1, width=32, height=32)
DDPM = dict(scheduler="DDIM", steps=2, seed=1, batch_size=2)
NOISE = dict(image=None, timesteps="0, 500", beta_schedule="linear", num_train_timesteps=1000, seed=0,
             resolution=32)
TRAIN = dict(dataset="digits", resolution=16, batch_size=8, max_steps=4, learning_rate=1e-3, lr_warmup_steps=0,
             mixed_precision="no", ema=False, seed=0, run_name="paths-run", save_every=0, sample_every=0,
             preset="tiny", first_sample_step=0)


@pytest.fixture(scope="module")
def models(running_app):
    """Models in the models dir whose code snippets and load errors would name their folders."""
    from engine.testing.tiny import tiny_ddpm_pipeline

    root = running_app[2] / "models"
    tiny_ddpm_pipeline(0).save_pretrained(root / "paths-ddpm")
    broken = root / "paths-broken"
    tiny_ddpm_pipeline(0).save_pretrained(broken)
    (broken / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"not safetensors")
    no_scheduler = root / "paths-no-scheduler"
    no_scheduler.mkdir(exist_ok=True)
    (no_scheduler / "model_index.json").write_text(json.dumps({"_class_name": "DDPMPipeline"}))
    (root / "paths-incomplete").mkdir(exist_ok=True)  # a run folder with no checkpoint in it
    return root


def answer(call):
    """What the caller reads: the outputs, or the error's message."""
    try:
        return call()
    except Exception as exc:  # gradio_client raises the server's message as an AppError
        return f"error: {exc}"


def test_no_endpoint_shows_an_absolute_path_of_the_apps_folders(client, running_app, models, tmp_path):
    """The info JSON's ``file``, Done's paths, load errors and the Training status's checkpoint used to name
    /tmp/.../outputs/txt2img/2026-.../00001-1.png and the like."""
    dirs = running_app[2]
    roots = {str(dirs), str(dirs.resolve())}
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    image = tmp_path / "seven.png"
    Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(image)
    seen = {}

    # 1. Text to image: a run, and the model errors that name a place.
    seen["txt2img"] = answer(lambda: client.predict(**TXT2IMG, api_name="/txt2img"))
    for model in ("no-such-model", "../outside", "paths-incomplete", "paths-broken"):
        seen[f"txt2img {model}"] = answer(lambda: client.predict(**{**TXT2IMG, "model": model}, api_name="/txt2img"))
    # 2. Unconditional: a batch from a folder (its snippet loads the folder), a model that fails to load.
    seen["ddpm"] = answer(lambda: client.predict(model="paths-ddpm", **DDPM, api_name="/ddpm"))
    seen["ddpm broken"] = answer(lambda: client.predict(model="paths-broken", **DDPM, api_name="/ddpm"))
    # 3. Noise: an upload PIL cannot read, a model without a scheduler config.
    seen["noise upload"] = answer(lambda: client.predict(**{**NOISE, "image": handle_file(str(notes))},
                                                         api_name="/add_noise"))
    seen["noise model"] = answer(lambda: client.predict(**NOISE, model="paths-no-scheduler", api_name="/add_noise"))
    # 4. Training: an upload, refused starts, a run to its end, its status and Stop.
    seen["upload"] = answer(lambda: client.predict(files=[handle_file(str(image))], folder_name="paths-data",
                                                   api_name="/train_upload"))
    seen["upload refused"] = answer(lambda: client.predict(files=[handle_file(str(notes))], folder_name="paths-x",
                                                           api_name="/train_upload"))
    for change in (dict(dataset="../outside"), dict(dataset="no-such-folder"), dict(run_name="paths-incomplete"),
                   dict(run_name="paths-incomplete", resume=True)):
        seen[f"train_start {change}"] = answer(lambda: client.predict(**{**TRAIN, **change}, api_name="/train_start"))
    seen["train_start"] = answer(lambda: client.predict(**TRAIN, api_name="/train_start"))
    wait_until(lambda: train_status(client)[0]["state"] not in ("starting", "running", "stopping"), timeout=300,
               what="the training run's end")
    seen["train_status"] = answer(lambda: client.predict(api_name="/train_status"))
    seen["train_stop"] = answer(lambda: client.predict(api_name="/train_stop"))

    # Nothing read names the app's folders absolutely ...
    for what, value in seen.items():
        text = json.dumps(value, default=str)
        assert not any(root in text for root in roots), f"{what}: {text}"
    # ... and the calls did what they should, naming files relative to the folders they are in.
    info = seen["txt2img"][3]
    assert info["file"].startswith("outputs/txt2img/") and (dirs / info["file"]).is_file()
    ddpm_info, code = seen["ddpm"][4], seen["ddpm"][5]
    assert [f.startswith("outputs/unconditional/") for f in ddpm_info["files"]] == [True, True]
    assert (dirs / ddpm_info["grid"]).is_file() and "path = 'models/paths-ddpm'" in code
    assert seen["ddpm broken"].startswith("error: could not load 'paths-broken': ")
    assert "models/paths-broken" in seen["ddpm broken"]  # diffusers' message, its path relative
    assert seen["txt2img paths-incomplete"] == "error: folder 'paths-incomplete' has no model_index.json; a " \
        "diffusers-format folder holds model_index.json plus unet/, scheduler/ (and vae/, text_encoder/, " \
        "tokenizer/ for text to image)"
    assert seen["txt2img ../outside"] == ("error: '../outside' is outside the models dir (--models-dir); only "
                                          "models under it can be loaded")
    assert seen["noise upload"] == ("error: 'notes.txt' is not an image PIL can read (PNG, JPEG, WebP, ...): "
                                    "cannot identify image file 'notes.txt'")
    assert seen["noise model"].startswith("error: no readable scheduler config for 'models/paths-no-scheduler': ")
    assert seen["train_start {'run_name': 'paths-incomplete'}"] == (
        "error: a run or model named 'paths-incomplete' already exists in the models dir; resume it or pick "
        "another run name")
    assert seen["train_start {'run_name': 'paths-incomplete', 'resume': True}"] == (
        "error: run 'paths-incomplete' has no complete checkpoint to resume; start a new run instead")
    assert seen["train_start"]["run_dir"] == "models/paths-run"
    final = seen["train_status"][0]
    assert (final["state"], final["checkpoint"], final["run_dir"]) == ("finished", "models/paths-run",
                                                                        "models/paths-run")
    assert (dirs / final["checkpoint"] / "model_index.json").is_file()
    assert Path(seen["txt2img"][0]).is_file()  # the image itself still comes, downloaded by the client
