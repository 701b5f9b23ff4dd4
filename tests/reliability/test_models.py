"""Model strings a hostile user might type: pickles under every name and inside folders never reach torch.load."""

import pytest
import torch

from engine.errors import ModelLoadError
from engine.models.devices import Placement
from engine.models.registry import ModelRegistry

CPU = Placement(torch.device("cpu"), torch.float32)


@pytest.fixture()
def no_torch_load(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("torch.load was called")
    monkeypatch.setattr(torch, "load", refuse)


def test_a_folder_with_pickle_weights_is_refused_before_loading(tmp_path, no_torch_load):
    """It used to reach torch.load (safe only through weights_only=True)."""
    from engine.testing.tiny import tiny_ddpm_pipeline

    tiny_ddpm_pipeline(0).save_pretrained(tmp_path / "pickled", safe_serialization=False)
    registry = ModelRegistry(tmp_path, CPU)
    with pytest.raises(ModelLoadError, match=r"^folder 'pickled' holds pickle weights "
                                             r"\(unet/diffusion_pytorch_model\.bin\), which can run code when "
                                             r"loaded; safetensors only"):
        registry.load("pickled", "unconditional")
    assert "pickled" in registry.list_models("unconditional")  # listed, but refused with the reason


@pytest.mark.parametrize("name", ["model.ckpt", "model.pt", "model.pth", "model.bin", "model.pkl", "MODEL.CKPT"])
def test_pickle_files_are_refused_under_every_ending(tmp_path, name, no_torch_load):
    (tmp_path / name).write_bytes(b"\x80\x04K\x01.")  # a pickle of the number 1
    with pytest.raises(ModelLoadError, match=rf"^'{name}' is a pickle checkpoint, which can run code when loaded"):
        ModelRegistry(tmp_path, CPU).load(name, "txt2img")


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
