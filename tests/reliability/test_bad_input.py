"""Hostile values through the API, sent as raw JSON where a client library would not send them: each gets the
engine's clear message, and the server keeps serving."""

import json

import httpx
import pytest

TXT2IMG = dict(model="digits-sd", prompt="a handwritten digit seven", negative_prompt="", steps=2,
               guidance_scale=7.5, scheduler="DDIM", seed=1, width=32, height=32, vae_preview_every=0, preview="auto")
ORDER = list(TXT2IMG)


def call(url: str, api: str, values: dict) -> str:
    """POST raw JSON to /gradio_api/call/<api> and read the event stream: the error message or 'ok'."""
    body = json.dumps({"data": [values[k] for k in ORDER]}, allow_nan=True)  # NaN/Infinity as JS writes them
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


COMPARE = dict(model="digits-sd", prompt="a seven", negative_prompt="", seed=1, axis="steps", values=["2", "3"],
               steps=2, guidance_scale=7.5, scheduler="DDIM", width=32, height=32)


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
