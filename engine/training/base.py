"""What a run starts from: a new UNet ("scratch"), or a trained model found by the model registry.

A fine-tune (``method="full"``) starts from an unconditional model (a ``DDPMPipeline`` folder such as
google/ddpm-cat-256's layout: ``model_index.json``, ``unet/``, ``scheduler/``); a LoRA run
(``method="lora"``) from a text-to-image one (a ``StableDiffusionPipeline`` folder). Either is named as
the Unconditional or Text to image tab names it: a built-in, a folder under the models dir, or a hub id
where the hub is reachable. The base is only read, never written.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from engine.errors import InputError, ModelLoadError
from engine.models.configs import native_size, unet_side

SCRATCH = "scratch"
METHODS = ("full", "lora")
KIND_OF_METHOD = {"full": "unconditional", "lora": "txt2img"}
WHAT_OF_METHOD = {"full": "a fine-tune", "lora": "a LoRA run"}


@dataclass(frozen=True)
class BaseModel:
    """A model a run starts from."""

    name: str  # as the request names it
    location: str  # a local folder, or a hub id
    source: str  # "builtin" | "folder" | "hub"
    kind: str  # "unconditional" | "txt2img"

    @property
    def local(self) -> bool:
        return self.source != "hub"

    def load_kwargs(self) -> dict:
        """``from_pretrained`` keywords: safetensors only, and no download for a local folder."""
        return {"local_files_only": self.local, "use_safetensors": True}


def resolve_base(name: str, models_dir: str | Path, method: str) -> BaseModel:
    """The model ``name`` as ``method`` needs it; :class:`InputError` (field ``start from``) when it cannot be
    one: unknown, outside the models dir, a single file, a hub id offline, or a model of the other kind."""
    from engine.models.devices import resolve_device
    from engine.models.registry import TXT2IMG_CLASSES, UNCONDITIONAL_CLASSES, ModelRegistry

    kind = KIND_OF_METHOD[method]
    registry = ModelRegistry(models_dir, resolve_device("cpu"))
    try:
        ref = registry.resolve(name)
        if ref.source == "hub":
            registry.check_available(name, kind)  # offline and not cached: refused here, not at the download
    except ModelLoadError as exc:
        raise InputError(f"cannot start from {name!r}: {exc}", field="start from") from exc
    if ref.source == "single_file":
        raise InputError(f"cannot start from {name!r}: a single-file checkpoint; {WHAT_OF_METHOD[method]} "
                         "starts from a diffusers-format folder (model_index.json, unet/, scheduler/ ...)",
                         field="start from")
    found = {**dict.fromkeys(TXT2IMG_CLASSES, "txt2img"), **dict.fromkeys(UNCONDITIONAL_CLASSES, "unconditional")}
    if ref.pipeline_class is not None and found.get(ref.pipeline_class) != kind:
        raise InputError(_wrong_kind(name, ref.pipeline_class, method), field="start from")
    return BaseModel(name, ref.location, ref.source, kind)


def _wrong_kind(name: str, pipeline_class: str | None, method: str) -> str:
    wanted = {"full": "an unconditional model (DDPMPipeline, DDIMPipeline, PNDMPipeline)",
              "lora": "a text-to-image model (StableDiffusionPipeline)"}[method]
    other = {"full": "LoRA (method 'lora') trains adapters on a text-to-image model",
             "lora": "fine-tune it with method 'full'"}[method]
    return (f"cannot start from {name!r}: it is a {pipeline_class}; {WHAT_OF_METHOD[method]} needs {wanted}. "
            f"{other[0].upper()}{other[1:]}")


def check_loaded_kind(base: BaseModel, unet, method: str) -> None:
    """A hub id's class is known only after its download: refuse a UNet of the other kind then."""
    wanted = {"full": "UNet2DModel", "lora": "UNet2DConditionModel"}[method]
    if type(unet).__name__ != wanted:
        raise InputError(_wrong_kind(base.name, f"model with a {type(unet).__name__}", method), field="start from")



def base_size(registry, start_from: str, method: str = "full") -> int | None:
    """The resolution a run starting from ``start_from`` trains at (its model's own, read through ``registry``);
    None for "scratch", a hub id not downloaded, or unreadable configs."""
    if not start_from or start_from == SCRATCH:
        return None
    try:
        folder = registry.config_folder(start_from)
    except ModelLoadError:
        return None
    if folder is None:
        return None
    if method == "lora":
        size = native_size(folder)
        return size[0] if size else None
    return unet_side(folder)
