"""Single-file (LDM layout) export and offline load: parity with the diffusers pipeline it came from."""

import socket

import pytest
import torch

from engine.errors import InputError, ModelLoadError
from engine.models.single_file import load_single_file
from engine.testing.ldm_export import save_single_file
from engine.testing.tiny import tiny_sd_pipeline

COMPONENTS = ("unet", "vae", "text_encoder")


@pytest.fixture(scope="module")
def exported(tiny_sd, tmp_path_factory):
    """The tiny pipeline, its diffusers-format config folder and its single-file export.

    HF_HUB_OFFLINE=1 comes from tests/conftest.py.
    """
    root = tmp_path_factory.mktemp("single_file")
    pipe = tiny_sd
    pipe.save_pretrained(root / "cfg")
    path = save_single_file(pipe, root / "tiny.safetensors")
    return pipe, root / "cfg", path


def _block_network(mp: pytest.MonkeyPatch) -> None:
    """Any attempt to open a connection fails the test (pytest.fail is not an Exception, so no
    ``except Exception`` in diffusers can turn it into a load error)."""

    def refuse(*args, **kwargs):
        pytest.fail(f"network access attempted: {args!r}")

    mp.setattr(socket.socket, "connect", refuse)
    mp.setattr(socket, "create_connection", refuse)


@pytest.fixture
def no_network(monkeypatch):
    _block_network(monkeypatch)


@pytest.fixture(scope="module")
def loaded(exported):
    """The single file loaded back, with the network blocked."""
    _, cfg, path = exported
    with pytest.MonkeyPatch.context() as mp:
        _block_network(mp)
        pipe = load_single_file(path, cfg)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_file_uses_the_ldm_layout(exported):
    from safetensors import safe_open

    pipe, _, path = exported
    with safe_open(str(path), framework="pt") as f:
        keys = set(f.keys())
        q = f.get_tensor("first_stage_model.encoder.mid.attn_1.q.weight")
    # The keys diffusers' loader detects an SD 1.x checkpoint by, and one per component.
    assert "model.diffusion_model.output_blocks.5.0.skip_connection.weight" in keys  # up block 1, resnet 2
    assert "model.diffusion_model.input_blocks.3.0.op.weight" in keys  # down block 0's downsampler
    assert "model.diffusion_model.output_blocks.2.2.conv.weight" in keys  # upsampler after an attention
    assert "first_stage_model.decoder.up.1.upsample.conv.weight" in keys  # decoder blocks numbered in reverse
    assert "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight" in keys
    assert q.shape == (64, 64, 1, 1)  # the LDM VAE holds attention projections as 1x1 convs
    n_params = sum(len(getattr(pipe, c).state_dict()) for c in COMPONENTS)
    assert len(keys) == n_params
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]  # no temp file left behind


@pytest.mark.parametrize("component", COMPONENTS)
def test_round_trip_weights_are_equal(exported, loaded, component):
    original = getattr(exported[0], component).state_dict()
    restored = getattr(loaded, component).state_dict()
    assert original.keys() == restored.keys()
    for key, tensor in original.items():
        assert restored[key].dtype == tensor.dtype, key
        assert torch.equal(restored[key], tensor), key


def test_round_trip_generates_the_same_image(exported, loaded):
    kwargs = dict(prompt="a cat", num_inference_steps=3, height=32, width=32, guidance_scale=5.0, output_type="np")
    image_a = exported[0](**kwargs, generator=torch.Generator("cpu").manual_seed(0)).images  # (1, H, W, 3)
    image_b = loaded(**kwargs, generator=torch.Generator("cpu").manual_seed(0)).images
    assert image_a.shape == (1, 32, 32, 3)
    assert image_a.std() > 0  # a real image, not a constant
    assert (image_a == image_b).all()


def test_round_trip_from_an_empty_cache(exported, tmp_path, monkeypatch, no_network):
    """Nothing comes from (or goes to) the hub cache: a fresh, empty HF home works."""
    import huggingface_hub.constants as hf_constants

    _, cfg, path = exported
    empty = tmp_path / "hf_home"
    empty.mkdir()
    monkeypatch.setenv("HF_HOME", str(empty))
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(empty / "hub"))
    pipe = load_single_file(path, cfg, torch_dtype=torch.float16)
    assert pipe.unet.dtype == torch.float16
    assert not any(empty.iterdir())


@pytest.mark.parametrize("name", ["tiny.SAFETENSORS", "tiny.pkl", "tiny.txt"])
def test_other_suffixes_are_refused(exported, tmp_path, name):
    path = tmp_path / name
    path.write_bytes(exported[2].read_bytes())  # a valid safetensors file under another name
    with pytest.raises(ModelLoadError, match=r"is not a checkpoint file: a single-file model ends in \.safetensors "
                                             r"\(or \.ckpt, \.pt, \.pth, \.bin, read weights-only\)$"):
        load_single_file(path, exported[1])


@pytest.mark.parametrize("name", ["tiny.ckpt", "tiny.pt", "tiny.bin"])
def test_a_pickle_checkpoint_loads_through_the_weights_only_loader(exported, tmp_path, name, monkeypatch):
    """A1111's .ckpt layout ({"state_dict": ...}) as a torch pickle: it used to be refused ("safetensors only")."""
    from safetensors.torch import load_file

    path = tmp_path / name
    torch.save({"state_dict": load_file(exported[2])}, path)
    calls, real = [], torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **kw: calls.append(kw.get("weights_only")) or real(*a, **kw))
    pipe = load_single_file(path, exported[1])
    assert calls and all(w is True for w in calls)
    for component in COMPONENTS:
        original, restored = getattr(exported[0], component).state_dict(), getattr(pipe, component).state_dict()
        assert all(torch.equal(restored[k], t) for k, t in original.items()), component


def test_garbage_file_is_a_model_load_error(exported, tmp_path, no_network):
    path = tmp_path / "garbage.safetensors"
    path.write_bytes(b"\x00\x01this is not a safetensors file" * 10)
    with pytest.raises(ModelLoadError, match="garbage.safetensors") as info:
        load_single_file(path, exported[1])
    assert "not a valid safetensors file" in str(info.value)


def test_truncated_file_is_a_model_load_error(exported, tmp_path, no_network):
    path = tmp_path / "truncated.safetensors"
    path.write_bytes(exported[2].read_bytes()[:4096])  # header intact, tensors cut off
    with pytest.raises(ModelLoadError, match="truncated.safetensors"):
        load_single_file(path, exported[1])


def test_missing_file_and_missing_config_are_refused_before_the_hub(exported, tmp_path, no_network):
    # diffusers would take either for a hub id and try to download it.
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_single_file(tmp_path / "nope.safetensors", exported[1])
    with pytest.raises(ModelLoadError, match="model_index.json") as info:
        load_single_file(exported[2], tmp_path / "no-such-config")
    assert "no-such-config" in str(info.value) and "tiny.safetensors" in str(info.value)


def test_partial_checkpoint_is_refused(exported, tmp_path):
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(exported[2]))
    vae_only = {k: v for k, v in tensors.items() if k.startswith("first_stage_model.")}
    save_file(vae_only, str(tmp_path / "vae.safetensors"))
    with pytest.raises(ModelLoadError, match="no UNet and no text encoder"):
        load_single_file(tmp_path / "vae.safetensors", exported[1])

    # One UNet weight missing: diffusers fails on a meta tensor, far from the cause.
    unet_holey = {k: v for k, v in tensors.items() if k != "model.diffusion_model.out.2.weight"}
    save_file(unet_holey, str(tmp_path / "unet_holey.safetensors"))
    with pytest.raises(ModelLoadError, match="lacks weights"):
        load_single_file(tmp_path / "unet_holey.safetensors", exported[1])

    # One text-encoder weight missing: diffusers would leave it uninitialised without a word.
    te_holey = {k: v for k, v in tensors.items() if not k.endswith("text_model.final_layer_norm.weight")}
    save_file(te_holey, str(tmp_path / "te_holey.safetensors"))
    with pytest.raises(ModelLoadError, match="lacks text_encoder weights.*final_layer_norm.weight"):
        load_single_file(tmp_path / "te_holey.safetensors", exported[1])


def test_config_of_another_architecture_is_a_model_load_error(exported, tmp_path):
    other = tiny_sd_pipeline(seed=0, model_max_length=16)  # text position embedding (16, 32), not (32, 32)
    other.save_pretrained(tmp_path / "other")
    with pytest.raises(ModelLoadError, match="same architecture"):
        load_single_file(exported[2], tmp_path / "other")


def test_export_refuses_other_suffixes_and_overwrites_atomically(exported, tmp_path):
    pipe = exported[0]
    with pytest.raises(InputError, match="safetensors"):
        save_single_file(pipe, tmp_path / "tiny.ckpt")
    target = tmp_path / "out" / "model.safetensors"
    target.parent.mkdir()
    target.write_bytes(b"old")
    assert save_single_file(pipe, target) == target
    assert target.read_bytes() == exported[2].read_bytes()  # deterministic, and the old file replaced
    assert [p.name for p in target.parent.iterdir()] == ["model.safetensors"]
