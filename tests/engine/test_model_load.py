"""A model's first run: its load says which component is loading and stops on Stop between components; the model's
identity is hashed beside the run, not before it; the cache keeps loaded models within a byte budget."""

import gc
import hashlib
import os
import threading
import weakref

import pytest
import torch

from engine import workbench as workbench_module
from engine.cancel import CancelToken
from engine.errors import Cancelled
from engine.events import Done, Loading, Started, Step
from engine.models import identity
from engine.models.devices import Placement, pipeline_bytes
from engine.models.registry import ModelRegistry
from engine.sampling.txt2img import Txt2ImgRequest
from engine.workbench import Folders, Workbench

CPU = Placement(torch.device("cpu"), torch.float32)
DIGITS_SD_COMPONENTS = ["scheduler", "text_encoder", "tokenizer", "unet", "vae"]


def bench(tmp_path) -> Workbench:
    return Workbench(Folders(tmp_path / "models", tmp_path / "data", tmp_path / "outputs"), device="cpu",
                     worker=False)


def request(**kw) -> Txt2ImgRequest:
    return Txt2ImgRequest(**{"prompt": "seven", "num_inference_steps": 2, "seed": 1, **kw})


def test_the_first_run_says_which_component_is_loading(tmp_path):
    """It used to show nothing between the click and Started ("Step 0/1 · 0.0 s · idle" for a 4 GB model)."""
    events = list(bench(tmp_path).iter_txt2img(request()))
    loading = [e for e in events if isinstance(e, Loading)]
    assert [e.message for e in loading] == [f"Loading model digits-sd: {name} ({i} of 5)"
                                            for i, name in enumerate(DIGITS_SD_COMPONENTS, 1)]
    assert events[:5] == loading and isinstance(events[5], Started)  # all of it before the run starts


def test_stop_during_a_load_stops_it_between_components(tmp_path):
    workbench = bench(tmp_path)
    cancel, seen = CancelToken(), []
    with pytest.raises(Cancelled):
        for event in workbench.iter_txt2img(request(), cancel=cancel):
            seen.append(event)
            if isinstance(event, Loading) and event.component == "text_encoder":
                cancel.cancel()  # Stop pressed while the text encoder loads
    assert [e.component for e in seen] == ["scheduler", "text_encoder"]  # the tokenizer, UNet and VAE never load
    assert workbench.registry.cached() == []  # nothing half-loaded is kept
    assert [type(e) for e in workbench.iter_txt2img(request())][-1] is Done  # the next run loads it whole


def test_the_first_run_does_not_wait_for_the_models_hash(tmp_path, monkeypatch):
    """The identity hash (seconds for a 4 GB model) used to sit between the load and the first step."""
    hashing, release, hashed = threading.Event(), threading.Event(), threading.Event()
    real = identity.file_sha256

    def held(path):  # the hash of a huge model: it goes on until the test lets it
        hashing.set()
        if not release.wait(60):  # a safety net only: with the hash on the run's path no step comes first
            release.set()  # (then let the rest of the files through, so the test fails instead of hanging)
        digest = real(path)
        hashed.set()
        return digest

    monkeypatch.setattr(identity, "file_sha256", held)
    events = bench(tmp_path).iter_txt2img(request())
    first_step = next(e for e in events if isinstance(e, Step))
    assert first_step.step == 1 and hashing.is_set() and not hashed.is_set()
    release.set()
    done = [e for e in events if isinstance(e, Done)][0]  # the record waits for the hash
    monkeypatch.setattr(identity, "file_sha256", real)
    expected = ModelRegistry(tmp_path, CPU).identity("digits-sd")
    assert done.record["model"] == expected and len(expected["files"]) > 5


def test_a_files_hash_is_kept_until_its_size_or_modification_time_changes(tmp_path):
    path = tmp_path / "weights.safetensors"
    path.write_bytes(b"a" * 64)
    first = identity.file_sha256(path)
    stat = path.stat()
    path.write_bytes(b"b" * 64)  # the same size, the old modification time put back: taken as unchanged
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert identity.file_sha256(path) == first == hashlib.sha256(b"a" * 64).hexdigest()  # not read again
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touched: read again
    assert identity.file_sha256(path) == hashlib.sha256(b"b" * 64).hexdigest()


def test_the_cache_keeps_models_within_its_byte_budget_and_frees_the_dropped(tmp_path):
    """It used to keep the last two pipelines whatever their size: two SD 1.5s in fp32 are 8.6 GB."""
    sizes = {name: pipeline_bytes(ModelRegistry(tmp_path, CPU, cache_bytes=0).load(name, kind))
             for name, kind in (("digits-sd", "txt2img"), ("digits-ddpm", "unconditional"))}
    registry = ModelRegistry(tmp_path, CPU, cache_bytes=max(sizes.values()) + 1)  # room for one of them
    sd = registry.load("digits-sd", "txt2img")
    gone = weakref.ref(sd.unet)
    assert registry.cached_bytes() == sizes["digits-sd"]
    del sd
    events = registry.iter_load("digits-ddpm", "unconditional")
    first = next(events)
    assert isinstance(first, Loading) and registry.cached() == []  # room made before the load, not after
    assert gone() is None  # freed, not only forgotten
    for _ in events:
        pass
    assert [k.split(":")[0] for k in registry.cached()] == ["unconditional"]
    assert registry.cached_bytes() == sizes["digits-ddpm"]

    roomy = ModelRegistry(tmp_path, CPU, cache_bytes=sum(sizes.values()))  # room for both: switching reloads nothing
    a, b = roomy.load("digits-sd", "txt2img"), roomy.load("digits-ddpm", "unconditional")
    assert roomy.load("digits-sd", "txt2img") is a and roomy.load("digits-ddpm", "unconditional") is b


def test_the_default_budget_is_a_share_of_the_machines_memory(tmp_path):
    from engine.models.devices import CACHE_FRACTION, total_memory

    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert total_memory(CPU) == memory
    assert ModelRegistry(tmp_path, CPU).cache_bytes == int(memory * CACHE_FRACTION)
    assert bench(tmp_path).registry.cache_bytes == int(memory * CACHE_FRACTION)
    assert Workbench(Folders(tmp_path / "m", tmp_path / "d", tmp_path / "o"), device="cpu", worker=False,
                     model_cache_gb=1.5).registry.cache_bytes == 1_500_000_000
