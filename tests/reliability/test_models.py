"""Model strings a hostile user might type: pickles under every name and inside folders reach torch.load only
weights-only, and a booby-trapped one is refused by name without running."""

import numpy as np
import pytest
import torch

from engine.events import Done
from tests.helpers_models import booby_trap

from engine.errors import ModelLoadError
from engine.models.devices import Placement
from engine.models.registry import ModelRegistry

CPU = Placement(torch.device("cpu"), torch.float32)


@pytest.fixture()
def weights_only_loads(monkeypatch):
    """Every torch.load call's ``weights_only``, recorded on the way to the real torch.load."""
    calls, real = [], torch.load

    def recorded(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real(*args, **kwargs)
    monkeypatch.setattr(torch, "load", recorded)
    return calls


def test_a_folder_of_pickle_weights_is_sampled_through_the_weights_only_loader(tmp_path, weights_only_loads):
    """It used to be refused ("holds pickle weights ... safetensors only"), so such a folder could not be sampled."""
    from engine.sampling.unconditional import UnconditionalRequest
    from engine.testing.tiny import tiny_ddpm_pipeline
    from engine.workbench import Folders, Workbench

    tiny_ddpm_pipeline(0).save_pretrained(tmp_path / "models" / "pickled", safe_serialization=False)
    tiny_ddpm_pipeline(0).save_pretrained(tmp_path / "models" / "safe")
    assert not list((tmp_path / "models" / "pickled").rglob("*.safetensors"))
    bench = Workbench(Folders(tmp_path / "models", tmp_path / "data", tmp_path / "outputs"), device="cpu",
                      worker=False)
    images = {}
    for name in ("pickled", "safe"):
        request = UnconditionalRequest(model=name, num_inference_steps=3, scheduler="DDIM", seed=4)
        images[name] = np.asarray([e for e in bench.iter_unconditional(request) if isinstance(e, Done)][0].images[0])
    assert weights_only_loads == [True]  # one file read, weights-only
    assert np.array_equal(images["pickled"], images["safe"])


def test_a_booby_trapped_pickle_in_a_folder_is_refused_by_name_and_never_runs(tmp_path):
    from engine.testing.tiny import tiny_ddpm_pipeline

    marker = tmp_path / "the-pickle-ran"
    tiny_ddpm_pipeline(0).save_pretrained(tmp_path / "trapped", safe_serialization=False)
    trap = booby_trap(tmp_path / "trapped" / "unet" / "diffusion_pytorch_model.bin", marker)
    with pytest.raises(ModelLoadError) as info:
        ModelRegistry(tmp_path, CPU).load("trapped", "unconditional")
    assert str(info.value) == (
        "could not load 'trapped': unet/diffusion_pytorch_model.bin is not plain weights: torch's weights-only loader "
        "refused it (it calls exec, which plain weights never do), and nothing in it was run. Get the model's .safetensors files instead, or convert the file to .safetensors "
        "(safetensors.torch.save_file) on a machine where you trust where it came from")
    assert not marker.exists()
    torch.load(trap, weights_only=False)  # the trap is real: a full unpickle runs it
    assert marker.read_text() == "the pickle ran"


@pytest.mark.parametrize("name", ["model.ckpt", "model.pt", "model.pth", "model.bin", "MODEL.CKPT"])
def test_a_booby_trapped_single_file_is_refused_by_name_and_never_runs(tmp_path, name):
    marker = tmp_path / "the-pickle-ran"
    booby_trap(tmp_path / name, marker)
    with pytest.raises(ModelLoadError, match=rf"^could not load 'models/{name}': {name} is not plain weights: torch's "
                                             r"weights-only loader refused it \(it calls exec, which plain "
                                             r"weights never do\), and nothing in it was run\."):
        ModelRegistry(tmp_path, CPU).load(name, "txt2img")
    assert not marker.exists()


def test_a_pickle_of_something_else_is_not_a_checkpoint(tmp_path):
    torch.save(1, tmp_path / "model.ckpt")  # the number 1: the weights-only loader allows it
    with pytest.raises(ModelLoadError, match=r"is not a whole Stable Diffusion checkpoint in the original"):
        ModelRegistry(tmp_path, CPU).load("model.ckpt", "txt2img")
    (tmp_path / "model.pkl").write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(ModelLoadError, match=r"^'model.pkl' is not a checkpoint file; a single-file model ends in "
                                             r"\.safetensors, \.ckpt, \.pt, \.pth, \.bin$"):
        ModelRegistry(tmp_path, CPU).load("model.pkl", "txt2img")


@pytest.mark.parametrize("name", ["../outside", "/etc", "a/../../b", "..", "models/../../x"])
def test_names_outside_the_models_dir_are_refused(tmp_path, name):
    (tmp_path / "models").mkdir()
    with pytest.raises(ModelLoadError, match=r"is outside the models dir .*; only models under it can be loaded$"):
        ModelRegistry(tmp_path / "models", CPU).load(name, "txt2img")


def test_a_link_out_of_the_models_dir_is_refused(tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "models" / "link").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ModelLoadError, match=r"^'link' is outside the models dir"):
        ModelRegistry(tmp_path / "models", CPU).load("link", "unconditional")
