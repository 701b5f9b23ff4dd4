"""A model folder as the hub lays it out loads from what the loops read: safetensors beside pickles (the pickles
never opened), the fp16 variant only where wanted, unused components (safety checker, feature extractor) neither
loaded nor in the way."""

import logging

import pytest
import torch

from engine.models.devices import Placement
from engine.models.loading import iter_load, plan
from engine.models.registry import ModelRegistry
from tests.helpers_models import hub_layout_sd

CPU = Placement(torch.device("cpu"), torch.float32)


@pytest.fixture(scope="module")
def hub_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    marker = root / "the-pickle-ran"
    hub_layout_sd(root / "models" / "sd15", marker)
    return root / "models", marker


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k].float(), sb[k].float()) for k in sa)


def test_hub_layout_loads_from_the_safetensors_alone(hub_folder, caplog):
    """It used to be refused: "holds pickle weights (text_encoder/pytorch_model.bin, ...) ... safetensors only"."""
    from engine.testing.tiny import tiny_sd_pipeline

    models, marker = hub_folder
    caplog.set_level(logging.INFO)
    registry = ModelRegistry(models, CPU)
    pipe = registry.load("sd15", "txt2img")
    assert not marker.exists()  # no pickle was fully unpickled (each would have written it)
    assert pipe.safety_checker is None and pipe.feature_extractor is None
    assert pipe.unet.dtype == torch.float32
    expected = tiny_sd_pipeline(0)  # the plain safetensors' weights, not the fp16 variant's (seed 1)
    for name in ("unet", "vae", "text_encoder"):
        assert same_weights(getattr(pipe, name), getattr(expected, name)), name
    skipped = pipe.workbench_identity.result()["skipped"]
    assert skipped == ["safety_checker/pytorch_model.bin", "text_encoder/model.fp16.safetensors",
                       "text_encoder/pytorch_model.bin", "unet/diffusion_pytorch_model.bin",
                       "unet/diffusion_pytorch_model.fp16.safetensors", "unet/diffusion_pytorch_model.non_ema.bin",
                       "unet/diffusion_pytorch_model.non_ema.safetensors", "v1-5-pruned-emaonly.ckpt",
                       "vae/diffusion_pytorch_model.bin", "vae/diffusion_pytorch_model.fp16.safetensors",
                       "feature_extractor/", "safety_checker/"]
    said = [r.getMessage() for r in caplog.records if r.name == "engine.models.registry" and "not read" in r.getMessage()]
    assert said == ["'sd15' loaded from models/sd15; not read: " + ", ".join(skipped)]
    # The run's record hashes what was read, not the skipped files.
    files = pipe.workbench_identity.result()["files"]
    assert "unet/diffusion_pytorch_model.safetensors" in files and not set(files) & set(skipped)


def test_the_fp16_variant_is_read_where_it_is_wanted(hub_folder):
    """On CUDA the registry asks for variant "fp16"; here the same load, in fp16 on the CPU."""
    from diffusers import StableDiffusionPipeline

    from engine.testing.tiny import tiny_sd_pipeline

    models, marker = hub_folder
    assert {c.name: c.variant for c in plan(models / "sd15", variant="fp16").components if c.weights} == \
        {"text_encoder": "fp16", "unet": "fp16", "vae": "fp16"}
    assert all(c.variant is None for c in plan(models / "sd15").components)
    events = iter_load("sd15", models / "sd15", StableDiffusionPipeline, torch.float16, variant="fp16",
                       extra={"requires_safety_checker": False})
    pipe = None
    while pipe is None:
        try:
            next(events)
        except StopIteration as stop:
            pipe = stop.value
    assert pipe.unet.dtype == torch.float16 and not marker.exists()
    expected = tiny_sd_pipeline(1).to(torch.float16)  # the variant's weights
    assert same_weights(pipe.unet, expected.unet) and not same_weights(pipe.unet, tiny_sd_pipeline(0).unet)


def test_a_component_from_another_library_is_refused_by_name(tmp_path):
    import json

    from engine.errors import ModelLoadError
    from engine.testing.tiny import tiny_sd_pipeline

    tiny_sd_pipeline(0).save_pretrained(tmp_path / "custom")
    index = json.loads((tmp_path / "custom" / "model_index.json").read_text())
    index["unet"] = ["my_package", "MyUNet"]
    (tmp_path / "custom" / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ModelLoadError, match=r"^component 'unet' of custom comes from 'my_package'; only components "
                                             r"of diffusers and transformers are loaded \(no custom code\)$"):
        ModelRegistry(tmp_path, CPU).load("custom", "txt2img")


def test_the_early_flat_layout_of_ddpm_cat_256_loads_from_its_safetensors(tmp_path):
    """google/ddpm-cat-256 keeps its UNet's config and weights (.bin and .safetensors) and the scheduler's config
    beside model_index.json, with no unet/ or scheduler/ folder."""
    import json
    import shutil

    from engine.models.configs import unet_side
    from engine.testing.tiny import tiny_ddpm_pipeline
    from tests.helpers_models import booby_trap

    folder, marker = tmp_path / "ddpm-cat-256", tmp_path / "the-pickle-ran"
    tiny_ddpm_pipeline(0).save_pretrained(folder)
    for name in ("unet/config.json", "unet/diffusion_pytorch_model.safetensors", "scheduler/scheduler_config.json"):
        shutil.move(folder / name, folder / name.split("/")[1])
    shutil.rmtree(folder / "unet"), shutil.rmtree(folder / "scheduler")
    booby_trap(folder / "diffusion_pytorch_model.bin", marker)
    (folder / "README.md").write_text("a model card")
    assert json.loads((folder / "model_index.json").read_text())["unet"] == ["diffusers", "UNet2DModel"]

    pipe = ModelRegistry(tmp_path, CPU).load("ddpm-cat-256", "unconditional")
    assert same_weights(pipe.unet, tiny_ddpm_pipeline(0).unet) and not marker.exists()
    assert unet_side(folder) == 16
    record = pipe.workbench_identity.result()
    assert record["skipped"] == ["diffusion_pytorch_model.bin"]
    assert sorted(record["files"]) == ["config.json", "diffusion_pytorch_model.safetensors", "model_index.json",
                                       "scheduler_config.json"]


def test_a_hub_id_in_the_cache_loads_as_its_folder_does(hub_folder, tmp_path, monkeypatch):
    """The hub id's snapshot, laid out as the SD 1.5 repo is, offline: the same skipping as a folder."""
    import shutil

    import huggingface_hub.constants as hf_constants

    models, marker = hub_folder
    repo = tmp_path / "hub" / "models--owner--tiny-sd15"
    shutil.copytree(models / "sd15", repo / "snapshots" / ("0" * 40))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    registry = ModelRegistry(tmp_path / "models", CPU)
    registry.check_available("owner/tiny-sd15", "txt2img")
    pipe = registry.load("owner/tiny-sd15", "txt2img")
    assert pipe.safety_checker is None and not marker.exists()
    assert "v1-5-pruned-emaonly.ckpt" in pipe.workbench_skipped and "safety_checker/" in pipe.workbench_skipped
    assert pipe.workbench_identity.result() == {"name": "owner/tiny-sd15", "source": "hub", "id": "owner/tiny-sd15",
                                                "revision": "0" * 40}
