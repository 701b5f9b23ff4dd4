"""Hostile values through the API, sent as raw JSON where a client library would not send them: each gets the
engine's clear message, and the server keeps serving."""

import json
import re
from pathlib import Path

import httpx
import pytest

from tests.crafted_png import black_png, header_only_png

# Each endpoint's parameters in their order, with values that run (quickly).
TXT2IMG = dict(model="digits-sd", prompt="a handwritten digit seven", negative_prompt="", steps=2,
               guidance_scale=7.5, scheduler="DDIM", seed=1, width=32, height=32, vae_preview_every=0, preview="auto",
               lora="", lora_scale=1.0, batch_count=1, compile=False, timestep_spacing="", guidance_rescale=0.0)
DDPM = dict(model="digits-ddpm", scheduler="DDIM", steps=2, seed=1, batch_size=1, batch_count=1, compile=False,
            timestep_spacing="")
NOISE = dict(image=None, timesteps="0, 500", beta_schedule="linear", num_train_timesteps=1000, seed=0,
             beta_start=0.0001, beta_end=0.02, rescale_betas_zero_snr=False, resolution=32, sample_image="china.jpg",
             model="(the settings below)", overlay=[], marker_scheduler="DDIM", marker_steps=50, t=500)
TRAIN = dict(dataset="digits", resolution=16, batch_size=8, max_steps=2, learning_rate=1e-3, lr_warmup_steps=0,
             mixed_precision="no", ema=False, seed=0, run_name="raw-bad-run", save_every=0, sample_every=0,
             preset="tiny", epochs=50, gradient_accumulation_steps=1, beta_schedule="linear",
             num_train_timesteps=1000, resume=False, clamp_batch_size=False, random_flip=False, first_sample_step=0,
             start_from="scratch", method="full", lora_rank=4, lora_alpha=4.0, lora_layers="attention",
             lora_text_encoder=False, snr_gamma=0.0, validation_prompts="", prediction_type="",
             rescale_betas_zero_snr=False)
UPLOAD = dict(files=[], folder_name="raw-bad-upload")
BASE = {"txt2img": TXT2IMG, "ddpm": DDPM, "add_noise": NOISE, "train_start": TRAIN, "train_upload": UPLOAD}
HUGE = "x" * 1_000_000
HUGE_SHOWN = "'" + "x" * 59 + "... (1000000 characters)"  # a megabyte is not echoed back
FILE_FORM = "as gradio_client's handle_file(path) sends one ({'path': ..., 'meta': {'_type': 'gradio.FileData'}})"
MODEL_TEXT = "model must be text: a built-in's name, a folder or file under the models dir, or a hub id; got "


def call(url: str, api: str, values: dict) -> str:
    """POST raw JSON to /gradio_api/call/<api> and read the event stream: the error message or 'ok'."""
    body = json.dumps({"data": list(values.values())}, allow_nan=True)  # NaN/Infinity as JS writes them
    with httpx.Client(timeout=60) as http:
        posted = http.post(f"{url}gradio_api/call/{api}", content=body, headers={"content-type": "application/json"})
        if posted.status_code != 200:
            return f"HTTP {posted.status_code}"
        event_id = posted.json()["event_id"]
        text = http.get(f"{url}gradio_api/call/{api}/{event_id}").text
    if "event: error" in text:
        data = text.split("event: error", 1)[1].split("data:", 1)[1].strip().splitlines()[0]
        try:
            return json.loads(data)["error"]
        except (ValueError, KeyError, TypeError):
            return data
    return "ok"


@pytest.mark.parametrize("change, expected", [
    (dict(prompt="x" * 1_000_000), "prompt must be at most 10000 characters; got 1000000"),
    (dict(negative_prompt="y" * 20_000), "negative prompt must be at most 10000 characters; got 20000"),
    (dict(seed=2**70), "seed must be a whole number from -1 to 9223372036854775807; got 1180591620717411303424"),
    (dict(width=8.5), "width must be a whole number from 8 to 2048; got 8.5"),
    (dict(model="\x00"), "unknown model '\\x00'"),
    (dict(lora="../x"), "LoRA '../x' is not a name from the loras folder"),
    (dict(lora_scale=float("nan")), "LoRA scale must be a number from 0 to 2; got nan"),
    (dict(compile=1), "compile must be true or false; got 1"),
])
def test_raw_json_values_get_the_engines_message(running_app, change, expected):
    url = running_app[0]
    message = call(url, "txt2img", {**TXT2IMG, **change})
    assert expected in message and "Traceback" not in message
    assert call(url, "txt2img", TXT2IMG) == "ok"  # and the server keeps serving


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_nan_and_infinity_are_refused(running_app, value):
    message = call(running_app[0], "txt2img", {**TXT2IMG, "guidance_scale": value})
    assert message != "ok" and "Traceback" not in message
    assert call(running_app[0], "txt2img", TXT2IMG) == "ok"


def test_unicode_and_null_bytes_in_a_prompt_are_just_text(running_app):
    assert call(running_app[0], "txt2img", {**TXT2IMG, "prompt": "ein Ziffer sieben \u2603 \x00 \U0001f600"}) == "ok"


def test_a_fractional_batch_size_is_refused_not_rounded(client):
    """/ddpm used to run batch size 2.5 as 2 (the number box rounded it)."""
    with pytest.raises(Exception, match=r"^batch size must be a whole number from 1 to 16; got 2\.5$"):
        client.predict(model="digits-ddpm", scheduler="DDIM", steps=2, seed=1, batch_size=2.5, api_name="/ddpm")


@pytest.mark.parametrize("api, field, value, expected", [
    # /ddpm
    ("ddpm", "model", 2.5, MODEL_TEXT + "2.5"),
    ("ddpm", "model", HUGE, "model must be at most 1024 characters; got 1000000"),  # was an internal OSError
    ("ddpm", "model", "\x00", "unknown model '\\x00': a model name has no control characters"),
    ("ddpm", "scheduler", "\u2603", "unknown scheduler '\u2603'; allowed: DDIM, DDPM, DPM++ 2M, UniPC, PNDM, Euler"),
    ("ddpm", "scheduler", HUGE, f"unknown scheduler {HUGE_SHOWN}; allowed: DDIM, DDPM, DPM++ 2M, UniPC, PNDM, Euler"),
    ("ddpm", "steps", float("nan"), "steps must be a whole number from 1 to 10000; got nan"),
    ("ddpm", "seed", "1", "seed must be a whole number from -1 to 9223372036854775807; got '1'"),
    ("ddpm", "batch_size", float("inf"), "batch size must be a whole number from 1 to 16; got inf"),
    ("ddpm", "batch_size", True, "batch size must be a whole number from 1 to 16; got True"),
    # /add_noise
    ("add_noise", "image", "abc", f"image must be a file {FILE_FORM}; got 'abc'"),
    ("add_noise", "image", {"path": "/etc/hostname"},  # no "meta": Gradio hands it on unchecked
     "image must be a file uploaded to this app, as gradio_client's handle_file(path) sends it; got '/etc/hostname'"),
    ("add_noise", "timesteps", HUGE, f"timesteps must be whole numbers like 0, 50, 999; got {HUGE_SHOWN}"),
    ("add_noise", "beta_schedule", None,
     "unknown beta schedule None; allowed: linear, scaled_linear, squaredcos_cap_v2, sigmoid"),
    ("add_noise", "num_train_timesteps", "abc",
     "num_train_timesteps must be a whole number from 2 to 10000; got 'abc'"),
    ("add_noise", "seed", float("nan"), "seed must be a whole number from 0 to 9223372036854775807; got nan"),
    ("add_noise", "beta_start", float("-inf"), "beta_start must be a number between 0 and 1 (exclusive); got -inf"),
    ("add_noise", "rescale_betas_zero_snr", "yes", "rescale_betas_zero_snr must be true or false; got 'yes'"),
    ("add_noise", "resolution", 2**70, "resolution must be a whole number from 16 to 512; got 1180591620717411303424"),
    ("add_noise", "sample_image", "\x00", "unknown sample image '\\x00'; allowed: china.jpg, flower.jpg"),
    ("add_noise", "model", [1], MODEL_TEXT + "[1]"),
    ("add_noise", "overlay", 2.5, "overlay must be a list of beta schedules (linear, scaled_linear, squaredcos_cap_v2, "
                                  "sigmoid); got 2.5"),  # was an internal TypeError
    ("add_noise", "overlay", ["cubic"], "unknown overlay 'cubic'; allowed: linear, scaled_linear, squaredcos_cap_v2, "
                                        "sigmoid"),
    ("add_noise", "marker_scheduler", 5, "unknown scheduler 5; allowed: DDIM, DDPM, PNDM, LMS, Euler, Euler a, Heun, "
                                         "DPM++ 2M, DPM++ 2M Karras, DPM++ 2M SDE, UniPC"),
    ("add_noise", "marker_steps", "abc", "marker_steps must be a whole number from 1 to 10000; got 'abc'"),  # was run
    ("add_noise", "t", "abc", "t must be a whole number from 0 to 9999; got 'abc'"),  # was an internal TypeError
    ("add_noise", "t", float("inf"), "t must be a whole number from 0 to 9999; got inf"),  # was taken as 999
    # /train_start
    ("train_start", "dataset", 2.5, "data must name 'digits', a folder under the data dir, or a hub id 'owner/name'"),
    ("train_start", "dataset", HUGE, "data must be at most 1024 characters; got 1000000"),  # was 'started', idle
    ("train_start", "dataset", "a\x00b", "unknown data 'a\\x00b': a data name has no control characters"),
    ("train_start", "resolution", 16.5, "resolution must be a whole number from 8 to 1024; got 16.5"),  # was 16
    ("train_start", "batch_size", "abc", "batch size must be a whole number from 1 to 4096; got 'abc'"),
    ("train_start", "max_steps", float("nan"), "max steps must be a whole number from 0 to 100000000; got nan"),
    ("train_start", "learning_rate", float("inf"), "learning rate must be a number above 0 and at most 1; got inf"),
    ("train_start", "mixed_precision", "\u2603", "unknown mixed precision '\u2603'; allowed: no, fp16, bf16"),
    ("train_start", "ema", "yes", "use_ema must be true or false; got 'yes'"),
    ("train_start", "seed", -5, "seed must be a whole number from 0 to 9223372036854775807; got -5"),
    ("train_start", "run_name", HUGE, f"run name {HUGE_SHOWN} is not allowed; use 1-64 letters, digits, '.', '_' "
                                      "or '-', starting with a letter or digit"),
    ("train_start", "run_name", 7, "run name 7 is not allowed; use 1-64 letters, digits, '.', '_' or '-', starting "
                                   "with a letter or digit"),
    ("train_start", "preset", [1], "unknown preset [1]; allowed: tiny, small, digits, ddpm-128"),
    ("train_start", "num_train_timesteps", 2.5, "train timesteps must be a whole number from 2 to 100000; got 2.5"),
    ("train_start", "resume", "no", "resume must be true or false; got 'no'"),  # 'no' used to resume the run
    ("train_start", "clamp_batch_size", None, "clamp_batch_size must be true or false; got None"),
    # /train_upload
    ("train_upload", "files", "abc", f"files must be a list of files {FILE_FORM}; got 'abc'"),
    ("train_upload", "files", [{"path": "/etc/hostname"}],
     f"files must be a list of files {FILE_FORM}; got [{{'path': '/etc/hostname'}}]"),
    ("train_upload", "folder_name", HUGE, f"folder name {HUGE_SHOWN} is not allowed; use 1-64 letters, digits, '.', "
                                          "'_' or '-', starting with a letter or digit"),
    ("train_upload", "folder_name", "\x00", "folder name '\\x00' is not allowed; use 1-64 letters, digits, '.', '_' "
                                            "or '-', starting with a letter or digit"),
])
def test_raw_json_for_every_endpoint_gets_a_message_naming_the_field(running_app, api, field, value, expected):
    """Type, range, NaN and infinities, huge strings, unicode and null bytes, as a raw client sends them: the
    engine's message, the field named with what it takes; nothing written; the server keeps serving."""
    url, _, dirs = running_app
    before = sorted(p.relative_to(dirs) for p in dirs.rglob("*") if "raw-bad" in p.name or p.is_file())
    assert call(url, api, {**BASE[api], field: value}) == expected
    after = sorted(p.relative_to(dirs) for p in dirs.rglob("*") if "raw-bad" in p.name or p.is_file())
    assert after == before  # no run folder, data folder or image written
    good = {"ddpm": ("ddpm", DDPM), "add_noise": ("add_noise", NOISE)}.get(api, ("train_status", {}))
    assert call(url, *good) == "ok"


def test_endpoints_without_parameters_ignore_what_a_raw_client_adds(running_app):
    for api in ("train_status", "train_stop"):
        assert call(running_app[0], api, {"junk": "\x00", "more": float("nan")}) == "ok"


COMPARE = dict(model="digits-sd", prompt="a seven", negative_prompt="", seed=1, axis="steps", values=["2", "3"],
               steps=2, guidance_scale=7.5, scheduler="DDIM", width=32, height=32, timestep_spacing="",
               guidance_rescale=0.0, seed_b=-1)


@pytest.mark.parametrize("change, expected", [
    (dict(values=["2"] * 1000), "give 2 to 6 values to compare; got 1000"),
    (dict(values=["2", "NaN"]), "steps values must be whole numbers; got 'NaN'"),
    (dict(values=["2", "1e400"]), "steps values must be whole numbers; got '1e400'"),
    (dict(axis="guidance scale", values=["2", "Infinity"]), "guidance scale values must be numbers; got 'Infinity'"),
    (dict(axis="model", values=["digits-sd", "../../etc"]), "'../../etc' is outside the models dir"),
])
def test_raw_json_compare_values_get_the_engines_message(running_app, change, expected):
    values = {**COMPARE, **change}
    order = list(COMPARE)
    body = json.dumps({"data": [values[k] for k in order]})
    with httpx.Client(timeout=60) as http:
        event_id = http.post(f"{running_app[0]}gradio_api/call/compare", content=body,
                             headers={"content-type": "application/json"}).json()["event_id"]
        text = http.get(f"{running_app[0]}gradio_api/call/compare/{event_id}").text
    assert "event: error" in text and expected in text and "Traceback" not in text
    assert call(running_app[0], "txt2img", TXT2IMG) == "ok"  # and the server keeps serving


# -- what used to end in "Internal error (...)": a message naming the field, and the server keeps serving ---------
LIMIT = "images of at most 67108864 pixels (8192 x 8192) are read"


def refused(client, message: str, **call) -> None:
    """``client.predict(**call)`` fails with exactly ``message``; then a quick run shows the server still serving."""
    with pytest.raises(Exception, match=f"^{re.escape(message)}$"):
        client.predict(**call)
    assert client.predict(model="digits-sd", prompt="a seven", steps=1, seed=1, width=32, height=32,
                          api_name="/txt2img")[0]


@pytest.fixture(scope="module")
def huge_pngs(tmp_path_factory):
    """A whole 12000 x 12000 PNG (18 KB here, 144 megapixels decoded) and a 60000 x 60000 header."""
    folder = tmp_path_factory.mktemp("huge")
    (folder / "big.png").write_bytes(black_png(12000, 12000))
    (folder / "bomb.png").write_bytes(header_only_png(60000, 60000))
    return folder


@pytest.mark.parametrize("name, message", [  # PIL raised DecompressionBombError for bomb.png: "Internal error"
    ("big.png", f"image 'big.png' is 12000 x 12000 pixels (144000000); {LIMIT}"),  # took 16 s and 2.3 GiB
    ("bomb.png", f"image 'bomb.png' is 60000 x 60000 pixels (3600000000); {LIMIT}"),  # was an internal error
])
def test_an_image_of_too_many_pixels_is_refused_by_its_header(client, huge_pngs, name, message):
    from gradio_client import handle_file

    image = handle_file(str(huge_pngs / name))
    refused(client, message, model="digits-sd", image=image, prompt="a seven", negative_prompt="", strength=0.6,
            steps=2, guidance_scale=7.5, scheduler="DDIM", seed=1, api_name="/img2img")
    refused(client, message, image=image, api_name="/add_noise")
    refused(client, message, image=image, api_name="/png_info")


def test_a_full_disk_is_said_and_nothing_saved_before_is_lost(client, running_app, monkeypatch):
    """The batch count's grid is saved by the server, after its runs' images: the disk filling then ended in
    "Internal error (OSError)"."""
    import errno

    import engine.files

    def no_space(path):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(engine.files, "fsync_path", no_space)
    outputs = running_app[2] / "outputs"
    before = set(outputs.rglob("*.png"))
    with pytest.raises(Exception, match=r"^No space left on device: \d{5}-61-grid\.png was not saved in "
                                        r"\d{4}-\d\d-\d\d/; nothing saved before was lost \(files are written whole "
                                        r"or not at all\)\. Free some space and try again\.$"):
        client.predict(model="digits-sd", prompt="a seven", steps=1, seed=61, batch_count=2, api_name="/txt2img")
    saved = sorted(p.name.split("-", 1)[1] for p in set(outputs.rglob("*.png")) - before)
    assert saved == ["61.png", "62.png"]  # the runs' images, whole; no grid, no partial file
    assert not [p for p in outputs.rglob(".*.tmp")]
    monkeypatch.undo()
    assert client.predict(model="digits-sd", prompt="a seven", steps=1, seed=1, api_name="/txt2img")[0]


def test_bad_replay_bundles_are_refused_by_field(client, tmp_path):
    from gradio_client import handle_file

    final = client.predict(model="digits-sd", prompt="a seven", steps=1, seed=71, api_name="/txt2img")
    info = final[3] if isinstance(final[3], dict) else json.loads(final[3])
    bundle = json.loads(Path(client.predict(image=info["file"], api_name="/export_run")).read_text())
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)  # was Internal error (RecursionError)
    refused(client, "deep.json is not a run file: its JSON is nested deeper than Python's parser goes",
            run_file=handle_file(str(deep)), api_name="/replay")
    named = tmp_path / "named.json"
    named.write_text(json.dumps({**bundle, "model": "digits-sd"}))  # was Internal error (AttributeError)
    refused(client, "the run file's 'model' must be a table of values as a run writes it; got 'digits-sd'",
            run_file=handle_file(str(named)), api_name="/replay")


@pytest.mark.parametrize("image, message", [
    ("a\x00b.png", "image 'a\\x00b.png' is not an image of the history: a path has no control characters"),
    ("x" * 5000, "image must be a path of at most 1024 characters; got 5000"),
])
def test_export_run_names_the_image_field_for_paths_no_file_system_takes(client, image, message):
    refused(client, message, image=image, api_name="/export_run")
