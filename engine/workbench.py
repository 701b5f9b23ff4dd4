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
from engine.devices import resolve_device
from engine.errors import ModelLoadError
from engine.models import BUILTINS, ModelRegistry
from engine.txt2img import Txt2ImgRequest, iter_txt2img

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
