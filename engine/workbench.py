"""The engine's front door: one object per process that holds the device, the models
and the folders, and offers every tab's work as plain Python calls.

Everything the page can do, a Python caller can do through this class alone.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from engine.cancel import CancelToken
from engine.training.checkpoints import list_runs
from engine.training.data import list_sources, save_uploads
from engine.models.devices import resolve_device
from engine.errors import InputError, ModelLoadError
from engine.models.registry import BUILTINS, ModelRegistry
from engine.training.request import RUN_NAME, TrainRequest, resume_request
from engine.training.jobs import TrainingManager, TrainStatus
from engine.sampling.txt2img import Txt2ImgRequest, iter_txt2img

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Folders:
    models_dir: Path  # user models and the Training tab's checkpoints
    data_dir: Path  # image folders for training
    outputs_dir: Path  # generated PNGs


class Workbench:
    def __init__(self, folders: Folders, device: str = "auto"):
        self.folders = folders
        self.placement = resolve_device(device)
        for folder in (folders.models_dir, folders.data_dir, folders.outputs_dir):
            Path(folder).mkdir(parents=True, exist_ok=True)
        self.registry = ModelRegistry(folders.models_dir, self.placement)
        # One training job at a time, in the background; each checkpoint drops the run's cached pipeline,
        # so the Unconditional tab samples the new weights. accelerate picks mps itself under "auto".
        self.training = TrainingManager(folders.models_dir, folders.data_dir,
                                        device="auto" if device == "mps" else device,
                                        on_checkpoint=lambda name, path: self.registry.forget(name))

    # -- models ----------------------------------------------------------------------
    def list_models(self, kind: str) -> list[str]:
        return self.registry.list_models(kind)

    def default_model(self, kind: str) -> str:
        return next(b.name for b in BUILTINS.values() if b.kind == kind)

    def default_size(self, model: str) -> tuple[int, int] | None:
        """(width, height) a text-to-image model was trained at, read from its configs only."""
        try:
            ref = self.registry.resolve(model)
        except ModelLoadError:
            return None
        folder = Path(ref.location)
        try:
            unet = json.loads((folder / "unet" / "config.json").read_text())
            vae = json.loads((folder / "vae" / "config.json").read_text())
        except (OSError, ValueError):
            return None
        side = int(unet["sample_size"]) * 2 ** (len(vae["block_out_channels"]) - 1)
        return side, side

    # -- text to image ---------------------------------------------------------------
    def iter_txt2img(self, request: Txt2ImgRequest, *, cancel: CancelToken | None = None) -> Iterator:
        pipe = self.registry.load(request.model or self.default_model("txt2img"), "txt2img")
        yield from iter_txt2img(request, pipe=pipe, cancel=cancel, outputs_dir=self.folders.outputs_dir)

    # -- training --------------------------------------------------------------------
    def list_training_data(self) -> list[str]:
        """``digits``, then the folders of images under the data dir."""
        return list_sources(self.folders.data_dir)

    def save_training_upload(self, files: list[str | Path], name: str = "") -> str:
        """Uploaded images and zips saved as a new folder under the data dir; returns its name."""
        return save_uploads(files, self.folders.data_dir, name).name

    def list_runs(self) -> list[str]:
        """Runs under the models dir with a complete checkpoint: the ones that can be resumed."""
        return list_runs(self.folders.models_dir)

    def run_settings(self, run_name: str) -> TrainRequest:
        """The request ``run_name`` was started with, set to resume."""
        return resume_request(self.folders.models_dir, _checked_run_name(run_name))

    def start_training(self, request: TrainRequest) -> TrainStatus:
        """Start ``request`` in the background; returns once its first step is about to run."""
        return self.training.start(request)

    def resume_training(self, run_name: str, **changes) -> TrainStatus:
        """Continue ``run_name`` from its checkpoint; ``changes`` may only touch run control (steps, intervals)."""
        return self.training.start(resume_request(self.folders.models_dir, _checked_run_name(run_name), **changes))

    def stop_training(self, wait: float | None = None) -> TrainStatus:
        """Ask the job to save a checkpoint and end; with ``wait``, wait up to that many seconds for it."""
        status = self.training.stop()
        return self.training.wait(wait) if wait else status


def _checked_run_name(run_name: str) -> str:
    """Run names are plain folder names: nothing that could point outside the models dir."""
    run_name = (run_name or "").strip()
    if not RUN_NAME.match(run_name):
        raise InputError(f"run name {run_name!r} is not allowed; give the name of a run under the models dir "
                         "(letters, digits, '.', '_' or '-')")
    return run_name
