"""The front door: every method the page and app.py call is still there, and the pieces it hands to its wings
(a training run's base size and name) answer through it as before."""

import json
from pathlib import Path

import pytest

from engine.errors import InputError
from engine.models.registry import BUILTINS
from engine.workbench import Folders, Workbench

# Every public method of Workbench: ui/ and app.py reach the engine only through these, by name.
PUBLIC = {
    "start", "close", "shown", "recent_runs", "interrupt", "activity", "list_models", "default_model", "model_kind",
    "check_model", "schedulers", "list_loras", "check_lora", "default_size", "check_image", "iter_txt2img",
    "prompt_tokens", "iter_attention", "compare_columns", "iter_compare", "iter_img2img", "check_img2img",
    "img2img_size", "img2img_start", "iter_strength_strip", "iter_unconditional", "estimate_unconditional",
    "default_steps", "final_image", "history_page", "history_image", "history_thumbnail", "trash_image",
    "read_png_info", "export_run", "iter_replay", "add_noise", "schedule_arrays", "visited_timesteps", "sample_image",
    "schedule_of_model", "schedule_facts", "list_schedule_models", "list_training_data", "save_training_upload",
    "list_runs", "run_settings", "training_base_size", "start_training", "check_training", "resume_training",
    "stop_training",
}


@pytest.fixture()
def bench(tmp_path):
    return Workbench(Folders(tmp_path / "models", tmp_path / "data", tmp_path / "outputs"), device="cpu",
                     worker=False)


def test_every_public_method_is_there():
    methods = {name for name in dir(Workbench) if not name.startswith("_") and callable(getattr(Workbench, name))}
    assert methods == PUBLIC


@pytest.mark.parametrize("call", ["run_settings", "resume_training"])
def test_a_run_name_outside_the_models_dir_is_refused(bench, call):
    with pytest.raises(InputError) as caught:
        getattr(bench, call)("../escape")
    assert str(caught.value) == ("run name '../escape' is not allowed; give the name of a run under the models dir "
                                 "(letters, digits, '.', '_' or '-')")


def test_training_base_size_is_the_models_own(bench):
    ddpm = json.loads((BUILTINS["digits-ddpm"].folder / "unet" / "config.json").read_text())
    sd = Path(BUILTINS["digits-sd"].folder)
    unet, vae = (json.loads((sd / part / "config.json").read_text()) for part in ("unet", "vae"))
    assert bench.training_base_size("digits-ddpm") == ddpm["sample_size"]
    assert bench.training_base_size("digits-sd", "lora") == \
        unet["sample_size"] * 2 ** (len(vae["block_out_channels"]) - 1)  # the VAE's downsampling
    assert bench.training_base_size("scratch") is None
    assert bench.training_base_size("no-such-model") is None
