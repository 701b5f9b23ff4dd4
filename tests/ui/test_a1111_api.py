"""AUTOMATIC1111's /sdapi/v1 routes driven by a real A1111 client (``webuiapi`` from PyPI) against the shared
launched app: images equal to our own endpoints', the page's device queue and its run log, progress and interrupt,
the model switch, a <lora:...> prompt, A1111's error shapes."""

import base64
import io
import json
import threading

import httpx
import numpy as np
import pytest
import webuiapi
from gradio_client import handle_file
from PIL import Image

from tests.helpers import wait_until
from tests.training_setups import install_lora

ARGS = dict(model="digits-sd", prompt="a handwritten digit seven", negative_prompt="blurry", steps=6,
            guidance_scale=7.5, scheduler="DPM++ 2M Karras", seed=21, width=32, height=32)


def a1111_args(**change) -> dict:
    """ARGS as an A1111 client sends them (the sampler split in two, as A1111 1.9+ does)."""
    args = dict(prompt=ARGS["prompt"], negative_prompt=ARGS["negative_prompt"], steps=ARGS["steps"],
                cfg_scale=ARGS["guidance_scale"], sampler_name="DPM++ 2M", scheduler="Karras", seed=ARGS["seed"],
                width=ARGS["width"], height=ARGS["height"])
    return {**args, **change}


@pytest.fixture(scope="module")
def api(running_app):
    port = int(running_app[0].rstrip("/").rsplit(":", 1)[1])
    return webuiapi.WebUIApi(port=port)


def pixels(image) -> np.ndarray:
    if not isinstance(image, Image.Image):
        with Image.open(image) as im:
            return np.asarray(im.convert("RGB")).astype(int)
    return np.asarray(image.convert("RGB")).astype(int)


def ours(client, **change):
    """Our /txt2img's final PNG: (pixels, its parameters chunk)."""
    final = client.predict(**{**ARGS, **change}, api_name="/txt2img")
    with Image.open(final[0]) as im:
        return np.asarray(im.convert("RGB")).astype(int), im.text["parameters"]


def png_base64(image: Image.Image) -> str:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode()


PNG = png_base64(Image.new("RGB", (8, 8), (200, 30, 30)))


def run_record_ids(bench) -> set:
    return {r.run_id for r in bench.recent_runs()}


def test_txt2img_and_img2img_equal_our_endpoints(api, client, tmp_path):
    # 1. txt2img, two images (n_iter 2: seeds s, s+1): each equal to /txt2img's, its PNG carrying our parameters.
    result = api.txt2img(**a1111_args(n_iter=2), restore_faces=True)
    assert result.info["all_seeds"] == [21, 22] and result.info["sampler_name"] == "DPM++ 2M Karras"
    assert result.info["sd_model_name"] == "digits-sd" and len(result.images) == 2
    assert "restore_faces" in result.info["ignored_by_workbench"]
    for seed, image, infotext in zip((21, 22), result.images, result.info["infotexts"]):
        expected, parameters = ours(client, seed=seed)
        assert np.array_equal(pixels(image), expected)
        assert image.info["parameters"] == infotext
        assert infotext == parameters  # the same settings, said the same way
    assert result.parameters["sampler_name"] == "DPM++ 2M"  # the request echoed
    assert pixels(result.images[0]).tolist() != pixels(result.images[1]).tolist()

    # 2. img2img from the first image, with a data: prefix: equal to /img2img's.
    source = tmp_path / "source.png"
    result.images[0].save(source)
    encoded = "data:image/png;base64," + base64.b64encode(source.read_bytes()).decode()
    raw = httpx.post(f"{api.baseurl}/img2img", timeout=120, json={
        **a1111_args(prompt="a handwritten digit one", seed=5, steps=10), "init_images": [encoded],
        "denoising_strength": 0.6, "resize_mode": 1}).json()
    final = client.predict(model="digits-sd", image=handle_file(str(source)), prompt="a handwritten digit one",
                           negative_prompt="blurry", strength=0.6, steps=10, guidance_scale=7.5,
                           scheduler="DPM++ 2M Karras", seed=5, width=32, height=32,
                           resize_mode="Crop and resize", api_name="/img2img")
    got = Image.open(io.BytesIO(base64.b64decode(raw["images"][0])))
    assert np.array_equal(pixels(got), pixels(final[0]))
    assert raw["parameters"]["init_images"] is None and json.loads(raw["info"])["denoising_strength"] == 0.6


def test_waits_in_the_pages_queue_shows_progress_and_interrupt_ends_either_run(api, client, running_app):
    url, bench, _ = running_app
    long = dict(steps=150, width=96, height=96)
    # 1. A run of the page's /txt2img holds the device.
    page_job = client.submit(**{**ARGS, **long}, api_name="/txt2img")
    wait_until(lambda: page_job.outputs(), timeout=300, what="the page's run streaming")  # it holds the device
    # 2. An API run waits behind it in the page's queue (Gradio's own count says so), and /progress says it waits.
    answer, other = {}, webuiapi.WebUIApi(port=int(url.rstrip("/").rsplit(":", 1)[1]))
    thread = threading.Thread(target=lambda: answer.update(r=other.txt2img(**a1111_args(**long))))
    thread.start()
    wait_until(lambda: httpx.get(url + "gradio_api/queue/status", timeout=10).json()["queue_size"] >= 1, timeout=300,
               what="the API run in the page's queue")
    waiting = api.get_progress()
    assert waiting["state"]["job_count"] == 1 and waiting["textinfo"] == "1 waiting for the device"
    # 3. /interrupt ends the page's run (as its Stop does): its own record says stopped.
    page_runs = [r for r in bench.recent_runs() if r.kind == "txt2img" and r.ended is None]
    assert len(page_runs) == 1
    api.interrupt()
    with pytest.raises(Exception, match="run stopped by the user"):
        page_job.result()
    # 4. The API run starts; progress carries a decodable preview of x0 while it runs.
    def previewing():
        assert thread.is_alive(), "the API run ended before a preview was seen"
        seen = api.get_progress()
        return seen if seen["current_image"] and seen["state"]["sampling_step"] >= 1 else None

    progress = wait_until(previewing, timeout=300, what="a preview in /progress")
    preview = Image.open(io.BytesIO(base64.b64decode(progress["current_image"])))
    preview.load()  # a whole PNG: the x0 preview of a square run, as the page draws it
    assert preview.mode == "RGB" and preview.size[0] == preview.size[1] > 0 and 0 < progress["progress"] < 1
    assert progress["state"]["sampling_steps"] == 150 and progress["state"]["job_count"] == 1
    # 5. /interrupt ends it too: no image, the info says interrupted, its record says stopped.
    api.interrupt()
    thread.join()
    result = answer["r"]
    assert result.images == [] and result.info["interrupted"] is True and result.info["all_seeds"] == []
    records = {r.run_id: r for r in bench.recent_runs()}
    page_record = records[page_runs[0].run_id]
    api_record = next(r for r in reversed(bench.recent_runs()) if r.run_id > page_record.run_id)
    # the answer comes as the stop is asked
    wait_until(lambda: api_record.ended, timeout=300, what="the worker ending the API run")
    assert page_record.outcome == "stopped" and api_record.outcome == "stopped"
    assert api_record.started >= page_record.ended  # it waited for the page's run
    idle = api.get_progress()
    assert idle["progress"] == 0 and idle["state"]["job_count"] == 0


def test_model_switch_through_options_and_a_lora_in_the_prompt(api, client, running_app, trained_lora):
    from engine.testing.tiny import tiny_sd_pipeline

    bench, dirs = running_app[1], running_app[2]
    # 1. Another model in the models dir; /options switches to it and back.
    tiny_sd_pipeline(seed=0).save_pretrained(dirs / "models" / "a1111-tiny")
    assert "a1111-tiny" in [m["title"] for m in api.get_sd_models()]
    api.set_options({"sd_model_checkpoint": "a1111-tiny"})
    try:
        assert api.get_options()["sd_model_checkpoint"] == "a1111-tiny"
        result = api.txt2img(**a1111_args())
        assert result.info["sd_model_name"] == "a1111-tiny"
        assert np.array_equal(pixels(result.image), ours(client, model="a1111-tiny")[0])
    finally:
        api.set_options({"sd_model_checkpoint": "digits-sd"})
    assert api.get_options()["sd_model_checkpoint"] == "digits-sd"
    # 2. A LoRA trained for digits-sd, in the prompt as A1111 writes it: equal to /txt2img with it.
    install_lora(trained_lora, bench.folders.models_dir, "a1111-lo")
    assert "a1111-lo" in [lora["name"] for lora in api.get_loras()]
    result = api.txt2img(**a1111_args(prompt=f"{ARGS['prompt']} <lora:a1111-lo:0.7>"))
    expected, parameters = ours(client, lora="a1111-lo", lora_scale=0.7)
    assert np.array_equal(pixels(result.image), expected) and "LoRA: a1111-lo:0.7" in parameters
    assert not np.array_equal(expected, ours(client)[0])  # the LoRA changes the image: the comparison can fail


def error(response) -> dict:
    return {"status": response.status_code, **response.json()}


def a1111_error(status: int, detail: str) -> dict:
    return {"status": status, "error": "HTTPException", "detail": detail, "body": "", "errors": f"{status}: {detail}"}


SAMPLERS = "DDIM, DDPM, PNDM, LMS, Euler, Euler a, Heun, DPM++ 2M, DPM++ 2M Karras, DPM++ 2M SDE, UniPC"


@pytest.mark.parametrize("route, body, status, detail", [
    ("txt2img", a1111_args(sampler_name="Bogus"), 404, f"Sampler not found: 'Bogus'; samplers here: {SAMPLERS}"),
    ("txt2img", a1111_args(override_settings={"sd_model_checkpoint": "nope"}), 404,
     "Model not found: unknown model 'nope': not a built-in (digits-sd, digits-ddpm), not a folder or .safetensors "
     "file under the models dir (--models-dir), and not a hub id like 'owner/name'"),
    ("txt2img", a1111_args(steps=500), 422, "steps: steps must be a whole number from 1 to 150; got 500"),
    ("txt2img", a1111_args(cfg_scale=30), 422,
     "cfg_scale: guidance scale must be a number from 1 (no guidance) to 20; got 30"),
    ("txt2img", a1111_args(width=60), 422, "width: width must be a multiple of 8 (8 to 2048); got 60"),
    ("txt2img", a1111_args(sampler_name="Euler", scheduler="Karras"), 422,
     "scheduler: Karras is offered with DPM++ 2M only; got it with 'Euler'"),
    ("txt2img", a1111_args(prompt="a <lora:a:0.5> b <lora:b:1>"), 422,
     "prompt: one LoRA at a time here; got 2: <lora:a:0.5>, <lora:b:1>"),
    ("img2img", a1111_args(init_images=[PNG], mask=PNG), 422,
     "mask: inpainting is not offered here yet; send img2img without a mask"),
    ("img2img", a1111_args(init_images=[PNG], resize_mode=3), 422,
     "resize_mode: must be 0 (Just resize), 1 (Crop and resize) or 2 (Resize and fill); got 3"),
    ("img2img", a1111_args(init_images=["aGVsbG8="]), 422,
     "init_images: not a readable base64 image (PNG, JPEG, WebP, ...)"),
])
def test_errors_in_a1111s_shape_and_the_server_keeps_serving(api, route, body, status, detail):
    assert error(httpx.post(f"{api.baseurl}/{route}", json=body, timeout=60)) == a1111_error(status, detail)
    if route == "txt2img":  # the client's own report of it
        with pytest.raises(RuntimeError) as raised:
            api.txt2img(**body)
        assert raised.value.args[0] == status and json.loads(raised.value.args[1])["detail"] == detail
    assert api.get_options()["sd_model_checkpoint"] == "digits-sd"  # still serving


def test_eight_clients_at_once_equal_their_sequential_twins_and_never_overlap(running_app):
    url, bench, _ = running_app
    port = int(url.rstrip("/").rsplit(":", 1)[1])
    from gradio_client import Client

    seeds = list(range(100, 108))
    short = dict(steps=3)

    def one(seed):  # even seeds through A1111's API, odd ones through our /txt2img
        if seed % 2 == 0:
            return pixels(webuiapi.WebUIApi(port=port).txt2img(**a1111_args(seed=seed, **short)).image)
        c = Client(url, verbose=False)
        try:
            return pixels(c.predict(**{**ARGS, "seed": seed, **short}, api_name="/txt2img")[0])
        finally:
            c.close()

    alone = {seed: one(seed) for seed in seeds}
    before = run_record_ids(bench)
    together, failed = {}, {}

    def keep(seed):
        try:
            together[seed] = one(seed)
        except Exception as error:  # said below with the seed, not lost in the thread
            failed[seed] = repr(error)

    threads = [threading.Thread(target=keep, args=(s,)) for s in seeds]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failed == {}
    assert sorted(together) == seeds
    for seed in seeds:
        assert np.array_equal(together[seed], alone[seed]), f"seed {seed}"
    runs = sorted((r for r in bench.recent_runs() if r.run_id not in before), key=lambda r: r.started)
    assert len(runs) == 8 and all(r.outcome == "done" for r in runs)
    for earlier, later in zip(runs, runs[1:]):
        assert later.started >= earlier.ended, "two runs held the device at once"
