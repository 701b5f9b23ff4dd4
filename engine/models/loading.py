"""Load a diffusers-format folder component by component, reading only what the loops use.

A folder as the hub lays it out may hold, beside each component's safetensors, the same weights as pickles
(``.bin``), ``fp16`` variants, whole checkpoints at its root (``.ckpt``) and components no loop here uses
(``safety_checker``, ``feature_extractor``, ``image_encoder``). :func:`plan` picks, for each component, one
set of weight files: the ``fp16`` variant where one is wanted (CUDA) and there, else the safetensors, else
the pickles, which diffusers and transformers read through ``torch.load(..., weights_only=True)``, never a
full unpickle. Everything else is skipped, never opened, and named in :attr:`LoadPlan.skipped`.

:func:`iter_load` loads the plan one component at a time, yielding a :class:`~engine.events.Loading` before
each and checking the cancel token between them; it returns the pipeline (``pipe = yield from ...``).
"""

from __future__ import annotations

import importlib
import json
import logging
import pickle
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from engine.cancel import CancelToken, check
from engine.errors import ModelLoadError
from engine.events import Loading

log = logging.getLogger(__name__)

# Components of model_index.json no loop here calls: not loaded, no memory. The safety checker is off, as in
# the seed's hand-written loop; the feature extractor only feeds it; the image encoder is for IP-Adapters.
UNUSED_COMPONENTS = ("safety_checker", "feature_extractor", "image_encoder")
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl")  # torch.load formats: read weights-only, if at all
WEIGHT_SUFFIXES = (".safetensors",) + PICKLE_SUFFIXES
LIBRARIES = ("diffusers", "transformers")  # where a component's class may come from; no custom code
VARIANT = "fp16"  # the hub's half-precision copies, used on CUDA only (the CPU computes in fp32)
# The files diffusers and transformers read for a component: ``diffusion_pytorch_model`` (diffusers), ``model`` /
# ``pytorch_model`` (transformers), an optional variant, shards and their index. Other weights beside them (SD 1.5's
# ``diffusion_pytorch_model.non_ema.safetensors``) are never read.
WEIGHTS_FILE = re.compile(r"^(diffusion_pytorch_model|model|pytorch_model)(?P<variant>\.fp16)?"
                          r"(-\d{5}-of-\d{5})?(?P<shard_variant>\.fp16)?\.(?P<ext>safetensors|bin)(\.index\.json)?$")


@dataclass(frozen=True)
class ComponentPlan:
    """One component of the folder and how it is read."""

    name: str  # its subfolder, as model_index.json names it ("unet")
    library: str  # "diffusers" or "transformers"
    class_name: str  # "UNet2DConditionModel"
    weights: tuple[str, ...] = ()  # the weight files read, relative to the folder; () for tokenizers, schedulers
    use_safetensors: bool = True
    variant: str | None = None
    flat: bool = False  # read from the folder itself, as google/ddpm-cat-256 lays out its UNet and scheduler


@dataclass(frozen=True)
class LoadPlan:
    """What loading ``folder`` reads and what it leaves alone."""

    folder: Path
    components: tuple[ComponentPlan, ...]
    unused: tuple[str, ...]  # components of model_index.json passed as None
    skipped: tuple[str, ...]  # weight files never opened, relative to the folder, sorted

    @property
    def files(self) -> list[Path]:
        """``model_index.json`` and every file the load reads (configs, tokenizer files, the chosen weights)."""
        out = {self.folder / "model_index.json"}
        skipped = set(self.skipped)
        for component in self.components:
            found = self.folder.glob("*") if component.flat else (self.folder / component.name).rglob("*")
            for path in found:
                rel = path.relative_to(self.folder).as_posix()
                hidden = any(part.startswith(".") for part in path.relative_to(self.folder).parts)
                if path.is_file() and not hidden and rel not in skipped and (not component.flat or not rel.endswith(
                        (".md", ".gitattributes"))):
                    out.add(path)
        return sorted(out)


def plan(folder: str | Path, *, variant: str | None = None) -> LoadPlan:
    """How to load the diffusers folder ``folder``: ``variant`` ("fp16") where its weights are wanted."""
    folder = Path(folder)
    try:
        index = json.loads((folder / "model_index.json").read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read {folder.name}/model_index.json: {type(exc).__name__}: {exc}") from None
    components, unused = [], []
    for name, value in sorted(index.items()):
        if name.startswith("_") or not isinstance(value, list) or len(value) != 2 or value[1] is None:
            continue
        if name in UNUSED_COMPONENTS:
            unused.append(name)
            continue
        library, class_name = value
        if library not in LIBRARIES:
            raise ModelLoadError(f"component {name!r} of {folder.name} comes from {library!r}; only components of "
                                 f"{' and '.join(LIBRARIES)} are loaded (no custom code)")
        components.append(_component_plan(folder, name, library, class_name, variant))
    read = {w for c in components for w in c.weights}
    skipped = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                     if p.suffix.lower() in WEIGHT_SUFFIXES and p.is_file()
                     and p.relative_to(folder).as_posix() not in read)
    return LoadPlan(folder, tuple(components), tuple(unused), tuple(skipped))


def _component_plan(folder: Path, name: str, library: str, class_name: str, variant: str | None) -> ComponentPlan:
    """The weight files of component ``name`` to read: the wanted variant's safetensors, the plain safetensors,
    the variant's when there is no plain copy, then the same order for pickles."""
    flat = not (folder / name).is_dir()  # an early diffusers layout: the component's files in the folder itself
    found = [(p, m) for p in sorted((folder if flat else folder / name).glob("*"))
             if p.is_file() and (m := WEIGHTS_FILE.match(p.name))]

    def of(safe: bool, with_variant: bool) -> list[Path]:
        return [p for p, m in found if (m["ext"] == "safetensors") == safe
                and bool(m["variant"] or m["shard_variant"]) == with_variant]

    order = [(safe, v) for safe in (True, False) for v in ((True, False) if variant else (False, True))]
    for safe, with_variant in order:
        if chosen := of(safe, with_variant):
            return ComponentPlan(name, library, class_name,
                                 weights=tuple(p.relative_to(folder).as_posix() for p in chosen),
                                 use_safetensors=safe, variant=VARIANT if with_variant else None, flat=flat)
    return ComponentPlan(name, library, class_name, flat=flat)


def tensor_bytes(path: Path) -> int:
    """Bytes of the tensors in weight file ``path``: a safetensors file less its header, a pickle's whole size
    (a sharded checkpoint's index: none)."""
    if path.suffix == ".json":
        return 0
    size = path.stat().st_size
    if path.suffix != ".safetensors":
        return size
    with open(path, "rb") as f:
        return size - 8 - int.from_bytes(f.read(8), "little")  # safetensors: u64 header length, header, data


def iter_load(name: str, folder: str | Path, pipeline_cls, dtype, *, variant: str | None = None,
              extra: dict | None = None, cancel: CancelToken | None = None) -> Iterator[Loading]:
    """Load the folder as ``pipeline_cls`` with components in ``dtype``, yielding a ``Loading`` before each
    component; returns the pipeline. ``name``: the model as the user gave it, for messages and events."""
    load_plan = plan(folder, variant=variant)
    start = time.monotonic()
    loaded = {}
    total = len(load_plan.components)
    for i, component in enumerate(load_plan.components, 1):
        check(cancel)
        yield Loading(model=name, component=component.name, index=i, total=total,
                      elapsed=time.monotonic() - start)
        loaded[component.name] = _load_component(name, load_plan.folder, component, dtype)
    check(cancel)
    # Every component is passed: diffusers reads nothing more, only assembles and checks them.
    pipe = pipeline_cls.from_pretrained(str(load_plan.folder), local_files_only=True, **loaded,
                                        **{u: None for u in load_plan.unused}, **(extra or {}))
    pipe.workbench_skipped = load_plan.skipped + tuple(f"{u}/" for u in load_plan.unused)
    return pipe


def _load_component(name: str, folder: Path, component: ComponentPlan, dtype):
    import torch

    module = importlib.import_module(component.library)
    cls = getattr(module, component.class_name, None)
    if cls is None:
        raise ModelLoadError(f"component {component.name!r} of {name!r} names class {component.class_name!r}, "
                             f"which {component.library} does not have")
    kwargs = {}
    if isinstance(cls, type) and issubclass(cls, torch.nn.Module):
        kwargs = {"use_safetensors": component.use_safetensors, "variant": component.variant,
                  "local_files_only": True, ("dtype" if component.library == "transformers" else "torch_dtype"): dtype}
    try:
        return cls.from_pretrained(str(folder), **({} if component.flat else {"subfolder": component.name}), **kwargs)
    except Exception as exc:  # the registry turns any other into "could not load", its traceback logged
        refusal = _weights_only_refusal(exc)
        if refusal is not None:
            raise not_plain_weights(repr(name), ", ".join(component.weights) or component.name, refusal) from None
        raise


def not_plain_weights(model: str, files: str, refusal: BaseException) -> ModelLoadError:
    """The error for a pickle (``files`` of ``model``) that torch's weights-only unpickler refused."""
    return ModelLoadError(
        f"could not load {model}: {files} is not plain weights: torch's weights-only loader refused it "
        f"({_reason(refusal)}), and nothing in it was run. Get the model's .safetensors files instead, or convert "
        "the file to .safetensors (safetensors.torch.save_file) on a machine where you trust where it came from")


def _weights_only_refusal(exc: BaseException | None) -> BaseException | None:
    """The weights-only unpickler's refusal, where it is somewhere in ``exc``'s chain; else None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, pickle.UnpicklingError) or "Weights only load failed" in str(exc):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def _reason(exc: BaseException) -> str:
    """What torch's refusal says the file holds: "it calls builtins.exec", else the refusal's first line."""
    found = re.search(r"GLOBAL ([\w.]+)", str(exc))
    if found:
        return f"it calls {found.group(1)}, which plain weights never do"
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__
