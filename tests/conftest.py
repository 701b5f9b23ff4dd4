"""Test-wide settings: offline, quiet, temp dirs; shared tiny models."""

import os
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"  # read by huggingface_hub at import: no test may download
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pytest  # noqa: E402


# The suite runs in two processes (pytest-xdist: `make test`'s `-n 2`). Each file is one unit of work, kept whole on
# one worker with its module fixtures; the two files that compile are one unit (one worker, so one compile cache:
# `compile_cache` below). The files with a test marked slow go first, so that neither worker is left alone with a
# long one at the end. (xdist's own `--dist loadgroup` cannot group under pytest 9: it renames `item._nodeid`,
# which pytest 9 no longer reads; the scheduler below groups by path instead.)
COMPILE_GROUP = ("tests/engine/test_fast.py", "tests/engine/test_gpu_bench.py")


def unit_of_work(nodeid: str) -> str:
    path = nodeid.split("::")[0]
    return "compile" if path in COMPILE_GROUP else path


def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadScopeScheduling

    class FileScheduling(LoadScopeScheduling):
        """xdist's loadscope, with the scope of a test its :func:`unit_of_work`, in the collection's order."""

        def _split_scope(self, nodeid: str) -> str:
            return unit_of_work(nodeid)

    config.option.loadscopereorder = False  # the order below (slow files first), not the largest units first
    return FileScheduling(config, log)


def pytest_collection_modifyitems(config, items):
    slow_units = {unit_of_work(item.nodeid) for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: unit_of_work(item.nodeid) not in slow_units)  # stable: the files' order kept


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """One torch thread for the whole suite: on the 2-core test machine the server, Chromium and the
    tests share the cores, and a second OpenMP thread in a worker thread runs many times slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def compile_cache(tmp_path_factory):
    """One torch.compile cache for the session, empty at its start: the compile tests (tests/engine/test_fast.py)
    fill it with the tiny models' compiles, and bench/gpu.py's tiny run (tests/engine/test_gpu_bench.py) reads it,
    so that the suite pays for one cold compile of each, not two."""
    return tmp_path_factory.mktemp("torch-compile")


@pytest.fixture(scope="session")
def tiny_sd():
    from engine.testing.tiny import tiny_sd_pipeline

    pipe = tiny_sd_pipeline(seed=0)
    pipe.set_progress_bar_config(disable=True)
    return pipe


from tests.conftest_app import (app_dirs, client, connected_client, no_training_job_left,  # noqa: E402,F401
                                running_app)  # shared by ui/, reliability/ and browser/
from tests.training_setups import trained_lora  # noqa: E402,F401  (a LoRA trained once for the session)
