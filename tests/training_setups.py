"""The training, fine-tune and LoRA setups the tests share (one of each: look here before writing one): the data
folders, the LoRA request, a run's events, a LoRA trained once for the whole session, and the API's training status
waited on."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

PROMPTS = ("a framed handwritten digit seven", "a handwritten digit one")  # a LoRA run's validation prompts


# -- data folders --------------------------------------------------------------------------------------------------
def write_digits(folder: Path, n: int) -> str:
    """``n`` of scikit-learn's digits as grey 32 px PNGs (the data digits-ddpm was trained on) into ``folder``; its
    name (a data folder's name, as a request gives it)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    folder.mkdir(parents=True, exist_ok=True)
    for i, pixels in enumerate(load_digits().images[:n]):
        Image.fromarray(np.round(pixels * 255 / 16).astype(np.uint8), mode="L").resize((32, 32)).save(
            folder / f"{i:02d}.png")
    return folder.name


def make_captioned(folder: Path, n: int = 16) -> None:
    """``n`` digits, every other framed; captions in metadata.jsonl for the first half, .txt files for the rest."""
    from PIL import Image
    from sklearn.datasets import load_digits

    from engine.builtin.lora_proof import digit_image, draw_frame

    folder.mkdir(parents=True)
    digits = load_digits()
    rows = []
    for i in range(n):
        label = int(digits.target[i])
        image = digit_image(digits.images[i])
        framed = i % 2 == 0
        Image.fromarray(draw_frame(image) if framed else image, mode="L").save(folder / f"{i:02d}.png")
        text = f"a {'framed ' if framed else ''}handwritten digit {label}"
        if i < n // 2:
            rows.append({"file_name": f"{i:02d}.png", "text": text})
        else:
            (folder / f"{i:02d}.txt").write_text(text)
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


# -- runs through the engine ---------------------------------------------------------------------------------------
def lora_request(**kw):
    """A LoRA run on digits-sd of 6 steps (UNet and text encoder adapters) on the folder ``captioned``."""
    from engine.training.request import TrainRequest

    settings = dict(data="captioned", start_from="digits-sd", method="lora", resolution=32, batch_size=4, max_steps=6,
                    learning_rate=2e-2, lr_warmup_steps=0, lora_rank=4, lora_alpha=4.0, lora_text_encoder=True,
                    use_ema=False, save_every=0, sample_every=6, first_sample_step=0, sample_images=2,
                    sample_num_inference_steps=4, validation_prompts=" | ".join(PROMPTS), log_every=1, seed=1)
    return TrainRequest(**{**settings, **kw})


def train_events(request, models_dir, data_dir, *, cancel_at: int | None = None) -> list:
    """Every event of a training run on the CPU; Stop pressed once a step reaches ``cancel_at``."""
    from engine.cancel import CancelToken
    from engine.training.loop import iter_train
    from engine.training.request import TrainStep

    cancel = CancelToken()
    events = []
    for event in iter_train(request, models_dir=models_dir, data_dir=data_dir, cancel=cancel, device="cpu"):
        events.append(event)
        if cancel_at is not None and isinstance(event, TrainStep) and event.step >= cancel_at:
            cancel.cancel()
    return events


@pytest.fixture(scope="session")
def trained_lora(tmp_path_factory) -> Path:
    """A LoRA file trained for two steps on digits-sd (no samples), once for the session: tests that need a LoRA,
    not a LoRA run, put a copy where they want it (``install_lora``)."""
    root = tmp_path_factory.mktemp("lora-once")
    make_captioned(root / "data" / "captioned")
    train_events(lora_request(run_name="lo", max_steps=2, sample_every=0), root / "models", root / "data")
    return root / "models" / "loras" / "lo.safetensors"


def install_lora(lora_file: Path, models_dir: Path, name: str) -> Path:
    """A copy of ``lora_file`` as LoRA ``name`` in ``models_dir``'s loras folder (where a LoRA run publishes)."""
    from engine.models.loras import LORAS_DIR

    target = Path(models_dir) / LORAS_DIR / f"{name}.safetensors"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(lora_file, target)
    return target


# -- runs through the API ------------------------------------------------------------------------------------------
def train_status(client) -> tuple[dict, object]:
    """(status, sample grid) as /train_status gives them to the page."""
    from tests.helpers import as_dict

    value, grid = client.predict(api_name="/train_status")
    return as_dict(value), grid


def wait_for_status(client, predicate, timeout: float = 120.0, what: str = "the status") -> tuple[dict, object]:
    """/train_status's (status, grid) once ``predicate(status, grid)`` holds; fails at once if the job ends first."""
    from tests.helpers import wait_until

    def seen():
        status, grid = train_status(client)
        if predicate(status, grid):
            return status, grid
        assert status["state"] in ("starting", "running", "stopping"), f"the job ended early: {status}"
        return None

    return wait_until(seen, timeout=timeout, what=what, every=0.2)
