"""Replay: every run's record (in its PNG, or exported as a small JSON) replays bit for bit on this CPU for each tab
that generates; a changed weight file, a missing model, a newer format or a model outside the models dir stop it
before anything runs; a replay that differs says by how much and what differs."""

import hashlib
import importlib.metadata
import json
import re
import shutil

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from engine.errors import InputError
from engine.models.registry import BUILTINS
from engine.records.pnginfo import read_png_text
from engine.records.replay import CANNOT, DIFFERS, IDENTICAL, WITHIN, ReplayReport
from engine.records.runrecord import image_sha256
from engine.sampling.img2img import Img2ImgRequest
from engine.sampling.txt2img import Txt2ImgRequest
from engine.sampling.unconditional import UnconditionalRequest
from engine.workbench import Folders, Workbench


@pytest.fixture()
def bench(tmp_path):
    """A workbench sampling in this process, with a copy of the built-in unconditional model as 'mine'."""
    shutil.copytree(BUILTINS["digits-ddpm"].folder, tmp_path / "models" / "mine")
    return Workbench(Folders(tmp_path / "models", tmp_path / "data", tmp_path / "outputs"), device="cpu",
                     worker=False)


def saved_images(bench) -> list:
    return sorted(p for p in bench.folders.outputs_dir.rglob("*.png") if ".trash" not in p.parts)


def replay(bench, source) -> tuple[list, ReplayReport]:
    events = list(bench.iter_replay(source))
    return events[:-1], events[-1]


def export(bench, tmp_path, image, name="run.json"):
    path = tmp_path / name
    path.write_text(json.dumps(bench.export_run(image)))
    return path


def test_text_to_image_replays_identically_from_its_exported_file(bench, tmp_path):
    done = list(bench.iter_txt2img(Txt2ImgRequest(prompt="a handwritten digit seven", num_inference_steps=3,
                                                  scheduler="Euler a", seed=-1)))[-1]
    bundle = bench.export_run(done.paths[0])
    # The bundle: the resolved request, the model's files hashed, versions, device, noise and image hashes.
    assert bundle["kind"] == "txt2img" and bundle["request"]["seed"] == done.info["seed"] >= 0
    assert bundle["request"]["width"] == 32 and bundle["image"].startswith("txt2img/")
    unet = BUILTINS["digits-sd"].folder / "unet" / "diffusion_pytorch_model.safetensors"
    assert bundle["model"]["files"]["unet/diffusion_pytorch_model.safetensors"] == \
        hashlib.sha256(unet.read_bytes()).hexdigest()
    assert {k: bundle["environment"][k] for k in ("torch", "diffusers", "device", "dtype")} == {
        "torch": importlib.metadata.version("torch"), "diffusers": importlib.metadata.version("diffusers"),
        "device": "cpu", "dtype": "float32"}
    assert bundle["images_sha256"] == [image_sha256(Image.open(done.paths[0]))]
    assert len(json.dumps(bundle)) < 4000  # one small file
    events, report = replay(bench, export(bench, tmp_path, done.paths[0]))
    assert report.outcome == IDENTICAL and report.max_difference == 0 and report.differences == ()
    assert report.message == (f"Identical: the replay's image hashes as the run's did "
                              f"(sha256 {bundle['images_sha256'][0][:12]}…), bit for bit.")
    assert np.array_equal(np.asarray(Image.open(report.paths[0])), np.asarray(Image.open(done.paths[0])))


def test_unconditional_batch_replays_identically_from_its_png(bench):
    request = UnconditionalRequest(model="mine", scheduler="DDPM", num_inference_steps=4, seed=11, batch_size=2)
    done = list(bench.iter_unconditional(request))[-1]
    assert done.grid  # the PNG given is the batch's grid: its record is the run's
    _, report = replay(bench, done.grid)
    assert report.outcome == IDENTICAL
    replayed = [np.asarray(Image.open(p)) for p in report.paths[:2]]
    assert all(np.array_equal(a, np.asarray(Image.open(b))) for a, b in zip(replayed, done.paths))


def test_a_changed_weight_file_is_detected_and_nothing_runs(bench, tmp_path):
    from safetensors.torch import load_file, save_file

    done = list(bench.iter_unconditional(UnconditionalRequest(model="mine", num_inference_steps=2, seed=3)))[-1]
    run_file = export(bench, tmp_path, done.paths[0])
    weights = bench.folders.models_dir / "mine" / "unet" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(weights)
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] + 1e-3  # a small change: the same shapes, another model
    save_file(tensors, weights)
    before = saved_images(bench)
    events, report = replay(bench, run_file)
    assert events == [] and saved_images(bench) == before
    assert report == ReplayReport(CANNOT, "Cannot replay: the model 'mine' here is not the run's: "
                                          "unet/diffusion_pytorch_model.safetensors changed. Nothing was run.")


def test_a_missing_model_is_named_and_nothing_runs(bench, tmp_path):
    done = list(bench.iter_unconditional(UnconditionalRequest(model="mine", num_inference_steps=2, seed=3)))[-1]
    run_file = export(bench, tmp_path, done.paths[0])
    shutil.rmtree(bench.folders.models_dir / "mine")
    before = saved_images(bench)
    events, report = replay(bench, run_file)
    assert events == [] and saved_images(bench) == before
    assert report.outcome == CANNOT and report.message == (
        "Cannot replay: the model 'mine' is not here (unknown model 'mine': not a built-in (digits-sd, "
        "digits-ddpm), not a folder or .safetensors file under the models dir (--models-dir), and not a hub id like "
        "'owner/name'). Nothing was run.")


def with_record(path, record, pixels=None):
    """The PNG at ``path`` saved again with ``record`` (and ``pixels``, where given) in its chunks."""
    texts = read_png_text(path)
    meta = PngImagePlugin.PngInfo()
    meta.add_text("parameters", texts["parameters"])
    meta.add_text("workbench", json.dumps(record))
    image = Image.fromarray(pixels) if pixels is not None else Image.open(path)
    image.save(path, format="PNG", pnginfo=meta)


def test_a_replay_that_differs_says_by_how_much_and_what_differs(bench, tmp_path):
    """A run made elsewhere (another torch, a GPU) is written here as its record would be: its image three levels
    off ours, its environment another. The replay measures the difference against the run's own image."""
    done = list(bench.iter_txt2img(Txt2ImgRequest(prompt="a seven", num_inference_steps=2, seed=8)))[-1]
    record = json.loads(read_png_text(done.paths[0])["workbench"])
    pixels = np.asarray(Image.open(done.paths[0])).astype(int)
    pixels[0, 0, 0] = pixels[0, 0, 0] + 3 if pixels[0, 0, 0] < 250 else pixels[0, 0, 0] - 3
    elsewhere = pixels.astype(np.uint8)
    environment = {**record["environment"], "torch": "2.9.0", "device": "cuda", "device_name": "NVIDIA H200"}
    with_record(done.paths[0], {**record, "environment": environment,
                                "images_sha256": [image_sha256(elsewhere)]}, elsewhere)
    _, report = replay(bench, done.paths[0])
    torch_here = record["environment"]["torch"]
    assert report.outcome == WITHIN and report.max_difference == 3
    assert report.differences == ("device cpu here, cuda in the run", "device name cpu here, NVIDIA H200 in the run",
                                  f"torch {torch_here} here, 2.9.0 in the run")
    assert report.message == ("Same within 3/255: the replay differs from the run by at most 3 of 255 levels on a "
                              f"pixel. Differences: {'; '.join(report.differences)}.")
    # From its exported file alone, with the run's image gone, the difference cannot be measured: it says so.
    run_file = export(bench, tmp_path, done.paths[0])
    bench.trash_image(bench.export_run(done.paths[0])["image"])
    _, report = replay(bench, run_file)
    assert report.outcome == DIFFERS and report.message.startswith(
        "Differs: the replay's image does not hash as the run's, and the run's own image is not here to measure by "
        "how much (replay its PNG to measure).")


def write_bundle(tmp_path, bench, image, **changes):
    bundle = {**bench.export_run(image), **changes}
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bundle))
    return path


@pytest.mark.parametrize("changes, message", [
    (dict(version=2), "the run file is format version 2, newer than this workbench reads (up to 1); update the "
                      "workbench to replay it"),
    (dict(format="something-else"), "not a run file of this workbench: 'format' must be 'diffusion-workbench-run'"),
    (dict(kind="noise"), "the run file's kind must be one of txt2img, unconditional, img2img, sdedit; got 'noise'"),
    ("model=../outside", "the run file names model '../outside', outside the models dir; only built-ins, models "
                         "under the models dir and hub ids are replayed"),
    ("model=/etc/models/x", "the run file names model '/etc/models/x', outside the models dir; only built-ins, "
                            "models under the models dir and hub ids are replayed"),
    ("steps=0", "steps must be a whole number from 1 to 150; got 0"),
    ("extra=1", "the run file's request has fields this workbench does not know: extra"),
])
def test_bad_run_files_are_refused_before_anything_runs(bench, tmp_path, changes, message):
    done = list(bench.iter_txt2img(Txt2ImgRequest(prompt="a seven", num_inference_steps=1, seed=1)))[-1]
    if isinstance(changes, str):
        key, value = changes.split("=")
        request = bench.export_run(done.paths[0])["request"]
        key = {"steps": "num_inference_steps"}.get(key, key)
        changes = {"request": {**request, key: int(value) if value.isdigit() else value}}
    path = write_bundle(tmp_path, bench, done.paths[0], **changes)
    before = saved_images(bench)
    with pytest.raises(InputError, match=f"^{re.escape(message)}$"):
        list(bench.iter_replay(path))
    assert saved_images(bench) == before


def test_files_that_are_no_run_are_refused(bench, tmp_path):
    (tmp_path / "notes.json").write_text("{not json")
    with pytest.raises(InputError, match="^notes.json is not a run file: not JSON"):
        list(bench.iter_replay(tmp_path / "notes.json"))
    Image.new("RGB", (4, 4)).save(tmp_path / "plain.png")
    with pytest.raises(InputError, match=re.escape("plain.png has no run record: only PNGs this workbench saved can "
                                                   "be replayed (PNG Info reads the settings of others)")):
        list(bench.iter_replay(tmp_path / "plain.png"))
    (tmp_path / "fake.png").write_bytes(b"GIF89a not a png")
    with pytest.raises(InputError, match="^fake.png is not a PNG file"):
        list(bench.iter_replay(tmp_path / "fake.png"))


def test_a_batch_count_grid_is_no_run_to_export(bench):
    events = list(bench.iter_txt2img(Txt2ImgRequest(prompt="a seven", num_inference_steps=1, seed=4), batch_count=2))
    grid = events[-1].grid
    relative = grid.split("outputs/", 1)[1]
    with pytest.raises(InputError, match=re.escape(f"{relative} is the grid of a batch count's runs, not one run; "
                                                   "export one of its images")):
        bench.export_run(grid)


def test_a_run_with_a_lora_replays_identically_and_a_changed_lora_is_detected(bench, tmp_path, trained_lora):
    """The LoRA switched on is part of the run: its file's hash is in the record, and a replay checks it."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from tests.training_setups import install_lora

    install_lora(trained_lora, bench.folders.models_dir, "lo")
    request = Txt2ImgRequest(prompt="a framed handwritten digit seven", num_inference_steps=2, seed=5, lora="lo",
                             lora_scale=0.8)
    done = list(bench.iter_txt2img(request))[-1]
    lora_file = bench.folders.models_dir / "loras" / "lo.safetensors"
    assert done.record["lora"] == {"name": "lo", "sha256": hashlib.sha256(lora_file.read_bytes()).hexdigest()}
    run_file = export(bench, tmp_path, done.paths[0])
    assert replay(bench, run_file)[1].outcome == IDENTICAL
    # The same name, other weights: refused before anything runs.
    with safe_open(str(lora_file), "pt") as f:
        tensors, metadata = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    first = sorted(tensors)[0]
    tensors[first] = tensors[first] * 1.5
    save_file(tensors, str(lora_file), metadata=metadata)
    events, report = replay(bench, run_file)
    assert events == [] and report == ReplayReport(
        CANNOT, "Cannot replay: the LoRA 'lo' here is not the run's: its file hashes otherwise. Nothing was run.")


def picture(size=(40, 32)) -> Image.Image:
    """A small picture for img2img: a gradient with a block, unlike noise."""
    x = np.linspace(0, 255, size[0], dtype=np.uint8)[None, :, None].repeat(size[1], 0).repeat(3, 2)
    x[8:20, 10:24] = (200, 30, 60)
    return Image.fromarray(x)


@pytest.mark.parametrize("model, kind, scheduler", [("", "img2img", "Euler a"), ("mine", "sdedit", "DDPM")])
def test_img2img_and_sdedit_replay_identically_from_their_png_and_file(bench, tmp_path, model, kind, scheduler):
    """An img2img run carries a record (its request without the image, the image's hash) and keeps the image it
    started from in the outputs dir, where a replay finds it; without it, nothing runs."""
    request = Img2ImgRequest(image=picture(), prompt="a seven" if kind == "img2img" else "", strength=0.5,
                             num_inference_steps=4, scheduler=scheduler, seed=-1, model=model)
    done = list(bench.iter_img2img(request))[-1]
    assert done.record["kind"] == kind and done.record["init_sha256"] == image_sha256(picture())
    assert done.record["request"]["seed"] == done.info["seed"] >= 0 and "image" not in done.record["request"]
    _, report = replay(bench, done.paths[0])
    assert report.outcome == IDENTICAL
    assert np.array_equal(np.asarray(Image.open(report.paths[0])), np.asarray(Image.open(done.paths[0])))
    assert replay(bench, export(bench, tmp_path, done.paths[0]))[1].outcome == IDENTICAL
    # The image it started from, gone: refused before anything runs.
    (init,) = (bench.folders.outputs_dir / ".inits").iterdir()
    init.unlink()
    before = saved_images(bench)
    events, report = replay(bench, done.paths[0])
    assert events == [] and saved_images(bench) == before and report == ReplayReport(
        CANNOT, f"Cannot replay: the image the run started from (sha256 {image_sha256(picture())[:12]}…) is not in "
                "this outputs dir, where each img2img run keeps it (.inits/). Nothing was run.")
