"""LoRA for text to image: training on digits-sd, the file plain diffusers loads, our loop with a LoRA against
StableDiffusionPipeline after load_lora_weights, an exact resume, the base model untouched, bad input refused."""

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from engine.records.runs import iter_saved
from engine.errors import DataError, InputError
from engine.models.devices import resolve_device
from engine.models.loras import METADATA_KEY, architecture
from engine.models.registry import BUILTINS, ModelRegistry
from engine.records.outputs import read_parameters
from engine.sampling.schedulers import make_scheduler
from engine.sampling.txt2img import Txt2ImgRequest, iter_txt2img
from engine.training import checkpoints as ckpt
from engine.training.request import (TrainCheckpoint, TrainDone, TrainSample, TrainStarted, TrainStep,
                                     resume_request)
from tests.training_setups import PROMPTS, lora_request, make_captioned, train_events

BASE = BUILTINS["digits-sd"].folder
SCHEDULER = Txt2ImgRequest(prompt="").scheduler  # what the grids and the page sample with


def tree_hashes(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora")
    make_captioned(root / "data" / "captioned")
    (root / "models").mkdir()
    return root / "models", root / "data"


@pytest.fixture(scope="module")
def trained(dirs):
    """One LoRA run of 6 steps on digits-sd (UNet and text encoder adapters), and the base's hashes around it."""
    models_dir, data_dir = dirs
    before = tree_hashes(BASE)
    events = train_events(lora_request(run_name="lo"), models_dir, data_dir)
    return events, before


def plain_pipeline():
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(BASE, safety_checker=None, requires_safety_checker=False)
    pipe.scheduler = make_scheduler(SCHEDULER, pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def as_uint8(images) -> np.ndarray:
    return (np.asarray(images) * 255).round().astype(int)


def test_lora_file_loads_with_plain_diffusers_and_gives_the_grids_images(trained, dirs):
    events, before = trained
    models_dir, _ = dirs
    # 1. The run: started on digits-sd's resolution, a checkpoint published to loras/, done.
    started, done = events[0], events[-1]
    assert isinstance(started, TrainStarted) and isinstance(done, TrainDone) and done.step == 6
    assert started.info["method"] == "lora" and started.info["prompts"] == list(PROMPTS)
    assert started.data.captioned and started.data.num_images == 16
    (checkpoint,) = [e for e in events if isinstance(e, TrainCheckpoint)]
    assert checkpoint.published == str(models_dir / "loras" / "lo.safetensors")
    assert sorted(p.name for p in (models_dir / "lo").iterdir()) == ["pytorch_lora_weights.safetensors", "trainer"]
    assert ckpt.list_runs(models_dir) == ["lo"]

    # 2. Its metadata: base model, the architecture it fits, settings, steps; diffusers' adapter configs beside.
    with safe_open(checkpoint.published, framework="pt") as f:
        meta = f.metadata()
    info = json.loads(meta[METADATA_KEY])
    assert info["base_model"] == "digits-sd" and info["steps"] == 6 and info["run_name"] == "lo"
    assert info["architecture"] == architecture(BASE) is not None
    assert {k: info["settings"][k] for k in ("lora_rank", "lora_alpha", "lora_layers", "lora_text_encoder",
                                             "learning_rate")} == dict(lora_rank=4, lora_alpha=4.0,
                                                                       lora_layers="attention", lora_text_encoder=True,
                                                                       learning_rate=2e-2)
    adapters = json.loads(meta["lora_adapter_metadata"])
    assert adapters["unet.r"] == 4 and adapters["text_encoder.r"] == 4

    # 3. Plain diffusers loads it (UNet and text encoder) and draws the grid's scale-1 images; without it, the
    #    grid's scale-0 ones. The two sides differ: the adapters do something.
    (sample,) = [e for e in events if isinstance(e, TrainSample)]
    scale0, scale1 = np.split(sample.images.astype(int), 2)  # (2, 32, 32, 3) each: one seed per prompt
    pipe = plain_pipeline()
    pipe.load_lora_weights(str(models_dir / "loras"), weight_name="lo.safetensors", adapter_name="lo")
    assert pipe.get_list_adapters() == {"unet": ["lo"], "text_encoder": ["lo"]}

    def draw():
        return as_uint8(pipe(list(PROMPTS), num_inference_steps=4, guidance_scale=7.5, output_type="np",
                             generator=torch.Generator("cpu").manual_seed(1)).images)

    assert np.abs(draw() - scale1).max() <= 2
    pipe.disable_lora()
    assert np.abs(draw() - scale0).max() <= 2
    assert np.abs(scale1 - scale0).max() > 10
    grid = sample.grid
    assert grid.shape == (2 * 96 + 6, 2 * 96 + 40, 3)  # 2 prompts a side, 96 px tiles, the panels 40 px apart
    assert (grid[:, 96:136] == (31, 41, 55)).all()

    # 4. The base model's files are as they were; the LoRA and the run are not models of their own.
    assert tree_hashes(BASE) == before
    registry = ModelRegistry(models_dir, resolve_device("cpu"))
    assert registry.list_models("txt2img") == ["digits-sd"]
    assert registry.list_loras("digits-sd") == ["lo"]


def test_lora_listed_only_for_models_it_fits(trained, dirs, tiny_sd, tmp_path):
    models_dir, _ = dirs
    tiny_sd.save_pretrained(models_dir / "tiny-sd")
    registry = ModelRegistry(models_dir, resolve_device("cpu"))
    assert registry.list_loras("tiny-sd") == [] and registry.list_loras("digits-sd") == ["lo"]
    with pytest.raises(InputError, match="^" + re.escape(
            "LoRA 'lo' was trained on 'digits-sd', whose UNet and text encoder differ from 'tiny-sd''s; pick a LoRA "
            "trained on 'tiny-sd' or a model like its base") + "$"):
        registry.lora_file("tiny-sd", "lo")
    with pytest.raises(InputError, match="^" + re.escape(
            f"no LoRA 'nope' in {models_dir / 'loras'} (found: lo)") + "$"):
        registry.lora_file("digits-sd", "nope")
    with pytest.raises(Exception, match="is a LoRA or a training run's file, not a model"):
        registry.resolve("loras/lo.safetensors")


@pytest.mark.parametrize("scale", [0.5, 1.0])
def test_our_loop_with_a_lora_equals_the_pipeline_after_load_lora_weights(trained, dirs, scale, tmp_path):
    models_dir, _ = dirs
    registry = ModelRegistry(models_dir, resolve_device("cpu"))
    pipe = registry.load("digits-sd", "txt2img")
    kw = dict(prompt=PROMPTS[0], num_inference_steps=8, guidance_scale=7.5, seed=11, model="digits-sd")
    # 1. Ours: the registry switches the LoRA on at ``scale``; the loop runs as always.
    registry.use_lora(pipe, "digits-sd", "lo", scale)
    done = list(iter_saved("txt2img", iter_txt2img(Txt2ImgRequest(**kw, lora="lo", lora_scale=scale), pipe=pipe),
                           pipe=pipe, outputs_dir=tmp_path))[-1]
    ours = np.asarray(done.images[0]).astype(int)
    # 2. diffusers: StableDiffusionPipeline after load_lora_weights, the scale through cross_attention_kwargs.
    reference = plain_pipeline()
    reference.load_lora_weights(str(models_dir / "loras"), weight_name="lo.safetensors")

    def theirs(lora_scale):
        return as_uint8(reference(PROMPTS[0], num_inference_steps=8, guidance_scale=7.5, output_type="np",
                                  generator=torch.Generator("cpu").manual_seed(11),
                                  cross_attention_kwargs={"scale": lora_scale}).images[0])

    assert np.abs(ours - theirs(scale)).max() <= 2
    assert np.abs(theirs(0.5) - theirs(1.0)).max() > 10  # the comparison would see another scale
    # 3. The PNG's parameters and the code snippet say the LoRA and its scale; the snippet draws the same image.
    assert f"LoRA: lo:{scale:g}" in read_parameters(done.paths[0])
    assert done.info["lora"] == "lo" and done.info["lora_scale"] == scale
    assert f"pipe.load_lora_weights({str(models_dir / 'loras')!r}, weight_name='lo.safetensors')" in done.code
    namespace = {}
    exec(compile(done.code.replace("image.save('image.png')", ""), "snippet", "exec"), namespace)
    assert np.abs(np.asarray(namespace["image"]).astype(int) - ours).max() <= 2
    # 4. Switched off again, the pipeline is the base model's; a request for a LoRA that is not on is refused.
    registry.use_lora(pipe, "digits-sd", "", 1.0)
    base = np.asarray(list(iter_txt2img(Txt2ImgRequest(**kw), pipe=pipe))[-1].images[0]).astype(int)
    assert np.abs(base - theirs(0.0)).max() <= 2
    with pytest.raises(InputError, match=re.escape("the request asks for LoRA 'lo' at scale 1, but the pipeline "
                                                   "has 'none' switched on")):
        list(iter_txt2img(Txt2ImgRequest(**kw, lora="lo"), pipe=pipe))


def test_stopped_and_resumed_lora_run_is_exact(dirs):
    models_dir, data_dir = dirs
    base = dict(max_steps=6, use_ema=True, lr_warmup_steps=2, sample_every=0, learning_rate=1e-2)
    straight = train_events(lora_request(run_name="lo-straight", **base), models_dir, data_dir)
    first = train_events(lora_request(run_name="lo-stopped", **base), models_dir, data_dir, cancel_at=3)
    assert first[-1].stopped and first[-1].step == 3
    resumed = train_events(resume_request(models_dir, "lo-stopped"), models_dir, data_dir)
    assert resumed[0].start_step == 3
    straight_losses = [x for e in straight if isinstance(e, TrainStep) for x in e.losses]
    assert [x for e in resumed if isinstance(e, TrainStep) for x in e.losses] == pytest.approx(straight_losses[3:],
                                                                                                 rel=1e-5)
    for name in ("lo-{}/trainer/lora.safetensors", "lo-{}/trainer/unet.safetensors", "loras/lo-{}.safetensors"):
        a, b = (load_file(models_dir / name.format(which)) for which in ("straight", "stopped"))
        assert a.keys() == b.keys() and len(a) > 0
        assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a), name


@pytest.mark.parametrize("change, error, message", [
    (dict(lora_rank=0), InputError, "LoRA rank must be a whole number from 1 to 1024; got 0"),
    (dict(lora_rank=65), InputError, "LoRA rank 65 is more than the 64 features of the narrowest adapted layer of "
                                     "'digits-sd'; a rank is at most its layer's width: use 1 to 64"),
    (dict(start_from="digits-ddpm"), InputError,
     "cannot start from 'digits-ddpm': it is a DDPMPipeline; a LoRA run needs a text-to-image model "
     "(StableDiffusionPipeline). Fine-tune it with method 'full'"),
    (dict(start_from="scratch"), InputError, "a LoRA run trains adapters on a text-to-image model: start from must "
                                             "name one (e.g. digits-sd), not 'scratch'"),
    (dict(resolution=16), InputError, "resolution 16 differs from 'digits-sd''s 32 px: a LoRA trains at the base "
                                      "model's own resolution; set resolution to 32"),
    (dict(data="uncaptioned"), DataError, "folder 'uncaptioned': 2 of 3 image(s) have no caption: 1.png, 2.png "
                                          "(empty); give each a 'text' in metadata.jsonl or a .txt file beside it"),
    (dict(data="not-images"), DataError, "folder 'not-images' has no readable image (.png, .jpg, .jpeg, .webp, .bmp, "
                                         ".gif, .tif, .tiff); 2 file(s) could not be read: a.png, b.jpg; add images "
                                         "or upload some"),
    (dict(data="digits"), DataError, "'digits' has class labels, not captions; a LoRA run needs captioned images: "
                                     "'digits-captioned' or 'digits-framed' (built in), a folder with metadata.jsonl "
                                     "(a 'text' column) or a .txt beside each image"),
])
def test_bad_lora_input_is_refused_and_nothing_is_written(tmp_path, change, error, message):
    from PIL import Image

    data_dir, models_dir = tmp_path / "data", tmp_path / "models"
    make_captioned(data_dir / "captioned", n=4)
    (data_dir / "uncaptioned").mkdir()
    for i in range(3):
        Image.new("RGB", (32, 32), (i * 60, 0, 0)).save(data_dir / "uncaptioned" / f"{i}.png")
    (data_dir / "uncaptioned" / "0.txt").write_text("a red square")
    (data_dir / "uncaptioned" / "2.txt").write_text("  \n")
    (data_dir / "not-images").mkdir()
    (data_dir / "not-images" / "a.png").write_text("not a png")
    (data_dir / "not-images" / "b.jpg").write_bytes(b"\x00" * 64)
    with pytest.raises(error, match="^" + re.escape(message) + "$"):
        train_events(lora_request(run_name="refused", batch_size=2, **change), models_dir, data_dir)
    assert not models_dir.exists() or list(models_dir.iterdir()) == []


def test_an_upload_keeps_its_captions(tmp_path):
    """Loose images with a .txt each, and a zip with metadata.jsonl: both arrive captioned."""
    import zipfile

    from PIL import Image

    from engine.training.data import load_captioned_data
    from engine.training.uploads import save_uploads

    src = tmp_path / "src"
    make_captioned(src / "zipped", n=4)
    archive = tmp_path / "set.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for p in sorted((src / "zipped").iterdir()):
            z.write(p, f"set/{p.name}")
    loose = []
    for i, colour in enumerate(((255, 0, 0), (0, 0, 255))):
        Image.new("RGB", (32, 32), colour).save(src / f"square{i}.png")
        (src / f"square{i}.txt").write_text(f"a {'red' if i == 0 else 'blue'} square")
        loose += [src / f"square{i}.png", src / f"square{i}.txt"]
    folder = save_uploads([*loose, archive], tmp_path / "data", "captioned-upload")
    data = load_captioned_data("captioned-upload", tmp_path / "data")
    texts = sorted(data.dataset.with_format(None)["text"])
    assert data.report.num_images == 6 and data.report.captioned
    assert texts == sorted(["a red square", "a blue square", "a framed handwritten digit 0",
                            "a handwritten digit 1", "a framed handwritten digit 2", "a handwritten digit 3"])
    assert folder.name == "captioned-upload"


@pytest.mark.parametrize("kw, message", [
    (dict(lora_scale=2.5), "LoRA scale must be a number from 0 to 2; got 2.5"),
    (dict(lora_scale=-0.1), "LoRA scale must be a number from 0 to 2; got -0.1"),
    (dict(lora="../up"), "LoRA '../up' is not a name from the loras folder: 1-64 letters, digits, '.', '_' or '-', "
                         "starting with a letter or digit"),
])
def test_bad_lora_fields_of_a_text_to_image_request(kw, message):
    with pytest.raises(InputError, match="^" + re.escape(message) + "$"):
        Txt2ImgRequest(prompt="a seven", **kw)
