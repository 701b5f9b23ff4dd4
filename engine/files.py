"""Files as the app writes and names them: the one atomic-write helper, paths as a person reads them, and the
folders a workbench owns (:class:`Folders`).

Folders (training checkpoints) are swapped in whole by :mod:`engine.training.checkpoints`,
which uses :func:`fsync_path` from here.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping

from engine.errors import StorageError

log = logging.getLogger(__name__)
PARTIAL = re.compile(r"^\..+\.(\d+)-[^.]*\.tmp$")  # a write under way: .<name>.<pid>-<random>.tmp
_writing: set[str] = set()  # this process's partial writes under way
_writing_lock = threading.Lock()


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a hidden temporary path beside ``path``; when the block ends without an error the
    file is flushed to disk and renamed onto ``path`` in one step, else it is removed.

    The temporary name starts with '.' and ends in '.tmp', so model and image lists skip it; it
    holds the writer's process id, so :func:`remove_partial_writes` can tell a killed writer's.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with partial_path(path.parent, path.name, folder=False) as tmp:
            yield tmp
            fsync_path(tmp)
            os.replace(tmp, path)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise disk_full(path) from exc
        raise


def disk_full(path: Path) -> StorageError:
    """The error of a write to ``path`` that found no space left."""
    return StorageError(f"No space left on device: {path.name} was not saved in {path.parent.name}/; nothing saved "
                        "before was lost (files are written whole or not at all). Free some space and try again.")


@contextlib.contextmanager
def partial_path(parent: Path, name: str, *, folder: bool) -> Iterator[Path]:
    """A fresh hidden file (or ``folder``) in ``parent`` for ``name`` being written, named as :data:`PARTIAL`
    says, and removed when the block ends (a rename inside it has already put the result in place)."""
    make = tempfile.mkdtemp if folder else tempfile.mkstemp
    made = make(dir=parent, prefix=f".{name}.{os.getpid()}-", suffix=".tmp")
    tmp = Path(made if folder else made[1])
    if not folder:
        os.close(made[0])
    with _writing_lock:
        _writing.add(str(tmp))
    try:
        yield tmp
    finally:
        if folder:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        with _writing_lock:
            _writing.discard(str(tmp))


def remove_partial_writes(root: str | os.PathLike, pattern: str = "**/.*.tmp") -> list[str]:
    """Delete the partial writes (see :func:`partial_path`) in ``root`` matching ``pattern`` whose writer is gone,
    a process killed mid-write (kill -9, a power cut); returns their names. Writes of live processes, this one's
    included, stay."""
    removed = []
    for tmp in Path(root).glob(pattern):
        found = PARTIAL.match(tmp.name)
        if found is None or _still_writing(tmp, int(found.group(1))):
            continue
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        removed.append(tmp.name)
    return removed


def _still_writing(tmp: Path, pid: int) -> bool:
    if pid == os.getpid():
        with _writing_lock:
            return str(tmp) in _writing
    return process_alive(pid)


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (as far as this user can tell)."""
    try:
        os.kill(pid, 0)
    except PermissionError:  # another user's
        return True
    except OSError:
        return False
    return True


def fsync_path(path: Path) -> None:
    """Flush a file (or, where the platform allows, a folder) to disk."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return  # some platforms cannot open folders; a rename is still atomic there
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def shown_paths(text: str, folders: Mapping[str, str | os.PathLike]) -> str:
    """``text`` (a message, a path, a code snippet) with each of ``folders`` (name -> folder) written as its
    name: what a person reads says ``outputs/txt2img/...`` or ``models/my-run``, never the server's absolute
    paths. A folder is found as given and resolved (links followed); the longest first, so a folder inside
    another is named by its own name."""
    forms = {}
    for name, folder in folders.items():
        for form in (os.path.abspath(folder), str(Path(folder).resolve())):
            forms.setdefault(form, name)
    for form in sorted(forms, key=len, reverse=True):
        text = re.sub(re.escape(form) + r"(?![\w.-])", lambda _, name=forms[form]: name, text)
    return text


@dataclass(frozen=True)
class Folders:
    models_dir: Path  # user models and the Training tab's checkpoints
    data_dir: Path  # image folders for training
    outputs_dir: Path  # generated PNGs

    def prepare(self) -> None:
        """Create the folders; what a process killed mid-write left in them (a PNG, an upload's hidden folder) goes,
        so nothing half-written is listed."""
        for folder in (self.models_dir, self.data_dir, self.outputs_dir):
            Path(folder).mkdir(parents=True, exist_ok=True)
        for folder, pattern in ((self.outputs_dir, "**/.*.tmp"), (self.data_dir, ".*.tmp")):
            if removed := remove_partial_writes(folder, pattern):
                log.warning("removed %d partial write(s) of a killed process from %s", len(removed), folder)
