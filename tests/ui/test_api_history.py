"""/history, /png_info, /export_run, /replay and batch count through gradio_client against a launched app; every
generation endpoint runs with only its model and prompt."""

import json
import re
from pathlib import Path

import pytest
from gradio_client import handle_file
from PIL import Image

from tests.engine.test_pnginfo import A1111_TEXT, COMFY_PROMPT, write_png
from tests.helpers import as_dict

QUOKKA = "a handwritten digit seven quokka"  # a prompt no other test uses: /history's search finds only these




def test_generation_endpoints_need_only_the_model_and_prompt(client):
    final = client.predict(model="digits-sd", prompt="a handwritten digit seven", api_name="/txt2img")
    info = as_dict(final[3])
    assert (info["steps"], info["scheduler"], info["guidance_scale"], info["negative_prompt"]) == \
        (25, "DPM++ 2M Karras", 7.5, "")
    with Image.open(final[0]) as im:
        assert im.size == (32, 32)
    final = client.predict(model="digits-ddpm", api_name="/ddpm")
    assert as_dict(final[4])["steps"] == 50 and as_dict(final[4])["scheduler"] == "DDIM"


def test_batch_count_runs_seeds_in_a_row_then_a_grid(client, running_app):
    final = client.predict(model="digits-sd", prompt="a handwritten digit one", steps=2, seed=21, batch_count=3,
                           api_name="/txt2img")
    info = as_dict(final[3])
    assert info["seeds"] == [21, 22, 23] and len(info["files"]) == 3 and info["grid"].endswith("-21-grid.png")
    assert all(f.startswith("outputs/txt2img/") and (running_app[2] / f).is_file() for f in info["files"])
    with Image.open(final[0]) as im:
        assert im.size == (66, 66)  # three 32 px images in two columns, 2 px apart
    final = client.predict(model="digits-ddpm", steps=2, seed=3, batch_size=2, batch_count=2, api_name="/ddpm")
    info = as_dict(final[4])
    assert info["seeds"] == [3, 4] and len(info["files"]) == 4


def test_history_lists_newest_first_and_filters(client):
    for seed in (101, 102):
        client.predict(model="digits-sd", prompt=QUOKKA, steps=1, seed=seed, api_name="/txt2img")
    found = as_dict(client.predict(search="QUOKKA", api_name="/history"))
    assert [(i["seed"], i["prompt"], i["kind"], i["model"]) for i in found["images"]] == \
        [(102, QUOKKA, "txt2img", "digits-sd"), (101, QUOKKA, "txt2img", "digits-sd")]
    assert found["total"] == 2 and found["scanned"] >= 2 and found["pages"] == 1
    assert as_dict(client.predict(kind="unconditional", search="quokka", api_name="/history"))["total"] == 0
    assert as_dict(client.predict(model="digits-sd", search="quokka", api_name="/history"))["total"] == 2
    assert as_dict(client.predict(model="digits-ddpm", search="quokka", api_name="/history"))["total"] == 0
    # The tab box's own choices refuse another tab before the engine sees it (its message: test_history.py).
    with pytest.raises(Exception, match=re.escape("Value: noise is not in the list of choices: "
                                                  "['', 'txt2img', 'unconditional']")):
        client.predict(kind="noise", api_name="/history")
    with pytest.raises(Exception, match=re.escape("page must be a whole number from 1 to 1000000000; got 2.5")):
        client.predict(page=2.5, api_name="/history")


def test_png_info_reads_a1111_comfyui_and_our_own(client, tmp_path):
    a1111 = as_dict(client.predict(image=handle_file(str(write_png(tmp_path / "a1111.png", parameters=A1111_TEXT))),
                                   api_name="/png_info"))
    assert a1111["source"] == "A1111/Forge" and a1111["kind"] == "txt2img"
    assert a1111["settings"]["scheduler"] == "DPM++ 2M Karras" and a1111["settings"]["seed"] == 1234567
    assert "model" not in a1111["settings"]
    assert "model 'v1-5-pruned-emaonly' is not here (not a built-in, nor under the models dir); the page's model is " \
           "kept" in a1111["unused"]
    comfy = as_dict(client.predict(image=handle_file(str(write_png(tmp_path / "comfy.png",
                                                                   prompt=json.dumps(COMFY_PROMPT)))),
                                   api_name="/png_info"))
    assert comfy["source"] == "ComfyUI" and comfy["settings"]["num_inference_steps"] == 20
    ours = client.predict(model="digits-sd", prompt="a handwritten digit two", steps=1, seed=5, api_name="/txt2img")
    own = as_dict(client.predict(image=handle_file(ours[0]), api_name="/png_info"))
    assert own["source"] == "Diffusion Workbench" and own["settings"]["model"] == "digits-sd"
    assert own["settings"]["seed"] == 5


def test_png_info_refuses_what_it_cannot_read(client, tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "photo.png", format="JPEG")
    with pytest.raises(Exception, match=re.escape("photo.png is not a PNG file (it does not start with the PNG "
                                                  "signature)")):
        client.predict(image=handle_file(str(tmp_path / "photo.png")), api_name="/png_info")
    with pytest.raises(Exception, match=re.escape("plain.png holds no generation parameters; this page reads")):
        client.predict(image=handle_file(str(write_png(tmp_path / "plain.png"))), api_name="/png_info")
    whole = write_png(tmp_path / "whole.png", size=(64, 64), parameters=A1111_TEXT).read_bytes()
    (tmp_path / "cut.png").write_bytes(whole[:whole.index(b"IDAT") + 30])
    with pytest.raises(Exception, match=re.escape("cut.png is a truncated or damaged PNG: its image data cannot be "
                                                  "read")):
        client.predict(image=handle_file(str(tmp_path / "cut.png")), api_name="/png_info")
    assert as_dict(client.predict(api_name="/history"))["scanned"] >= 0  # the server keeps serving


def test_export_then_replay_is_identical(client):
    final = client.predict(model="digits-sd", prompt="a handwritten digit six", steps=2, seed=31,
                           scheduler="Euler a", api_name="/txt2img")
    image = as_dict(final[3])["file"]  # as the page shows it: outputs/txt2img/...
    run_file = client.predict(image=image, api_name="/export_run")
    bundle = json.loads(Path(run_file).read_text())
    assert "outputs/" + bundle["image"] == image
    assert bundle["request"]["seed"] == 31 and bundle["request"]["scheduler"] == "Euler a"
    progress, verdict, replayed = client.predict(run_file=handle_file(run_file), api_name="/replay")
    verdict = as_dict(verdict)
    assert verdict["outcome"] == "identical" and verdict["max_difference"] == 0
    assert verdict["message"].startswith("Identical: the replay's image hashes as the run's did")
    with Image.open(replayed) as a, Image.open(final[0]) as b:
        assert a.tobytes() == b.tobytes()
    # The PNG itself is a run file too.
    assert as_dict(client.predict(run_file=handle_file(final[0]), api_name="/replay")[1])["outcome"] == "identical"


def test_replay_refuses_bad_run_files_and_says_what_it_cannot_replay(client, running_app, tmp_path):
    final = client.predict(model="digits-sd", prompt="a handwritten digit six", steps=1, seed=32, api_name="/txt2img")
    bundle = json.loads(Path(client.predict(image=as_dict(final[3])["file"], api_name="/export_run")).read_text())
    newer = tmp_path / "newer.json"
    newer.write_text(json.dumps({**bundle, "version": 2}))
    with pytest.raises(Exception, match=re.escape("the run file is format version 2, newer than this workbench reads "
                                                  "(up to 1); update the workbench to replay it")):
        client.predict(run_file=handle_file(str(newer)), api_name="/replay")
    outside = tmp_path / "outside.json"
    outside.write_text(json.dumps({**bundle, "request": {**bundle["request"], "model": "../../elsewhere"}}))
    with pytest.raises(Exception, match=re.escape("the run file names model '../../elsewhere', outside the models "
                                                  "dir")):
        client.predict(run_file=handle_file(str(outside)), api_name="/replay")
    missing = tmp_path / "missing.json"
    missing.write_text(json.dumps({**bundle, "request": {**bundle["request"], "model": "not-here"}}))
    verdict = as_dict(client.predict(run_file=handle_file(str(missing)), api_name="/replay")[1])
    assert verdict["outcome"] == "cannot replay"
    assert verdict["message"].startswith("Cannot replay: the model 'not-here' is not here (unknown model 'not-here'")
    with pytest.raises(Exception, match=re.escape("'../x.png' is not an image of the history")):
        client.predict(image="../x.png", api_name="/export_run")


def test_no_answer_names_the_servers_folders(client, running_app, tmp_path):
    """As every endpoint (tests/reliability/test_paths.py): History, PNG Info and replay name files relative."""
    dirs = running_app[2]
    roots = {str(dirs), str(dirs.resolve())}
    final = client.predict(model="digits-sd", prompt="a handwritten digit nine", steps=1, seed=41, batch_count=2,
                           api_name="/txt2img")
    image = as_dict(final[3])["files"][0]
    answers = {
        "txt2img batch": final[2:5],
        "history": client.predict(search="nine", api_name="/history"),
        "png_info": client.predict(image=handle_file(str(dirs / image)), api_name="/png_info"),
        "replay": client.predict(run_file=handle_file(str(dirs / image)), api_name="/replay")[:2],
    }
    missing = tmp_path / "missing.json"
    bundle = json.loads(Path(client.predict(image=image, api_name="/export_run")).read_text())
    missing.write_text(json.dumps({**bundle, "request": {**bundle["request"], "model": "gone"}}))
    answers["replay missing"] = client.predict(run_file=handle_file(str(missing)), api_name="/replay")[:2]
    for what, value in answers.items():
        text = json.dumps(value, default=str)
        assert not any(root in text for root in roots), f"{what}: {text}"
    assert as_dict(answers["replay"][1])["paths"][0].startswith("outputs/txt2img/")
