"""Find, load and cache models by one ``model`` string.

A model string is, in the order tried:
1. a built-in name (see :data:`BUILTIN_TXT2IMG` / :data:`BUILTIN_UNCONDITIONAL`);
2. a diffusers-format folder under ``models_dir`` (``model_index.json`` inside);
3. a single-file checkpoint under ``models_dir`` (``.safetensors``; ``.ckpt``/``.pt``/``.pth``/``.bin`` weights-only);
4. a hub id (``owner/name``), downloaded where the hub is reachable.
Paths outside ``models_dir`` are refused. A folder loads component by component (:mod:`engine.models.loading`):
safetensors where there are any, pickles (``.bin``, ``.ckpt``) only where a component has nothing else, and
then only through torch's weights-only unpickler. Loaded pipelines are kept while they fit a byte budget.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch

from engine.cancel import CancelToken, check
from engine.events import Loading
from engine.models.devices import Placement, default_cache_bytes, free_memory, pipeline_bytes
from engine.models.identity import identity_later, model_identity
from engine.models.loading import UNUSED_COMPONENTS, VARIANT, iter_load, plan, tensor_bytes
from engine.errors import Cancelled, ModelLoadError
from engine.files import shown_paths
from engine.validation import HUB_ID, given

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]  # engine/models/registry.py -> the repository
BUILTIN_DIR = REPO_ROOT / "builtin_models"  # shipped (or built on first use), never the user's models dir
MAX_NAME_CHARS = 1024  # a model string: a path under the models dir or a hub id, never longer
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")  # pickles: read weights-only
# The pipeline classes each loop runs: a UNet2DConditionModel + VAE + CLIP text encoder for text to image;
# a UNet2DModel with a DDPM-family scheduler for unconditional sampling. Anything else is refused by name.
TXT2IMG_CLASSES = ("StableDiffusionPipeline",)
UNCONDITIONAL_CLASSES = ("DDPMPipeline", "DDIMPipeline", "PNDMPipeline")
KIND_LABELS = {"txt2img": "text-to-image", "unconditional": "unconditional"}
UNET_CLASSES = {"txt2img": "UNet2DConditionModel", "unconditional": "UNet2DModel"}


@dataclass(frozen=True)
class Builtin:
    """A model that ships with the app, trained by the project (``python -m engine.builtin``)."""

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


def default_model(kind: str) -> str:
    """The built-in every tab of ``kind`` ("txt2img" or "unconditional") starts with; an empty model string means it."""
    return next(b.name for b in BUILTINS.values() if b.kind == kind)


def local_config_folder(registry: "ModelRegistry", model: str) -> Path | None:
    """The local folder of ``model``'s configs; None for a hub id not downloaded, or a model not found."""
    try:
        return registry.config_folder(model)
    except ModelLoadError:
        return None


@dataclass(frozen=True)
class ModelRef:
    """Where a model string points."""

    name: str  # the string the user gave
    source: str  # "builtin" | "folder" | "single_file" | "hub"
    location: str  # folder, file or hub id
    pipeline_class: str | None = None  # from model_index.json where known


class ModelRegistry:
    """Resolves model strings and keeps loaded pipelines on the device while they fit a byte budget."""

    def __init__(self, models_dir: str | Path, placement: Placement, *, cache_bytes: int | None = None):
        self.models_dir = Path(models_dir).resolve()
        self.placement = placement
        # Pipelines are kept, least recently used dropped first, while their bytes fit this budget: switching
        # tabs does not reload, and two SD-size models in turn never push the machine into swap.
        self.cache_bytes = default_cache_bytes(placement) if cache_bytes is None else cache_bytes
        self._cache: OrderedDict[str, Any] = OrderedDict()
        self._sizes: dict[str, int] = {}  # cache key -> the pipeline's bytes
        self._loading: dict[str, _PendingLoad] = {}  # loads under way, by cache key
        self._lock = threading.Lock()  # guards the two dicts; never held through a load

    def shown(self, text: str) -> str:
        """``text`` with the models dir and the built-ins' folder as their names (``models/x``), for messages."""
        return shown_paths(text, {"models": self.models_dir, "builtin_models": BUILTIN_DIR})

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
                            if not (p.parent / "config.json").exists() and not p.name.startswith(".")
                            and not self._lora_or_run_file(p))
        return names

    def _lora_or_run_file(self, path: Path) -> bool:
        """A LoRA (under the loras folder) or a training run's file (a LoRA run's adapters, trainer state):
        never a model of its own."""
        from engine.models.loras import LORAS_DIR

        parts = path.relative_to(self.models_dir).parts
        if parts[0] == LORAS_DIR:
            return True
        return any((self.models_dir.joinpath(*parts[:i]) / "trainer" / "state.json").is_file()
                   for i in range(1, len(parts)))

    # -- resolving ---------------------------------------------------------------------
    def resolve(self, name: str) -> ModelRef:
        if name is not None and not isinstance(name, str):
            raise ModelLoadError(f"model must be text: a built-in's name, a folder or file under the models dir, "
                                 f"or a hub id; got {given(name)}")
        name = (name or "").strip()
        if len(name) > MAX_NAME_CHARS:  # no file name is this long: the file system would refuse it (an OSError)
            raise ModelLoadError(f"model must be at most {MAX_NAME_CHARS} characters; got {len(name)}")
        if not name:
            raise ModelLoadError("no model given; pick one from the list or type a folder name under the models dir")
        if any(ord(c) < 32 for c in name):  # a NUL would reach the file system as an error of its own
            raise ModelLoadError(f"unknown model {name!r}: a model name has no control characters")
        if name in BUILTINS:
            b = BUILTINS[name]
            if not (b.folder / "model_index.json").is_file():
                raise ModelLoadError(f"built-in model {name!r} is missing from {b.folder.relative_to(REPO_ROOT)}; "
                                     f"retrain it with `python -m engine.builtin train {name}`")
            return ModelRef(name, "builtin", str(b.folder), _pipeline_class(b.folder))
        candidate = (self.models_dir / name).resolve()
        inside = candidate == self.models_dir or self.models_dir in candidate.parents
        if Path(name).is_absolute() or ".." in Path(name).parts or not inside:
            raise ModelLoadError(
                f"{name!r} is outside the models dir (--models-dir); only models under it can be loaded"
            )
        if candidate.is_dir():
            if not (candidate / "model_index.json").is_file():
                raise ModelLoadError(
                    f"folder {name!r} has no model_index.json; a diffusers-format folder holds "
                    "model_index.json plus unet/, scheduler/ (and vae/, text_encoder/, tokenizer/ for text to image)"
                )
            return ModelRef(name, "folder", str(candidate), _pipeline_class(candidate))
        if candidate.is_file():
            if self._lora_or_run_file(candidate):
                raise ModelLoadError(f"{name!r} is a LoRA or a training run's file, not a model; a LoRA is picked "
                                     "in the LoRA box beside a model")
            if candidate.suffix.lower() not in SINGLE_FILE_SUFFIXES:
                raise ModelLoadError(f"{name!r} is not a checkpoint file; a single-file model ends in "
                                     f"{', '.join(SINGLE_FILE_SUFFIXES)}")
            return ModelRef(name, "single_file", str(candidate), "StableDiffusionPipeline")
        if HUB_ID.match(name):
            return ModelRef(name, "hub", name)
        raise ModelLoadError(
            f"unknown model {name!r}: not a built-in ({', '.join(BUILTINS)}), not a folder or .safetensors "
            "file under the models dir (--models-dir), and not a hub id like 'owner/name'"
        )

    # -- LoRAs ------------------------------------------------------------------------
    def lora_file(self, model: str, lora: str) -> Path | None:
        """The file of LoRA ``lora`` checked to fit ``model`` (by the configs, without loading); None for ""."""
        from engine.models import loras

        name = loras.check_lora_name(lora)
        if not name:
            return None
        path = loras.lora_path(self.models_dir, name)
        try:
            folder = self.config_folder(model)
        except ModelLoadError:
            folder = None
        loras.check_fits(path, name, model, folder)
        return path

    def use_lora(self, pipe, model: str, lora: str, scale: float = 1.0) -> None:
        """Switch LoRA ``lora`` (a name under the loras folder) on in ``pipe``, a loaded ``model``, at ``scale``;
        "" switches any LoRA off."""
        from engine.models import loras

        path = self.lora_file(model, lora)
        loras.activate(pipe, path, scale, name=loras.check_lora_name(lora))

    def list_loras(self, model: str | None = None) -> list[str]:
        """LoRA names under the loras folder; given a model, those that fit it."""
        from engine.models import loras

        if model is None:
            return loras.list_loras(self.models_dir)
        try:
            folder = self.config_folder(model)
        except ModelLoadError:
            return []
        return loras.list_loras(self.models_dir, model=model, model_folder=folder)

    # -- loading -----------------------------------------------------------------------
    def config_folder(self, name: str) -> Path | None:
        """The local diffusers-format folder holding ``name``'s configs; None for a hub id (not here yet)."""
        ref = self.resolve(name)
        if ref.source == "single_file":
            return self._single_file_config(ref)
        return Path(ref.location) if ref.source in ("builtin", "folder") else None

    def load(self, name: str, kind: str):
        """The pipeline for ``name`` on the device, from the cache when it is there (see :meth:`iter_load`)."""
        events = self.iter_load(name, kind)
        while True:
            try:
                next(events)
            except StopIteration as stop:
                return stop.value

    def iter_load(self, name: str, kind: str, *, cancel: CancelToken | None = None) -> Iterator[Loading]:
        """Load ``name`` for the ``kind`` loop, yielding a ``Loading`` before each component (none from the
        cache); returns the pipeline (``pipe = yield from registry.iter_load(...)``). ``cancel`` is checked
        between components.

        The registry's lock guards only the cache's bookkeeping: a load (a hub download included)
        runs outside it, so :meth:`forget` and loads of other models never wait behind one.
        Two callers asking for the same model share one load.
        """
        ref = self.resolve(name)
        check_kind(ref.name, ref.pipeline_class, kind)
        key = f"{kind}:{ref.source}:{ref.location}"
        while True:
            with self._lock:
                if key in self._cache:
                    self._cache.move_to_end(key)
                    return self._cache[key]
                pending = self._loading.get(key)
                owner = pending is None
                if owner:
                    pending = self._loading[key] = _PendingLoad(ref.location)
            if not owner:
                while not pending.done.wait(0.1):  # then look again: the cache has it, or it failed: we try
                    check(cancel)
                continue
            try:
                self._make_room(self._estimate(ref))
                pipe = yield from self._iter_load(ref, kind, cancel)
            finally:
                with self._lock:
                    del self._loading[key]
                    pending.done.set()
            with self._lock:
                if not pending.forgotten:  # a checkpoint rewritten during the load is read afresh next time
                    self._cache[key] = pipe
                    self._sizes[key] = pipeline_bytes(pipe)
            self._make_room(0)
            return pipe

    # -- the cache's budget ----------------------------------------------------------------
    def cached_bytes(self) -> int:
        """Bytes of the pipelines kept (their parameters and buffers)."""
        with self._lock:
            return sum(self._sizes.get(k, 0) for k in self._cache)

    def cached(self) -> list[str]:
        """The cache's keys, least recently used first."""
        with self._lock:
            return list(self._cache)

    def _make_room(self, incoming: int) -> None:
        """Drop the least recently used pipelines until they and ``incoming`` bytes fit the budget (the newest
        stays, however large: it is the one in use), then free them for real."""
        dropped = []
        with self._lock:
            while len(self._cache) > (0 if incoming else 1) and \
                    sum(self._sizes.get(k, 0) for k in self._cache) + incoming > self.cache_bytes:
                key, pipe = self._cache.popitem(last=False)
                dropped.append((key, self._sizes.pop(key, 0)))
                del pipe
        if dropped:
            for key, size in dropped:
                log.info("model cache: dropped %s (%.2f GB) to stay within %.2f GB", key, size / 1e9,
                         self.cache_bytes / 1e9)
            free_memory()

    def _estimate(self, ref: ModelRef) -> int:
        """Bytes ``ref`` will take loaded, from its weight files' sizes (0 where unknown: a hub id not here)."""
        try:
            if ref.source == "single_file":
                return tensor_bytes(Path(ref.location))
            if ref.source in ("builtin", "folder"):
                load_plan = plan(ref.location, variant=self._variant())
                size = sum(tensor_bytes(load_plan.folder / w) for c in load_plan.components for w in c.weights)
                half = any(c.variant for c in load_plan.components) and self.placement.dtype == torch.float32
                return size * (2 if half else 1)
        except (OSError, ModelLoadError):
            pass
        return 0

    def _variant(self) -> str | None:
        """The hub's fp16 weights on CUDA, where the pipeline runs in fp16; the full-precision ones elsewhere."""
        return VARIANT if self.placement.device.type == "cuda" else None

    def forget(self, name: str) -> None:
        """Drop cached pipelines whose location is ``name``'s (after a checkpoint is rewritten)."""
        location = str((self.models_dir / name).resolve())
        with self._lock:
            keys = [k for k in self._cache if k.endswith(":" + location)]
            dropped = [self._cache.pop(k) for k in keys]
            for key in keys:
                self._sizes.pop(key, None)
            for pending in self._loading.values():
                if pending.location == location:
                    pending.forgotten = True
        _release(dropped)

    def _iter_load(self, ref: ModelRef, kind: str, cancel: CancelToken | None = None) -> Iterator[Loading]:
        """Load ``ref`` (no cache), yielding each component's ``Loading``; returns the pipeline on the device."""
        import diffusers

        dtype = self.placement.dtype
        cls_name = ref.pipeline_class or ("StableDiffusionPipeline" if kind == "txt2img" else "DDPMPipeline")
        cls = getattr(diffusers, cls_name, None)
        if cls is None:
            raise ModelLoadError(f"{ref.name!r} names pipeline class {cls_name!r}, which diffusers does not have")
        extra = {"requires_safety_checker": False} if kind == "txt2img" else {}
        try:
            if ref.source == "single_file":
                from engine.models.single_file import load_single_file

                yield Loading(model=ref.name, component=Path(ref.location).name, index=1, total=1)
                pipe = load_single_file(ref.location, self._single_file_config(ref), torch_dtype=dtype)
            else:
                folder = self._download(ref, cls) if ref.source == "hub" else ref.location
                pipe = yield from iter_load(ref.name, folder, cls, dtype, variant=self._variant(), extra=extra,
                                            cancel=cancel)
        except Cancelled:  # Stop during the load, between two components
            raise
        except ModelLoadError as exc:  # ours, naming the file (and a single file's config folder)
            raise ModelLoadError(self.shown(str(exc))) from exc
        except Exception as exc:  # diffusers raises many kinds; all mean "could not load"
            log.warning("loading %r from %s failed", ref.name, ref.location, exc_info=True)  # ours or theirs
            raise ModelLoadError(f"could not load {ref.name!r}: {type(exc).__name__}: {self.shown(str(exc))}") from exc
        check_kind(ref.name, type(pipe).__name__, kind)  # a hub id's class is known only now
        unet = getattr(pipe, "unet", None)
        if type(unet).__name__ != UNET_CLASSES[kind]:
            raise ModelLoadError(f"{ref.name!r} has a {type(unet).__name__} where the {KIND_LABELS[kind]} loop "
                                 f"needs a {UNET_CLASSES[kind]}")
        skipped = getattr(pipe, "workbench_skipped", ())
        if skipped:
            log.info("%r loaded from %s; not read: %s", ref.name, self.shown(ref.location), ", ".join(skipped))
        pipe.set_progress_bar_config(disable=True)
        pipe.to(self.placement.device)
        pipe.workbench_ref = ref  # where it came from, for the code snippet and metadata
        # What it is, for a run's record: hashed in the background (a 4 GB model takes seconds), once per change.
        pipe.workbench_identity = identity_later(ref, self._identity_config(ref), self._variant())
        return pipe

    def _download(self, ref: ModelRef, cls) -> str:
        """A hub id's snapshot folder, fetching only what the load reads: the safetensors (else the pickles) of the
        components the loops use, fp16 ones on CUDA."""
        import huggingface_hub

        try:
            return cls.download(ref.location, use_safetensors=None, variant=self._variant(),
                                **{u: None for u in UNUSED_COMPONENTS})
        except (OSError, huggingface_hub.errors.HfHubHTTPError, ValueError) as exc:
            raise ModelLoadError(_hub_unreachable(ref.name, type(exc).__name__)) from exc

    def _identity_config(self, ref: ModelRef) -> Path | None:
        return self._single_file_config(ref) if ref.source == "single_file" else None

    def identity(self, ref: ModelRef | str) -> dict:
        """The identity of the model ``ref`` (or a model string) points at, as a run's record keeps it
        (see :mod:`engine.models.identity`)."""
        ref = self.resolve(ref) if isinstance(ref, str) else ref
        return model_identity(ref, self._identity_config(ref), self._variant())

    def check_available(self, name: str, kind: str) -> ModelRef:
        """Resolve ``name`` and refuse at once what its load would refuse without reading weights: a pipeline
        of the wrong kind, or a hub id that is neither cached here nor reachable (offline mode)."""
        ref = self.resolve(name)
        check_kind(ref.name, ref.pipeline_class, kind)
        if ref.source == "hub":
            import huggingface_hub

            cached = huggingface_hub.try_to_load_from_cache(ref.location, "model_index.json")
            if huggingface_hub.constants.HF_HUB_OFFLINE and not isinstance(cached, str):
                raise ModelLoadError(_hub_unreachable(ref.name, "offline mode, not in the cache"))
        return ref

    def kind_of(self, name: str) -> str:
        """"txt2img" or "unconditional": the loop ``name`` runs, read from its model_index.json (a hub id's from the
        cache); :class:`ModelLoadError` where it is neither or cannot be told before a download."""
        ref = self.resolve(name)
        pipeline_class = ref.pipeline_class
        if pipeline_class is None and ref.source == "hub":
            import huggingface_hub

            cached = huggingface_hub.try_to_load_from_cache(ref.location, "model_index.json")
            if isinstance(cached, str):
                pipeline_class = _pipeline_class(Path(cached).parent)
        kind = _model_kind(pipeline_class)
        if kind is not None:
            return kind
        if pipeline_class is None:
            raise ModelLoadError(f"cannot tell what kind of model {name!r} is before it is downloaded; "
                                 "run it once in the Text to image or Unconditional tab first")
        raise ModelLoadError(f"{name!r} is a {pipeline_class}, which no loop here runs; supported: "
                             f"{', '.join(TXT2IMG_CLASSES + UNCONDITIONAL_CLASSES)}")

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


@dataclass(eq=False)
class _PendingLoad:
    """A load under way: others asking for the same model wait on ``done``."""

    location: str
    done: threading.Event = field(default_factory=threading.Event)
    forgotten: bool = False  # set by forget() while loading: do not cache the result


def _release(pipes: list) -> None:
    """Free the memory of pipelines that left the cache now. A compiled UNet holds itself in a reference cycle (its
    compiled module, kept with it, wraps it: ``engine.sampling.fast``), which reference counting never frees: only a
    collection does, and in a worker that may come late or never while it holds the model's memory (GPU memory
    on a GPU). A run still using one keeps it until it ends."""
    if not pipes:
        return
    import gc

    import torch

    pipes.clear()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def check_kind(name: str, pipeline_class: str | None, kind: str) -> None:
    """Refuse a pipeline class the ``kind`` loop cannot run, naming the ones it can.

    ``None`` (a hub id before its download) passes here and is checked after the load.
    """
    if pipeline_class is None:
        return
    supported = TXT2IMG_CLASSES if kind == "txt2img" else UNCONDITIONAL_CLASSES
    if pipeline_class in supported:
        return
    other = _model_kind(pipeline_class)
    if other is not None:
        article = "an" if KIND_LABELS[kind][0] in "aeiou" else "a"
        raise ModelLoadError(f"{name!r} is a {pipeline_class}, not {article} {KIND_LABELS[kind]} model; "
                             f"use it in the {KIND_LABELS[other]} tab")
    raise ModelLoadError(f"{name!r} is a {pipeline_class}, which the {KIND_LABELS[kind]} loop cannot run; "
                         f"supported: {', '.join(supported)}")


def _hub_unreachable(name: str, why: str) -> str:
    return (f"could not get {name!r} from the Hugging Face Hub ({why}); the hub is unreachable or offline here. "
            f"On a machine with access run `hf download {name} --local-dir MODELS_DIR/{name.split('/')[-1]}` "
            "and copy the folder under --models-dir, then pick it from the list")


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
