"""History: the outputs dir's images, newest first, a page at a time, filtered by tab and model and searched by
prompt; an image's settings; deleting moves an image to a trash folder inside the outputs dir.

Fast with many images: a page lists the folders (names and modification times, no file is opened) and
reads the metadata of the images it shows only. Filtering by model or prompt reads every candidate's
metadata once: the PNG's text chunks, not its pixels (:func:`engine.records.pnginfo.read_png_text`),
kept in memory per (file, size, modification time). ``bench/history.py`` measures it with 10,000 images.
"""

from __future__ import annotations

import math
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from engine.errors import InputError, WorkbenchError
from engine.files import atomic_write
from engine.records.pnginfo import PngInfo, png_info
from engine.validation import check_int, given

PER_PAGE = 48  # images a page: a 8x6 grid of thumbnails
MAX_PER_PAGE = 500
KINDS = ("txt2img", "unconditional")  # the tabs that save images, each in a folder of that name
KIND_FILTERS = ("", *KINDS)  # "": every tab
TRASH = ".trash"  # deleted images go here, inside the outputs dir; hidden folders are never listed
THUMBNAILS = ".thumbnails"
THUMBNAIL_SIDE = 256  # images larger than this are shown in the grid as a smaller copy, made once
MAX_SEARCH_CHARS = 1_000
MAX_PATH_CHARS = 1_024  # a history path: longer ones no file system takes (an OSError, not a message)
SETTLE_SECONDS = 2.0  # a folder changed this recently is listed again: its modification time may lag a change


@dataclass(frozen=True)
class HistoryQuery:
    kind: str = ""  # "" (every tab), "txt2img" or "unconditional"
    model: str = ""  # "" (every model), else the model string the images were made with
    search: str = ""  # words the prompt must hold, any case; "" for every image
    page: int = 1  # 1-based; past the last page shows the last
    per_page: int = PER_PAGE

    def __post_init__(self):
        if self.kind not in KIND_FILTERS:
            raise InputError(f"tab must be '' (every tab), 'txt2img' or 'unconditional'; got {self.kind!r}",
                             field="tab")
        if not isinstance(self.model, str) or not isinstance(self.search, str):
            raise InputError("model and search must be text", field="search")
        if len(self.search) > MAX_SEARCH_CHARS:
            raise InputError(f"search must be at most {MAX_SEARCH_CHARS} characters; got {len(self.search)}",
                             field="search")
        check_int("page", self.page, 1, 10**9)
        check_int("images a page", self.per_page, 1, MAX_PER_PAGE)


@dataclass(frozen=True)
class HistoryEntry:
    """One image of the history, with what its grid cell and filters need."""

    path: str  # relative to the outputs dir, with '/'
    kind: str  # the tab that made it ("txt2img", "unconditional"), "" for an image from elsewhere
    modified: float  # seconds since the epoch
    prompt: str = ""
    model: str = ""
    seed: int | None = None


@dataclass(frozen=True)
class HistoryPage:
    entries: tuple[HistoryEntry, ...]
    page: int  # the page shown (the last, where a later one was asked for)
    pages: int
    total: int  # images that match the query
    scanned: int  # images in the outputs dir


@dataclass(frozen=True)
class _File:
    path: str
    kind: str
    mtime_ns: int
    size: int


def check_image_path(path) -> str:
    """``path`` (a history image's, as given) stripped, or :class:`InputError` for text no file system takes: longer
    than :data:`MAX_PATH_CHARS`, or holding a control character (a NUL byte made Python raise ValueError)."""
    if path is not None and not isinstance(path, str):
        raise InputError(f"image must be a PNG's path under the outputs dir, as /history lists it; got {given(path)}",
                         field="image")
    path = (path or "").strip()
    if len(path) > MAX_PATH_CHARS:
        raise InputError(f"image must be a path of at most {MAX_PATH_CHARS} characters; got {len(path)}",
                         field="image")
    if any(ord(c) < 32 or ord(c) == 127 for c in path):
        raise InputError(f"image {given(path)} is not an image of the history: a path has no control characters",
                         field="image")
    return path


class ImageHistory:
    """The images under one outputs dir. Thread-safe; metadata is read on first need and kept."""

    def __init__(self, outputs_dir: str | Path):
        self.outputs_dir = Path(outputs_dir).resolve()
        self._meta: dict[str, tuple[int, int, HistoryEntry]] = {}  # path -> (mtime_ns, size, entry)
        self._folders: dict[Path, tuple[int, list[_File], list[Path]]] = {}  # folder -> (mtime_ns, PNGs, folders)
        self._lock = threading.Lock()

    # -- listing -----------------------------------------------------------------------------------------------
    def page(self, query: HistoryQuery = HistoryQuery()) -> HistoryPage:
        """One page of the images that match ``query``, newest first."""
        # 1. Every PNG under the outputs dir (hidden folders skipped), newest first: names and stats only.
        files = self._scan()
        if query.kind:
            files = [f for f in files if f.kind == query.kind]
        # 2. Without a model or prompt filter, only the page's own images are opened.
        words = query.search.lower().split()
        if not query.model and not words:
            pages = max(1, math.ceil(len(files) / query.per_page))
            page = min(query.page, pages)
            chosen = files[(page - 1) * query.per_page:page * query.per_page]
            return HistoryPage(tuple(self._entry(f) for f in chosen), page, pages, len(files), len(files))
        # 3. Else every candidate's metadata (read once, then kept) decides.
        matching = [e for e in map(self._entry, files)
                    if (not query.model or e.model == query.model) and all(w in e.prompt.lower() for w in words)]
        pages = max(1, math.ceil(len(matching) / query.per_page))
        page = min(query.page, pages)
        return HistoryPage(tuple(matching[(page - 1) * query.per_page:page * query.per_page]), page, pages,
                           len(matching), len(files))

    def _scan(self) -> list[_File]:
        """Every PNG under the outputs dir, newest first. A folder's listing is kept while its modification time
        stays (a file saved, renamed or moved away changes it), so past days' folders are not listed again; a
        folder changed in the last ``SETTLE_SECONDS`` is always listed (its time may not have moved yet)."""
        found: list[_File] = []
        stack = [self.outputs_dir]
        now = time.time_ns()
        while stack:
            folder = stack.pop()
            try:
                mtime = folder.stat().st_mtime_ns
            except OSError:
                continue
            with self._lock:
                cached = self._folders.get(folder)
            if cached is None or cached[0] != mtime or now - mtime < SETTLE_SECONDS * 1e9:
                cached = (mtime, *self._list(folder))
                with self._lock:
                    self._folders[folder] = cached
            found.extend(cached[1])
            stack.extend(cached[2])
        found.sort(key=lambda f: (f.mtime_ns, f.path), reverse=True)
        return found

    def _list(self, folder: Path) -> tuple[list[_File], list[Path]]:
        """(the folder's PNGs, its sub-folders); hidden ones skipped (the trash, thumbnails, files being written)."""
        files, folders = [], []
        try:
            entries = list(os.scandir(folder))
        except OSError:
            return files, folders
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_dir(follow_symlinks=False):
                folders.append(Path(entry.path))
            elif entry.name.lower().endswith(".png") and entry.is_file(follow_symlinks=False):
                stat = entry.stat(follow_symlinks=False)
                rel = Path(entry.path).relative_to(self.outputs_dir).as_posix()
                top = rel.split("/", 1)[0]
                files.append(_File(rel, top if top in KINDS and "/" in rel else "", stat.st_mtime_ns, stat.st_size))
        return files, folders

    def _entry(self, file: _File) -> HistoryEntry:
        """The file's entry, its metadata read once per (size, modification time)."""
        with self._lock:
            cached = self._meta.get(file.path)
        if cached is not None and cached[:2] == (file.mtime_ns, file.size):
            return cached[2]
        try:
            info = png_info(self.outputs_dir / file.path)
            settings = info.settings
        except (WorkbenchError, OSError):  # not ours, or no readable parameters: listed, never matched by them
            settings = {}
        seed = settings.get("seed")
        entry = HistoryEntry(file.path, file.kind, file.mtime_ns / 1e9, str(settings.get("prompt") or ""),
                             str(settings.get("model") or ""), seed if isinstance(seed, int) else None)
        with self._lock:
            self._meta[file.path] = (file.mtime_ns, file.size, entry)
        return entry

    # -- one image ---------------------------------------------------------------------------------------------
    def resolve(self, path: str) -> Path:
        """The file of history image ``path`` (relative to the outputs dir); :class:`InputError` for anything
        else: a path outside the outputs dir, in its trash, not a PNG, or gone."""
        path = check_image_path(path)
        candidate = (self.outputs_dir / path).resolve()
        parts = Path(path).parts
        if (not path or Path(path).is_absolute() or ".." in parts or self.outputs_dir not in candidate.parents
                or any(p.startswith(".") for p in parts) or candidate.suffix.lower() != ".png"):
            raise InputError(f"{path!r} is not an image of the history; give a PNG's path under the outputs dir, "
                             "as /history lists it", field="image")
        if not candidate.is_file():
            raise InputError(f"{path!r} is no longer in the outputs dir (deleted or moved)", field="image")
        return candidate

    def info(self, path: str) -> PngInfo:
        """How history image ``path`` was made; :class:`InputError` where its PNG does not say."""
        return png_info(self.resolve(path))

    def trash(self, path: str) -> str:
        """Move history image ``path`` into the outputs dir's trash folder, keeping its sub-path (a number is
        added where the trash holds one of that name); returns where it went, relative to the outputs dir."""
        source = self.resolve(path)
        rel = source.relative_to(self.outputs_dir)
        target = self.outputs_dir / TRASH / rel
        n = 1
        while target.exists():
            target = self.outputs_dir / TRASH / rel.with_name(f"{rel.stem}-{n}{rel.suffix}")
            n += 1
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(source), str(target))
        thumbnail = self.outputs_dir / THUMBNAILS / rel.with_suffix(".webp")
        thumbnail.unlink(missing_ok=True)
        with self._lock:
            self._meta.pop(rel.as_posix(), None)
        return target.relative_to(self.outputs_dir).as_posix()

    def thumbnail(self, path: str) -> Path:
        """What the grid shows for ``path``: the PNG itself up to ``THUMBNAIL_SIDE`` pixels a side, else a
        smaller WebP copy under the outputs dir's ``.thumbnails`` folder, made once per change of the PNG."""
        source = self.resolve(path)
        with Image.open(source) as im:  # reads the header only
            if max(im.size) <= THUMBNAIL_SIDE:
                return source
            target = self.outputs_dir / THUMBNAILS / source.relative_to(self.outputs_dir).with_suffix(".webp")
            if target.is_file() and target.stat().st_mtime_ns >= source.stat().st_mtime_ns:
                return target
            im.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
            with atomic_write(target) as tmp:
                im.convert("RGB").save(tmp, format="WEBP", quality=85)
        return target
