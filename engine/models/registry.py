"""Find, load and cache models by one ``model`` string.

A model string is, in the order tried:
1. a built-in name (see :data:`BUILTIN_TXT2IMG` / :data:`BUILTIN_UNCONDITIONAL`);
2. a diffusers-format folder under ``models_dir`` (``model_index.json`` inside);
3. a single-file ``.safetensors`` checkpoint under ``models_dir``;
4. a hub id (``owner/name``), downloaded where the hub is reachable.
Paths outside ``models_dir`` and pickle checkpoints are refused.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.models.devices import Placement
from engine.errors import ModelLoadError
from engine.validation import HUB_ID

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
BUILTIN_DIR = REPO_ROOT / "builtin_models"  # shipped (or built on first use), never the user's models dir
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl")
TXT2IMG_CLASSES = ("StableDiffusionPipeline",)
UNCONDITIONAL_CLASSES = ("DDPMPipeline", "DDIMPipeline", "PNDMPipeline", "ScoreSdeVePipeline")


@dataclass(frozen=True)
class Builtin:
    """A model that ships with the app, trained by the project (``python -m engine.builtin.recipes``)."""

    name: str
    kind: str  # "txt2img" or "unconditional"
    folder: Path


BUILTINS: dict[str, Builtin] = {
    b.name: b
    for b in (
        Builtin("digits-sd", "txt2img", BUILTIN_DIR / "digits-sd"),
        Builtin("digits-ddpm", "unconditional", BUILTIN_DIR / "digits-ddpm"),
    )
}


@dataclass(frozen=True)
class ModelRef:
    """Where a model string points."""

    name: str  # the string the user gave
    source: str  # "builtin" | "folder" | "single_file" | "hub"
    location: str  # folder, file or hub id
    pipeline_class: str | None = None  # from model_index.json where known


class ModelRegistry:
    """Resolves model strings and keeps the last few loaded pipelines on the device."""

    def __init__(self, models_dir: str | Path, placement: Placement, *, cache_size: int = 2):
        self.models_dir = Path(models_dir).resolve()
        self.placement = placement
        self.cache_size = cache_size  # two pipelines: switching tabs does not reload
        self._cache: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()

    # -- listing -----------------------------------------------------------------------
    def list_models(self, kind: str) -> list[str]:
        """Built-ins of ``kind`` first, then what is under ``models_dir`` (no hub ids)."""
        names = [b.name for b in BUILTINS.values() if b.kind == kind]
        if not self.models_dir.is_dir():
            return names
        for index in sorted(self.models_dir.rglob("model_index.json")):
            folder = index.parent
            if any(p.startswith(".") for p in folder.relative_to(self.models_dir).parts):
                continue  # temporary folders of a save in progress
            if _model_kind(_pipeline_class(folder)) == kind:
                names.append(folder.relative_to(self.models_dir).as_posix())
        if kind == "txt2img":
            names += sorted(p.relative_to(self.models_dir).as_posix() for p in self.models_dir.rglob("*.safetensors")
                            if not (p.parent / "config.json").exists() and not p.name.startswith("."))
        return names

    # -- resolving ---------------------------------------------------------------------
    def resolve(self, name: str) -> ModelRef:
        name = (name or "").strip()
        if not name:
            raise ModelLoadError("no model given; pick one from the list or type a folder name under the models dir")
        if name in BUILTINS:
            b = BUILTINS[name]
            if not (b.folder / "model_index.json").is_file():
                raise ModelLoadError(f"built-in model {name!r} is missing from {b.folder}; retrain it with "
                                     f"`python -m engine.builtin.recipes train {name}`")
            return ModelRef(name, "builtin", str(b.folder), _pipeline_class(b.folder))
        if name.lower().endswith(PICKLE_SUFFIXES):
            raise ModelLoadError(
                f"{name!r} is a pickle checkpoint, which can run code when loaded; safetensors only: "
                "convert it to .safetensors first"
            )
        candidate = (self.models_dir / name).resolve()
        inside = candidate == self.models_dir or self.models_dir in candidate.parents
        if Path(name).is_absolute() or ".." in Path(name).parts or not inside:
            raise ModelLoadError(
                f"{name!r} is outside the models dir {self.models_dir}; only models under it can be loaded"
            )
        if candidate.is_dir():
            if not (candidate / "model_index.json").is_file():
                raise ModelLoadError(
                    f"folder {name!r} has no model_index.json; a diffusers-format folder holds "
                    "model_index.json plus unet/, scheduler/ (and vae/, text_encoder/, tokenizer/ for text to image)"
                )
            return ModelRef(name, "folder", str(candidate), _pipeline_class(candidate))
        if candidate.is_file():
            if candidate.suffix != ".safetensors":
                raise ModelLoadError(f"{name!r} is not a .safetensors file; safetensors only")
            return ModelRef(name, "single_file", str(candidate), "StableDiffusionPipeline")
        if HUB_ID.match(name):
            return ModelRef(name, "hub", name)
        raise ModelLoadError(
            f"unknown model {name!r}: not a built-in ({', '.join(BUILTINS)}), not a folder or .safetensors "
            f"file under {self.models_dir}, and not a hub id like 'owner/name'"
        )

    # -- loading -----------------------------------------------------------------------
    def load(self, name: str, kind: str):
        """The pipeline for ``name`` on the device, from the cache when it is there."""
        ref = self.resolve(name)
        if ref.pipeline_class is not None and _model_kind(ref.pipeline_class) not in (kind, None):
            raise ModelLoadError(f"{name!r} is a {ref.pipeline_class}, not a {kind} model")
        key = f"{kind}:{ref.source}:{ref.location}"
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
            pipe = self._load(ref, kind)
            self._cache[key] = pipe
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
            return pipe

    def forget(self, name: str) -> None:
        """Drop cached pipelines whose location is ``name``'s (after a checkpoint is rewritten)."""
        with self._lock:
            for key in [k for k in self._cache if k.endswith(":" + str((self.models_dir / name).resolve()))]:
                del self._cache[key]

    def _load(self, ref: ModelRef, kind: str):
        import diffusers

        dtype = self.placement.dtype
        cls_name = ref.pipeline_class or ("StableDiffusionPipeline" if kind == "txt2img" else "DDPMPipeline")
        cls = getattr(diffusers, cls_name, None)
        if cls is None:
            raise ModelLoadError(f"{ref.name!r} names pipeline class {cls_name!r}, which diffusers does not have")
        extra = {"safety_checker": None, "requires_safety_checker": False} if kind == "txt2img" else {}
        try:
            if ref.source == "single_file":
                from engine.models.single_file import load_single_file

                pipe = load_single_file(ref.location, self._single_file_config(ref), torch_dtype=dtype)
            elif ref.source == "hub":
                pipe = self._load_hub(ref, cls, dtype, extra)
            else:
                pipe = cls.from_pretrained(ref.location, dtype=dtype, local_files_only=True, **extra)
        except ModelLoadError:
            raise
        except Exception as exc:  # diffusers raises many kinds; all mean "could not load"
            raise ModelLoadError(f"could not load {ref.name!r} from {ref.location}: {type(exc).__name__}: {exc}") from exc
        pipe.set_progress_bar_config(disable=True)
        pipe.to(self.placement.device)
        pipe.workbench_ref = ref  # where it came from, for the code snippet and metadata
        return pipe

    def _load_hub(self, ref: ModelRef, cls, dtype, extra):
        import huggingface_hub

        try:
            return cls.from_pretrained(ref.location, dtype=dtype, **extra)
        except (OSError, huggingface_hub.errors.HfHubHTTPError, ValueError) as exc:
            raise ModelLoadError(
                f"could not get {ref.name!r} from the Hugging Face Hub ({type(exc).__name__}); the hub is "
                "unreachable or offline here. On a machine with access run "
                f"`hf download {ref.name} --local-dir <models-dir>/{ref.name.split('/')[-1]}` "
                "and copy the folder under --models-dir, then pick it from the list"
            ) from exc

    def _single_file_config(self, ref: ModelRef) -> Path:
        """The diffusers-format folder whose configs a single file is read with.

        ``X/`` beside ``X.safetensors`` if it is a diffusers folder, else the first
        text-to-image folder under the models dir, else the built-in.
        """
        path = Path(ref.location)
        beside = path.with_suffix("")
        if (beside / "model_index.json").is_file():
            return beside
        for name in self.list_models("txt2img"):
            if name not in BUILTINS and not name.endswith(".safetensors"):
                return self.models_dir / name
        return Path(self.resolve(next(b.name for b in BUILTINS.values() if b.kind == "txt2img")).location)


def _pipeline_class(folder: Path) -> str | None:
    try:
        return json.loads((folder / "model_index.json").read_text()).get("_class_name")
    except (OSError, ValueError):
        return None


def _model_kind(pipeline_class: str | None) -> str | None:
    if pipeline_class in TXT2IMG_CLASSES:
        return "txt2img"
    if pipeline_class in UNCONDITIONAL_CLASSES:
        return "unconditional"
    return None
