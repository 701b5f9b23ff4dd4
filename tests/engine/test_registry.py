"""Model registry: loads never block forget, unsupported pipelines are refused by name, and a hub id
is never read as a path."""

import json
import threading

import pytest
import torch

from engine.errors import ModelLoadError
from engine.models.devices import Placement
from engine.models.registry import ModelRegistry
from engine.workbench import Folders, Workbench
from tests.helpers import wait_until, waiting

CPU = Placement(torch.device("cpu"), torch.float32)


def test_forget_does_not_wait_behind_a_load(tmp_path, monkeypatch):
    """The training thread's forget at every checkpoint used to wait for a whole model load (a hub download)."""
    registry = ModelRegistry(tmp_path, CPU)
    entered, release = threading.Event(), threading.Event()
    real_load = registry._iter_load

    def slow_load(ref, kind, cancel=None):  # stands in for a long download
        entered.set()
        release.wait(10)
        return (yield from real_load(ref, kind, cancel))

    monkeypatch.setattr(registry, "_iter_load", slow_load)
    loader = threading.Thread(target=registry.load, args=("digits-ddpm", "unconditional"))
    loader.start()
    try:
        assert entered.wait(30)
        registry.forget("some-run")
        # forget returned while the load is still held (were it to wait for the load, it would return only once
        # the load's 10 s wait ran out and the load ended)
        assert loader.is_alive() and waiting(loader) and not release.is_set()
    finally:
        release.set()
        loader.join()


def test_same_model_is_loaded_once_and_a_forgotten_load_is_not_cached(tmp_path, monkeypatch):
    registry = ModelRegistry(tmp_path, CPU)
    calls, release = [], threading.Event()
    real_load = registry._iter_load

    def counted(ref, kind, cancel=None):
        calls.append(ref.name)
        release.wait(10)
        return (yield from real_load(ref, kind, cancel))

    monkeypatch.setattr(registry, "_iter_load", counted)
    results = []
    threads = [threading.Thread(target=lambda: results.append(registry.load("digits-ddpm", "unconditional")))
               for _ in range(3)]
    for t in threads:
        t.start()
    # All three inside load: one loading (held in ``counted``), two waiting for its load to end.
    wait_until(lambda: len(calls) == 1 and all(waiting(t) for t in threads), timeout=30,
               what="one load under way and two callers waiting for it")
    release.set()
    for t in threads:
        t.join()
    assert calls == ["digits-ddpm"] and results[0] is results[1] is results[2]

    # A checkpoint rewritten while its folder loads: that load's pipeline is not kept.
    from engine.testing.tiny import tiny_ddpm_pipeline

    tiny_ddpm_pipeline(0).save_pretrained(tmp_path / "run")
    release.clear()
    loader = threading.Thread(target=registry.load, args=("run", "unconditional"))
    loader.start()
    wait_until(lambda: calls[-1] == "run" and waiting(loader), timeout=30, what="the checkpoint's load under way")
    registry.forget("run")
    release.set()
    loader.join()
    registry.load("run", "unconditional")
    assert calls == ["digits-ddpm", "run", "run"]


def score_sde_folder(path):
    from diffusers import ScoreSdeVePipeline, ScoreSdeVeScheduler

    from engine.testing.tiny import tiny_ddpm_pipeline

    ScoreSdeVePipeline(unet=tiny_ddpm_pipeline(0).unet, scheduler=ScoreSdeVeScheduler()).save_pretrained(path)


def test_pipeline_the_loops_cannot_run_is_refused_and_not_listed(tmp_path):
    """A ScoreSdeVePipeline used to be sampled with a DDPM scheduler built from its config: wrong images."""
    score_sde_folder(tmp_path / "sde")
    registry = ModelRegistry(tmp_path, CPU)
    with pytest.raises(ModelLoadError, match=r"'sde' is a ScoreSdeVePipeline, which the unconditional loop cannot "
                                             r"run; supported: DDPMPipeline, DDIMPipeline, PNDMPipeline"):
        registry.load("sde", "unconditional")
    assert "sde" not in registry.list_models("unconditional")


def test_model_of_the_other_kind_names_its_tab(tmp_path):
    registry = ModelRegistry(tmp_path, CPU)
    with pytest.raises(ModelLoadError, match=r"'digits-sd' is a StableDiffusionPipeline, not an unconditional "
                                             r"model; use it in the text-to-image tab"):
        registry.load("digits-sd", "unconditional")


def test_default_size_of_a_hub_id_is_not_read_from_the_working_directory(tmp_path, monkeypatch):
    """default_size used to read 'owner/name' as a folder relative to the current directory."""
    for part, config in (("unet", {"sample_size": 99}), ("vae", {"block_out_channels": [1, 2]})):
        (tmp_path / "cwd" / "owner" / "name" / part).mkdir(parents=True)
        (tmp_path / "cwd" / "owner" / "name" / part / "config.json").write_text(json.dumps(config))
    monkeypatch.chdir(tmp_path / "cwd")
    bench = Workbench(Folders(tmp_path / "models", tmp_path / "data", tmp_path / "outputs"), device="cpu")
    assert bench.default_size("owner/name") is None
    assert bench.default_size("digits-sd") == (32, 32)


def test_a_failing_load_is_a_model_error_with_its_traceback_in_the_log(tmp_path, monkeypatch, caplog):
    """Our own bugs inside a load used to become a user message with no traceback anywhere."""
    import diffusers

    def broken(*args, **kwargs):
        raise TypeError("a bug in the loader")

    monkeypatch.setattr(diffusers.DDPMPipeline, "from_pretrained", broken)
    registry = ModelRegistry(tmp_path, CPU)
    with pytest.raises(ModelLoadError, match=r"^could not load 'digits-ddpm': TypeError: a bug in the loader$"):
        registry.load("digits-ddpm", "unconditional")
    logged = [r for r in caplog.records if r.name == "engine.models.registry" and r.exc_info]
    assert logged and logged[0].exc_info[0] is TypeError


@pytest.mark.parametrize("how", ["evicted", "forgotten"])
def test_a_compiled_model_that_leaves_the_cache_is_freed(tmp_path, how):
    """A compiled UNet is held in a reference cycle by its compiled module (engine.sampling.fast): leaving the cache
    must free it. Automatic collections are off here, so the outcome does not hang on when one happens to run."""
    import gc
    import weakref

    from engine.sampling import fast
    from engine.testing.tiny import tiny_ddpm_pipeline

    for name in ("a", "b"):
        tiny_ddpm_pipeline(0).save_pretrained(tmp_path / name)
    registry = ModelRegistry(tmp_path, CPU, cache_bytes=1)  # only the newest fits
    unet = registry.load("a", "unconditional").unet
    fast._state(unet).compiled(unet)  # what a run with compile=True builds and keeps with the model
    gone = weakref.ref(unet)
    del unet
    gc.collect()
    gc.disable()
    try:
        assert gone() is not None  # the cache holds it
        if how == "evicted":
            registry.load("b", "unconditional")
        else:
            registry.forget("a")
        assert gone() is None
    finally:
        gc.enable()
