"""/train_start, /train_status, /train_stop and /train_upload through gradio_client against a launched app."""

import json
import math
import re

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMPipeline
from gradio_client import handle_file
from PIL import Image

from tests.helpers import as_dict
from tests.training_setups import train_status, wait_for_status, write_digits

# Tiny and fast on one CPU core: about 3-20 steps a second, depending on how often it samples.
RUN = dict(dataset="digits", resolution=16, batch_size=8, max_steps=400, learning_rate=1e-3, lr_warmup_steps=5,
           mixed_precision="no", ema=False, seed=0, run_name="", save_every=0, sample_every=10, preset="tiny",
           first_sample_step=0)
GAP_COLOUR = (229, 231, 235)

pytestmark = pytest.mark.usefixtures("no_training_job_left")  # each test ends with no training job


def test_train_watch_stop_then_sample_the_checkpoint(client, running_app):
    _, bench, _ = running_app
    started = as_dict(client.predict(**{**RUN, "run_name": "api-digits"}, api_name="/train_start"))
    assert started["state"] == "running" and started["run_name"] == "api-digits" and started["total"] == 400
    assert "1797 images from 'digits'" in started["message"]

    # 1. The status advances: steps, a loss history, then a sample grid; it answers while the run goes on.
    first, _ = wait_for_status(client, lambda s, g: s["step"] >= 10, what="a first loss report")
    later, grid = wait_for_status(client, lambda s, g: g is not None and s["step"] > first["step"],
                                  what="a sample grid and more steps")
    assert len(later["losses"]) == later["step"] and len(later["smoothed"]) == later["step"]
    assert all(isinstance(x, float) and math.isfinite(x) and x > 0 for x in later["losses"])
    assert later["lr"] > 0 and later["steps_per_sec"] > 0 and later["eta"] > 0
    assert later["grid_step"] >= 10 and later["grid_step"] % 10 == 0
    with Image.open(grid) as im:
        assert im.format == "PNG" and im.size == (536, 536)  # 4x4 samples of 16 px shown at 128 px, 8 px gaps
        pixels = np.asarray(im.convert("RGB"))
    for k in range(1, 4):  # the gaps between rows and between columns are the gap colour all along
        start = k * 136 - 8
        assert (pixels[start:start + 8] == GAP_COLOUR).all() and (pixels[:, start:start + 8] == GAP_COLOUR).all()
    assert later["hint"].startswith("no measured figure for these settings; at the 'quick' recipe digits need about")

    # 2. A second Start while it runs is refused with a clear message; the first goes on.
    with pytest.raises(Exception, match="a training job is running"):
        client.predict(**{**RUN, "run_name": "api-second"}, api_name="/train_start")
    assert train_status(client)[0]["state"] == "running"
    assert not (bench.folders.models_dir / "api-second").exists()

    # 3. Stop saves a checkpoint and ends the job.
    stopped = as_dict(client.predict(api_name="/train_stop"))
    assert stopped["state"] == "stopped" and 10 <= stopped["step"] < 400
    assert stopped["checkpoint_step"] == stopped["step"]
    assert stopped["checkpoint"] == "models/api-digits"  # shown relative to the server's folders
    path = bench.folders.models_dir / "api-digits"

    # 4. The checkpoint is a DDPMPipeline, listed among the unconditional models, and /ddpm samples from it.
    pipe = DDPMPipeline.from_pretrained(path, local_files_only=True)
    assert pipe.unet.config.sample_size == 16 and pipe.unet.config.in_channels == 1
    assert "api-digits" in bench.list_models("unconditional")
    final = client.predict(model="api-digits", scheduler="DDIM", steps=4, seed=1, batch_size=1, api_name="/ddpm")
    with Image.open(final[0]) as im:
        assert im.size == (16, 16)
        ours = np.asarray(im.convert("L")).astype(int)
    ddim = DDPMPipeline(unet=pipe.unet, scheduler=DDIMScheduler.from_config(pipe.scheduler.config))
    out = ddim(batch_size=1, num_inference_steps=4, generator=torch.Generator("cpu").manual_seed(1),
               output_type="np").images  # (1, 16, 16, 1)
    assert np.abs(ours - (out[0, ..., 0] * 255).round().astype(int)).max() <= 2  # the page sampled this checkpoint


@pytest.fixture(scope="module")
def digits32(running_app):
    """``api-digits32``: 16 of the digits as grey 32 px PNGs, for fine-tuning digits-ddpm."""
    return write_digits(running_app[2] / "data" / "api-digits32", 16)


def test_fine_tune_from_a_built_in_with_bucket_and_lr_charts(client, running_app, digits32):
    bench = running_app[1]
    tune = {**RUN, "dataset": digits32, "resolution": 32, "batch_size": 4, "max_steps": 6, "lr_warmup_steps": 2,
            "sample_every": 0, "run_name": "api-tuned"}
    # 1. At another resolution than the model's: refused with the reason, nothing written.
    with pytest.raises(Exception, match=re.escape("resolution 16 differs from 'digits-ddpm''s 32 px")):
        client.predict(**{**tune, "resolution": 16}, start_from="digits-ddpm", api_name="/train_start")
    assert not (bench.folders.models_dir / "api-tuned").exists()

    # 2. At its resolution: the loss starts where digits-ddpm's is (a new UNet's starts near 1).
    client.predict(**tune, start_from="digits-ddpm", api_name="/train_start")
    s = bench.training.wait(120)
    assert (s.state, s.step) == ("finished", 6), s.message
    full, _ = train_status(client)
    assert max(full["losses"][:3]) < 0.2, full["losses"]
    # 3. The history the charts draw: every step's LR, the loss by timestep bucket at every report.
    assert len(full["lrs"]) == 6 and full["lrs"][0] == 0.0 and full["lrs"][1] == pytest.approx(5e-4)
    buckets = full["bucket_loss"]
    assert buckets["edges"] == list(range(0, 1001, 100)) and len(buckets["steps"]) == len(buckets["values"]) >= 1
    assert all(len(row) == 10 for row in buckets["values"])
    assert any(v is not None and v > 0 for row in buckets["values"] for v in row)
    # 4. The checkpoint is in the Unconditional tab's list, with digits-ddpm's scheduler config.
    assert "api-tuned" in bench.list_models("unconditional")
    saved = json.loads((bench.folders.models_dir / "api-tuned" / "scheduler" / "scheduler_config.json").read_text())
    assert saved["clip_sample"] is True and saved["variance_type"] == "fixed_small"


def test_resume_continues_from_the_checkpoint(client, running_app):
    client.predict(**{**RUN, "run_name": "api-resume", "sample_every": 0}, api_name="/train_start")
    wait_for_status(client, lambda s, g: s["step"] >= 10, what="a first loss report")
    stopped = as_dict(client.predict(api_name="/train_stop"))
    step = stopped["step"]
    # The form's other settings are ignored on resume (the run keeps its own); run control may change.
    resumed = as_dict(client.predict(**{**RUN, "run_name": "api-resume", "learning_rate": 0.5, "max_steps": 500,
                                        "sample_every": 0}, resume=True, api_name="/train_start"))
    assert resumed["state"] == "running" and resumed["start_step"] == step and resumed["total"] == 500
    s, _ = wait_for_status(client, lambda s, g: s["step"] > step, what="steps after the resume")
    assert len(s["losses"]) == s["step"]  # the earlier session's losses come back with the checkpoint
    assert as_dict(client.predict(api_name="/train_stop"))["state"] == "stopped"


@pytest.fixture(scope="module")
def few_images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("upload")
    paths = []
    for i in range(3):
        paths.append(folder / f"{i}.png")
        Image.new("RGB", (12, 12), (i * 80, 40, 200)).save(paths[-1])
    return paths


def test_upload_saves_a_data_folder(client, running_app, few_images):
    update, note = client.predict(files=[handle_file(p) for p in few_images], folder_name="api-few",
                                  api_name="/train_upload")
    assert "api-few" in note
    assert sorted(p.suffix for p in (running_app[2] / "data" / "api-few").iterdir()) == [".png"] * 3
    with pytest.raises(Exception, match="no image files"):
        client.predict(files=[], folder_name="api-nothing", api_name="/train_upload")


SUFFIXES = ".png, .jpg, .jpeg, .webp, .bmp, .gif, .tif, .tiff"


def exactly(message: str) -> str:
    return f"^{re.escape(message)}$"


@pytest.mark.parametrize(
    "setup, change, pattern",
    [
        ("empty", dict(dataset="api-empty"),
         exactly(f"folder 'api-empty' has no readable image ({SUFFIXES}); add images or upload some")),
        ("broken", dict(dataset="api-broken"),
         exactly(f"folder 'api-broken' has no readable image ({SUFFIXES}); 1 file(s) could not be read: cut.png; "
                 "add images or upload some")),
        ("few", dict(dataset="api-few3"),
         exactly("'api-few3' has 3 usable image(s), fewer than one step needs: batch size 8 x 1 process(es) x "
                 "1 accumulation step(s) = 8; lower the batch size to 3 or turn on clamp_batch_size")),
        # the folders found depend on what the session's other tests uploaded
        (None, dict(dataset="no-such-folder"),
         "^" + re.escape("unknown data 'no-such-folder': not 'digits', not a folder under the data dir (--data-dir) "
                         "(found: ")
         + r"[^)]*" + re.escape("), and not a hub id like 'owner/name'") + "$"),
        (None, dict(dataset="../outside"),
         exactly("'../outside' is outside the data dir (--data-dir); only folders under it can be used")),
        (None, dict(resolution=15), exactly("resolution must be a multiple of 2 for preset 'tiny'; got 15")),
        (None, dict(mixed_precision="fp16"),
         exactly("fp16 mixed precision needs a CUDA GPU; this run is on the CPU: use 'bf16' or 'no'")),
        (None, dict(run_name="../evil"),
         exactly("run name '../evil' is not allowed; use 1-64 letters, digits, '.', '_' or '-', "
                 "starting with a letter or digit")),
    ],
)
def test_bad_data_is_a_clear_error_before_any_step(client, running_app, few_images, setup, change, pattern):
    data_dir = running_app[2] / "data"
    if setup == "empty":
        (data_dir / "api-empty").mkdir(exist_ok=True)
    elif setup == "broken":
        (data_dir / "api-broken").mkdir(exist_ok=True)
        (data_dir / "api-broken" / "cut.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    elif setup == "few" and not (data_dir / "api-few3").exists():
        client.predict(files=[handle_file(p) for p in few_images], folder_name="api-few3", api_name="/train_upload")
    before, _ = train_status(client)
    with pytest.raises(Exception, match=pattern) as info:
        client.predict(**{**RUN, "run_name": "api-bad", **change}, api_name="/train_start")
    assert "Traceback" not in str(info.value)
    after, _ = train_status(client)  # the server keeps serving; a refusal leaves the last run's status as it was
    assert after == before and after["run_name"] != "api-bad"
    assert not (running_app[2] / "models" / "api-bad").exists()


def test_clamp_trains_on_fewer_images_than_the_batch(client, running_app, few_images):
    if not (running_app[2] / "data" / "api-few3").exists():
        client.predict(files=[handle_file(p) for p in few_images], folder_name="api-few3", api_name="/train_upload")
    started = as_dict(client.predict(**{**RUN, "dataset": "api-few3", "run_name": "api-clamped", "sample_every": 0,
                                        "max_steps": 20}, clamp_batch_size=True, api_name="/train_start"))
    assert started["state"] == "running" and "3 images" in started["message"]
    s = running_app[1].training.wait(60)
    assert s.state == "finished" and s.step == 20 and s.checkpoint


# Every /train_start parameter with its own value, none the default (the booleans are told apart by the second
# set below). "tiny" needs sides that divide by 2: 12 px, and 16 images for one step of 7 x 2 accumulated.
SLOTS = dict(dataset="api-slots-data", resolution=12, batch_size=7, max_steps=3, learning_rate=3e-3, lr_warmup_steps=5,
             mixed_precision="bf16", ema=False, seed=11, run_name="api-slots", save_every=13, sample_every=17,
             preset="tiny", epochs=19, gradient_accumulation_steps=2, beta_schedule="squaredcos_cap_v2",
             num_train_timesteps=100, resume=False, clamp_batch_size=True, random_flip=True, first_sample_step=23,
             start_from="scratch", method="full", lora_rank=29, lora_alpha=31.5, lora_layers="cross-attention",
             lora_text_encoder=True, snr_gamma=2.5, validation_prompts="a | b", prediction_type="v_prediction",
             rescale_betas_zero_snr=True)
# The same with ema and clamp_batch_size the other way round: any two of the four booleans differ in SLOTS, here,
# or both (resume is false in both, random_flip and lora_text_encoder true in both). A scratch run records the LoRA
# settings it does not use, so they can land in their fields here too.
SLOTS_FLIPPED = {**SLOTS, "run_name": "api-slots-flipped", "ema": True, "clamp_batch_size": False}
# README "Training" -> "API": the documented order, and the TrainRequest field of each parameter whose name differs.
DOCUMENTED = ["dataset", "resolution", "batch_size", "max_steps", "learning_rate", "lr_warmup_steps",
              "mixed_precision", "ema", "seed", "run_name", "save_every", "sample_every", "preset", "epochs",
              "gradient_accumulation_steps", "beta_schedule", "num_train_timesteps", "resume", "clamp_batch_size",
              "random_flip", "first_sample_step", "start_from", "method", "lora_rank", "lora_alpha", "lora_layers",
              "lora_text_encoder", "snr_gamma", "validation_prompts", "prediction_type", "rescale_betas_zero_snr"]
REQUEST_FIELD = {"dataset": "data", "ema": "use_ema", "epochs": "num_epochs"}


def saved_request(running_app, run_name):
    """The request the run's checkpoint records: the engine's TrainRequest as it trained."""
    state = json.loads((running_app[2] / "models" / run_name / "trainer" / "state.json").read_text())
    return state["step"], state["request"]


def expected_request(values, **changes):
    from dataclasses import asdict, replace

    from engine.training.request import TrainRequest

    request = TrainRequest(**{REQUEST_FIELD.get(k, k): v for k, v in values.items()})
    return asdict(replace(request, **changes))


@pytest.fixture(scope="module")
def slots_data(running_app):
    folder = running_app[2] / "data" / SLOTS["dataset"]
    folder.mkdir(exist_ok=True)
    for i in range(16):
        Image.new("RGB", (12, 12), (i * 15, 255 - i * 15, 90)).save(folder / f"{i}.png")


def test_train_start_parameters_are_the_documented_ones(client):
    params = client.view_api(print_info=False, return_format="dict")["named_endpoints"]["/train_start"]["parameters"]
    assert [p["parameter_name"] for p in params] == DOCUMENTED
    assert all(p["parameter_has_default"] for p in params if p["parameter_name"] != "run_name")


def test_train_start_defaults_are_the_quick_recipe_without_a_flip(client):
    """The page's defaults, which /train_start takes for a parameter not given: the "quick" recipe, digits
    unflipped, a first grid early."""
    params = client.view_api(print_info=False, return_format="dict")["named_endpoints"]["/train_start"]["parameters"]
    defaults = {p["parameter_name"]: p["parameter_default"] for p in params}
    assert {k: defaults[k] for k in ("dataset", "preset", "resolution", "batch_size", "max_steps", "learning_rate",
                                     "lr_warmup_steps", "ema", "sample_every", "first_sample_step",
                                     "random_flip")} == dict(
        dataset="digits", preset="digits", resolution=16, batch_size=32, max_steps=1200, learning_rate=1e-3,
        lr_warmup_steps=100, ema=True, sample_every=100, first_sample_step=25, random_flip=False)


def test_each_value_lands_in_its_own_field(client, running_app, slots_data):
    bench = running_app[1]
    # 1. By keyword: each value is in its own field of the request the run trained with.
    client.predict(**SLOTS, api_name="/train_start")
    s = bench.training.wait(120)
    assert (s.state, s.run_name, s.step, s.total) == ("finished", "api-slots", 3, 3), s.message
    step, request = saved_request(running_app, "api-slots")
    assert step == 3 and request == expected_request(SLOTS)

    # 2. By position, in the documented order, with the booleans the other way round.
    client.predict(*[SLOTS_FLIPPED[name] for name in DOCUMENTED], api_name="/train_start")
    s = bench.training.wait(120)
    assert (s.state, s.run_name) == ("finished", "api-slots-flipped"), s.message
    assert saved_request(running_app, "api-slots-flipped")[1] == expected_request(SLOTS_FLIPPED)

    # 3. Resume: the run-control values reach their own fields; the run keeps the rest of its settings.
    control = dict(max_steps=4, epochs=29, save_every=31, sample_every=37, first_sample_step=41)
    client.predict(**{**SLOTS, **control, "resume": True}, api_name="/train_start")
    s = bench.training.wait(120)
    assert (s.state, s.start_step, s.step, s.total) == ("finished", 3, 4, 4), s.message
    step, request = saved_request(running_app, "api-slots")
    assert step == 4 and request == expected_request({**SLOTS, **control}, resume=True)
