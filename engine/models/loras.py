"""LoRA files: where they live, which models they fit, and switching one on in a loaded pipeline.

A LoRA is one ``.safetensors`` file under ``<models-dir>/loras/`` in the layout
``StableDiffusionPipeline.load_lora_weights`` reads (diffusers' own ``save_lora_weights`` wrote it). The
training engine adds its own metadata (key :data:`METADATA_KEY`): the base model, the architecture it
fits, the run's settings and steps. A LoRA fits a model whose architecture (the UNet's and text
encoder's shapes, read from their configs) is the one it was trained on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path

from engine.errors import InputError

log = logging.getLogger(__name__)

LORAS_DIR = "loras"
METADATA_KEY = "workbench"  # the safetensors metadata entry holding the training engine's JSON
LORA_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MAX_LORA_SCALE = 2.0
# The config entries that decide which weights exist and their shapes.
UNET_SHAPE_KEYS = ("in_channels", "block_out_channels", "layers_per_block", "down_block_types", "up_block_types",
                   "mid_block_type", "cross_attention_dim", "attention_head_dim", "num_attention_heads",
                   "transformer_layers_per_block", "use_linear_projection", "only_cross_attention")
TEXT_SHAPE_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")


def architecture(folder: str | Path) -> str | None:
    """A short fingerprint of a text-to-image model's UNet and text encoder shapes, from ``unet/config.json``
    and ``text_encoder/config.json``; None where they are not readable."""
    folder = Path(folder)
    try:
        unet = json.loads((folder / "unet" / "config.json").read_text())
        text = json.loads((folder / "text_encoder" / "config.json").read_text())
    except (OSError, ValueError):
        return None
    shapes = {"unet": {k: unet.get(k) for k in UNET_SHAPE_KEYS}, "text": {k: text.get(k) for k in TEXT_SHAPE_KEYS}}
    return hashlib.sha256(json.dumps(shapes, sort_keys=True).encode()).hexdigest()[:16]


def loras_dir(models_dir: str | Path) -> Path:
    return Path(models_dir) / LORAS_DIR


def check_lora_name(name: str) -> str:
    """A LoRA's name: its file's stem under the loras folder (a trailing ``.safetensors`` is dropped)."""
    if not isinstance(name, str):
        raise InputError(f"LoRA must be a name from the loras folder; got {name!r}", field="lora")
    name = name.strip().removesuffix(".safetensors")
    if name and not LORA_NAME.match(name):
        raise InputError(f"LoRA {name!r} is not a name from the loras folder: 1-64 letters, digits, '.', '_' or "
                         "'-', starting with a letter or digit", field="lora")
    return name


def lora_path(models_dir: str | Path, name: str) -> Path:
    """The file of LoRA ``name``; :class:`InputError` (field ``lora``) naming the ones there are if it is missing."""
    name = check_lora_name(name)
    path = loras_dir(models_dir) / f"{name}.safetensors"
    if not path.is_file():
        found = ", ".join(list_loras(models_dir)) or "none"
        raise InputError(f"no LoRA {name!r} in {loras_dir(models_dir)} (found: {found})", field="lora")
    return path


def read_info(path: str | Path) -> dict:
    """The training engine's metadata of a LoRA file ({} for a LoRA made elsewhere)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as exc:  # safetensors raises its own kinds for a file that is not one
        raise InputError(f"{Path(path).name} is not a readable safetensors file ({exc})", field="lora") from exc
    try:
        return json.loads(meta.get(METADATA_KEY, "{}"))
    except ValueError:
        return {}


def list_loras(models_dir: str | Path, *, model: str | None = None, model_folder: str | Path | None = None) -> list[str]:
    """LoRA names under the loras folder; given a model, only those that fit it: the same architecture as
    ``model_folder`` (its configs), or, where the folder is unknown (a hub id not downloaded), trained on ``model``."""
    folder = loras_dir(models_dir)
    if not folder.is_dir():
        return []
    names = sorted(p.stem for p in folder.glob("*.safetensors") if LORA_NAME.match(p.stem))
    if model is None and model_folder is None:
        return names
    wanted = architecture(model_folder) if model_folder is not None else None
    fits = []
    for name in names:
        try:
            info = read_info(folder / f"{name}.safetensors")
        except InputError:
            continue
        if (wanted is not None and info.get("architecture") == wanted) or (wanted is None and
                                                                            info.get("base_model") == model):
            fits.append(name)
    return fits


def check_fits(path: Path, name: str, model: str, model_folder: str | Path | None) -> None:
    """Refuse a LoRA trained on another architecture than ``model``'s, naming its base model."""
    info = read_info(path)
    wanted = architecture(model_folder) if model_folder is not None else None
    if wanted is None or "architecture" not in info or info["architecture"] == wanted:
        return  # a LoRA made elsewhere, or a model whose configs are not here: loading it will tell
    raise InputError(f"LoRA {name!r} was trained on {info.get('base_model')!r}, whose UNet and text encoder differ "
                     f"from {model!r}'s; pick a LoRA trained on {model!r} or a model like its base", field="lora")


# -- switching one on ------------------------------------------------------------------------------
def activate(pipe, path: Path | None, scale: float = 1.0, name: str = "") -> None:
    """Switch ``pipe``'s LoRA to the file at ``path`` at ``scale`` (None: none), loading it once (again only
    when the file changed). The same as ``pipe.load_lora_weights(...)`` then ``pipe.set_adapters([name], [scale])``;
    ``pipe.workbench_lora`` records (name, scale, path) for the loop to check and the code snippet to show."""
    loaded: dict[str, tuple] = pipe.__dict__.setdefault("workbench_adapters", {})  # adapter -> its file's key
    if path is None:
        if loaded:
            pipe.disable_lora()
        pipe.workbench_lora = ("", 1.0, None)
        return
    stat = Path(path).stat()
    key = (str(Path(path).resolve()), stat.st_mtime_ns, stat.st_size)
    adapter = "wb-" + hashlib.sha1(repr(key).encode()).hexdigest()[:12]
    stale = [a for a, k in loaded.items() if k[0] == key[0] and a != adapter]  # the same file, since rewritten
    if stale:
        pipe.delete_adapters(stale)
        for a in stale:
            del loaded[a]
    if adapter not in loaded:
        try:
            pipe.load_lora_weights(str(Path(path).parent), weight_name=Path(path).name, adapter_name=adapter)
        except (ValueError, RuntimeError, KeyError) as exc:  # shapes or names that do not fit this model
            raise InputError(f"LoRA {name or Path(path).stem!r} does not fit this model: {exc}", field="lora") from exc
        loaded[adapter] = key
    pipe.enable_lora()
    pipe.set_adapters([adapter], adapter_weights=[float(scale)])
    pipe.workbench_lora = (name or Path(path).stem, float(scale), Path(path))


def active(pipe) -> tuple[str, float]:
    """(name, scale) of the LoRA switched on in ``pipe`` by :func:`activate`; ("", 1.0) for none."""
    name, scale, _ = getattr(pipe, "workbench_lora", ("", 1.0, None))
    return name, scale


def check_active(pipe, name: str, scale: float) -> None:
    """Refuse to run a request whose LoRA is not the one switched on in ``pipe`` (see :func:`activate`)."""
    on, on_scale = active(pipe)
    if on != (name or "") or (name and on_scale != float(scale)):
        raise InputError(f"the request asks for LoRA {name or 'none'!r} at scale {scale:g}, but the pipeline has "
                         f"{on or 'none'!r}{f' at scale {on_scale:g}' if on else ''} switched on; switch it with "
                         "engine.models.loras.activate (the workbench does this when it loads the model)",
                         field="lora")
