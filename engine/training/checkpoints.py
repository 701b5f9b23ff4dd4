"""Checkpoints: a folder written whole under a hidden name, then swapped into place.

A run's checkpoint is ``models_dir/<run>/`` in DDPMPipeline layout (``model_index.json``,
``unet/``, ``scheduler/``), so the model list picks it up and it samples with
``DDPMPipeline.from_pretrained`` (a LoRA run's holds ``pytorch_lora_weights.safetensors`` instead, for
``pipe.load_lora_weights``), plus ``trainer/`` with what a resume needs:

- ``state.json``: step, the request, LR scheduler, optimizer hyper-parameters, EMA
  counters, loss history; written last, so its presence marks a complete checkpoint;
- ``optimizer.safetensors``: AdamW's moments;
- ``rng.safetensors``: every process's generator state;
- ``unet.safetensors``: the raw (non-EMA) weights when EMA is on (``unet/`` then holds EMA's).

Nothing here is pickled. A save writes ``.<run>.saving-<pid>``, flushes it to disk
and exchanges it with ``<run>`` in one atomic ``renameat2(RENAME_EXCHANGE)`` on
Linux (two renames elsewhere, repaired by :func:`recover`), so a process killed at
any point leaves the last good checkpoint loadable.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import logging
import os
import shutil
import threading
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file

from engine.errors import InputError
from engine.files import fsync_path, process_alive

log = logging.getLogger(__name__)

TRAINER_DIR = "trainer"
STATE_FILE = "state.json"
FORMAT = 1  # bumped when the trainer folder's layout changes
_saving: set[Path] = set()  # this process's saves under way (their .saving-<pid> folders)
_saving_lock = threading.Lock()


# -- the atomic folder write ---------------------------------------------------------------
def write_atomically(final: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` to fill a fresh hidden folder, then put it at ``final`` in one step."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.saving-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    with _saving_lock:
        _saving.add(tmp.resolve())
    try:
        write(tmp)
        _fsync_tree(tmp)
        _swap_in(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # after a swap it holds the previous checkpoint
        with _saving_lock:
            _saving.discard(tmp.resolve())
    return final


def _fsync_tree(folder: Path) -> None:
    """Flush every file and folder under ``folder`` so the rename never publishes unwritten data."""
    for path in sorted(folder.rglob("*"), reverse=True):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
    for path in [*(p for p in folder.rglob("*") if p.is_dir()), folder]:
        fsync_path(path)


def _swap_in(tmp: Path, final: Path) -> None:
    if final.exists() and _exchange(tmp, final):
        fsync_path(final.parent)
        return
    old = _old_path(final)
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)  # killed between these two: recover() puts `old` back
    fsync_path(final.parent)
    shutil.rmtree(old, ignore_errors=True)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two folders atomically (Linux ``renameat2``); False where unsupported."""
    if not hasattr(os, "uname") or os.uname().sysname != "Linux":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    result = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if result != 0:
        log.debug("renameat2 failed (errno %d); falling back to two renames", ctypes.get_errno())
        return False
    return True


def _old_path(final: Path) -> Path:
    return final.parent / f".{final.name}.old"


def recover(final: str | Path) -> None:
    """Finish what a killed save left: restore the previous checkpoint, drop temporary folders."""
    final = Path(final)
    old = _old_path(final)
    if not final.exists() and old.is_dir():
        log.warning("restoring checkpoint %s from an interrupted save", final)
        os.replace(old, final)
    for stale in final.parent.glob(f".{final.name}.saving-*"):
        if not _save_in_progress(stale):
            shutil.rmtree(stale, ignore_errors=True)
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)


def _save_in_progress(folder: Path) -> bool:
    """Whether a ``.saving-<pid>`` folder is still being written: by a save of this process that has
    not finished (another thread may be saving while a reader recovers), or by a live other process."""
    pid = folder.name.rsplit("-", 1)[-1]
    if not pid.isdigit():
        return False
    if int(pid) == os.getpid():
        with _saving_lock:
            return folder.resolve() in _saving
    return process_alive(int(pid))


def recover_all(models_dir: str | Path) -> None:
    """:func:`recover` every run under ``models_dir`` (call once at start-up)."""
    root = Path(models_dir)
    if not root.is_dir():
        return
    names = {p.name[1:].split(".saving-")[0] for p in root.glob(".*.saving-*")}
    names |= {p.name[1:-4] for p in root.glob(".*.old")}
    for name in names:
        recover(root / name)


# -- reading and writing the trainer state ---------------------------------------------------
LORA_FILE = "pytorch_lora_weights.safetensors"  # a LoRA run's checkpoint holds this instead of a pipeline


def is_complete(run_dir: str | Path) -> bool:
    run_dir = Path(run_dir)
    saved = (run_dir / "model_index.json").is_file() or (run_dir / LORA_FILE).is_file()
    return saved and (run_dir / TRAINER_DIR / STATE_FILE).is_file()


def list_runs(models_dir: str | Path) -> list[str]:
    """Runs under ``models_dir`` with a complete checkpoint, i.e. the ones that can be resumed."""
    root = Path(models_dir)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if not p.name.startswith(".") and p.is_dir() and is_complete(p))


def read_state(run_dir: str | Path) -> dict:
    """``trainer/state.json`` of a complete checkpoint; :class:`InputError` if there is none."""
    run_dir = Path(run_dir)
    recover(run_dir)
    if not is_complete(run_dir):
        raise InputError(f"run {run_dir.name!r} has no complete checkpoint to resume; start a new run instead")
    state = json.loads((run_dir / TRAINER_DIR / STATE_FILE).read_text())
    if state.get("format") != FORMAT:
        raise InputError(f"the checkpoint of run {run_dir.name!r} has trainer format {state.get('format')!r}; "
                         f"this version reads {FORMAT}")
    return state


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=1, sort_keys=True))


def optimizer_to_files(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """AdamW's state split into tensors (for safetensors) and plain values (for JSON)."""
    state_dict = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, entry in state_dict["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{index}.{key}"] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def optimizer_from_files(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict] = {}
    for name, value in [*tensors.items(), *meta["scalars"].items()]:
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    groups = [{**g, "betas": tuple(g["betas"])} if "betas" in g else g for g in meta["param_groups"]]
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def lr_scheduler_state(lr_scheduler) -> dict:
    state = dict(lr_scheduler.state_dict())
    state.pop("lr_lambdas", None)  # closures; rebuilt from the request
    return state


def load_lr_scheduler(lr_scheduler, state: dict) -> None:
    lr_scheduler.load_state_dict({**state, "lr_lambdas": [None] * len(lr_scheduler.lr_lambdas)})


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path))


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))
