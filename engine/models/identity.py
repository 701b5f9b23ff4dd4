"""What a model is, as bytes: the identity a run's record keeps so that a replay can tell the same model
from a changed one.

A folder (a built-in, a diffusers folder under the models dir) is its ``model_index.json`` and every file
of the components it names (weights, configs, tokenizer files), each with its SHA-256; a single
``.safetensors`` file is its own hash and the configs of the folder it is read with; a hub id is the id
and the revision (the snapshot's commit) cached here. Hashes are kept per (file, size, modification
time), so a model is read once per change, not once per run. A loaded model's identity is hashed in the
background (:func:`identity_later`): a 4 GB model's first run does not wait for it, only its record does.
"""

from __future__ import annotations

import hashlib
import json
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

CHUNK = 1 << 20  # bytes read at a time while hashing
_hashes: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256
_lock = threading.Lock()
_background = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model-identity")  # one disk read at a time


def file_sha256(path: str | Path) -> str:
    """The file's SHA-256 (hex), remembered until its size or modification time changes."""
    path = Path(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    with _lock:
        if key in _hashes:
            return _hashes[key]
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
    with _lock:
        _hashes[key] = digest.hexdigest()
    return _hashes[key]


def folder_files(folder: Path, *, configs_only: bool = False) -> list[Path]:
    """``model_index.json`` and the files of the components it names, sorted; hidden files and folders skipped.
    ``configs_only``: the JSON and text files only (a single file's configs)."""
    try:
        index = json.loads((folder / "model_index.json").read_text())
    except (OSError, ValueError):
        index = {}
    components = sorted(k for k, v in index.items()
                        if not k.startswith("_") and isinstance(v, list) and len(v) == 2 and v[1] is not None)
    files = [folder / "model_index.json"] if (folder / "model_index.json").is_file() else []
    for name in components:
        for path in sorted((folder / name).rglob("*")):
            hidden = any(part.startswith(".") for part in path.relative_to(folder).parts)
            if path.is_file() and not hidden and (not configs_only or path.suffix in (".json", ".txt")):
                files.append(path)
    return files


def combined(files: dict[str, str]) -> str:
    """One SHA-256 over the files' names and hashes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(f"{name}\0{files[name]}\n".encode())
    return digest.hexdigest()


def model_identity(ref, config_folder: str | Path | None = None, variant: str | None = None) -> dict:
    """The identity of the model ``ref`` (a registry ``ModelRef``) points at: ``{"name", "source", "sha256", "files"}`` for local
    models (``files``: relative path -> SHA-256 of each file a load reads), ``{"name", "source", "id", "revision"}``
    for a hub id. ``config_folder``: the folder a single file's configs come from; ``variant``: the weights
    variant a load reads ("fp16" on CUDA)."""
    if ref.source == "hub":
        return {"name": ref.name, "source": "hub", "id": ref.location, "revision": hub_revision(ref.location)}
    if ref.source == "single_file":
        path = Path(ref.location)
        files = {path.name: file_sha256(path)}
        if config_folder is not None:
            folder = Path(config_folder)
            files.update({f"config/{p.relative_to(folder).as_posix()}": file_sha256(p)
                          for p in folder_files(folder, configs_only=True)})
    else:
        from engine.models.loading import plan

        folder = Path(ref.location)
        load_plan = plan(folder, variant=variant)
        files = {p.relative_to(folder).as_posix(): file_sha256(p) for p in load_plan.files}
        skipped = list(load_plan.skipped) + [f"{u}/" for u in load_plan.unused]
        if skipped:  # what a hub-layout folder holds that the load never opened
            return {"name": ref.name, "source": ref.source, "sha256": combined(files), "files": files,
                    "skipped": skipped}
    return {"name": ref.name, "source": ref.source, "sha256": combined(files), "files": files}


def identity_later(ref, config_folder: str | Path | None = None, variant: str | None = None) -> Future:
    """:func:`model_identity` computed in a background thread; ``resolved`` waits for it where it is needed."""
    return _background.submit(model_identity, ref, config_folder, variant)


def resolved(identity: dict | Future | None) -> dict | None:
    """A model identity, waiting for it where it is still being hashed (see :func:`identity_later`)."""
    return identity.result() if isinstance(identity, Future) else identity


def hub_revision(repo_id: str) -> str | None:
    """The commit of ``repo_id``'s snapshot in the local hub cache; None where it is not cached."""
    import huggingface_hub

    cached = huggingface_hub.try_to_load_from_cache(repo_id, "model_index.json")
    return Path(cached).parent.name if isinstance(cached, str) else None


def identity_changes(recorded: dict, current: dict) -> list[str]:
    """How ``current`` differs from ``recorded``, one phrase a difference; [] when they are the same model."""
    if recorded.get("source") == "hub" or current.get("source") == "hub":
        if (recorded.get("id"), recorded.get("revision")) == (current.get("id"), current.get("revision")):
            return []
        return [f"revision {current.get('revision') or 'not cached'} here, {recorded.get('revision')} in the run"]
    if recorded.get("sha256") == current.get("sha256"):
        return []
    before, now = recorded.get("files") or {}, current.get("files") or {}
    changes = [f"{name} changed" for name in sorted(before) if name in now and now[name] != before[name]]
    changes += [f"{name} is missing" for name in sorted(before) if name not in now]
    changes += [f"{name} was added" for name in sorted(now) if name not in before]
    return changes or ["its files hash differently"]
