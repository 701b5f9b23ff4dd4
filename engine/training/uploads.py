"""Uploads into the data dir: images, zips of them and their captions, copied under a hidden name and renamed into
place, with limits counted as bytes are written. No torch here: an upload (and a process that only saves uploads)
never waits on importing the training stack (:mod:`engine.training.data` reads what is saved here)."""

from __future__ import annotations

import logging
import re
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterable

from engine.errors import DataError, InputError
from engine.files import partial_path
from engine.images import check_pixels
from engine.validation import given

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
METADATA_FILE = "metadata.jsonl"  # datasets' imagefolder metadata: file_name and text columns
MAX_UPLOAD_BYTES = 512 * 1024**2  # unpacked size of one upload, counted as written: a guard against zip bombs
MAX_DATA_DIR_BYTES = 8 * 1024**3  # all of the data dir after the upload
MAX_UPLOAD_FILES = 100_000
FOLDER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
CAPTION_SUFFIXES = (".txt", ".jsonl")  # what an upload keeps besides images: captions


@dataclass(frozen=True)
class UploadLimits:
    """Caps on what an upload may write (``--max-upload-mb``, ``--max-data-mb``)."""

    upload_bytes: int = MAX_UPLOAD_BYTES  # one upload, unpacked: enough for a few thousand photos
    data_dir_bytes: int = MAX_DATA_DIR_BYTES  # the whole data dir: uploads never fill the disk
    files: int = MAX_UPLOAD_FILES  # images in one upload

    def describe(self) -> str:
        return (f"at most {_mib(self.upload_bytes)} an upload and {_mib(self.data_dir_bytes)} in the data dir "
                "(--max-upload-mb, --max-data-mb)")


def _mib(n: int) -> str:
    return f"{n / 1024**2:.0f} MiB"


def save_uploads(files: Iterable[str | Path], data_dir: str | Path, name: str = "",
                 limits: UploadLimits = UploadLimits()) -> Path:
    """Copy uploaded images (and the images inside uploaded zips) into a new folder under ``data_dir``.

    Captions come along (for a LoRA run): a ``.txt`` uploaded beside an image of the same name, a
    ``metadata.jsonl`` (its file names follow the images' new names), and the ``.txt`` and ``metadata.jsonl``
    members of a zip, which keeps its layout.
    The folder is filled under a hidden name and renamed into place at the end, so a
    half-finished upload never shows up as a data source, and a refused one leaves nothing.
    Zip members with absolute paths, ``..`` or links are refused; bytes are counted as
    they are written (a zip's size header can lie), against ``limits``; every image must
    open in PIL, and the ones that do not are named. Returns the new folder.
    """
    root = Path(data_dir)
    root.mkdir(parents=True, exist_ok=True)
    folder = root / _new_folder_name(root, name)
    budget = min(limits.upload_bytes, limits.data_dir_bytes - _tree_bytes(root))
    if budget <= 0:
        raise DataError(f"the data dir is full ({_mib(_tree_bytes(root))} used); {limits.describe()}")
    files = [Path(f) for f in files]
    renamed = {f.name: f"{i:05d}-{_safe_stem(f.stem)}{f.suffix.lower()}" for i, f in enumerate(files)
               if f.suffix.lower() in IMAGE_SUFFIXES}  # an uploaded image's name -> its name in the folder
    with partial_path(root, folder.name, folder=True) as tmp:  # a killed upload's is removed at start-up
        count, total = 0, 0
        for index, file in enumerate(files):
            if file.suffix.lower() == ".zip":
                dest = tmp / f"{index:03d}-{_safe_stem(file.stem)}"
                n, size = extract_zip(file, dest, budget=budget - total, limits=limits)
                count, total = count + n, total + size
            elif file.suffix.lower() in IMAGE_SUFFIXES:
                with open(file, "rb") as src:
                    total += _copy_within(src, tmp / renamed[file.name], budget - total, file.name, limits)
                count += 1
            elif file.suffix.lower() in CAPTION_SUFFIXES:
                total += _save_caption_file(file, tmp, renamed, budget - total, limits)
            else:
                log.info("upload: ignoring %s (not an image, a caption or a zip)", file.name)
        if count == 0:
            raise DataError(
                f"the upload holds no image files; allowed: {', '.join(IMAGE_SUFFIXES)} or a .zip of them"
            )
        _check_images(tmp)
        tmp.replace(folder)
    log.info("saved %d uploaded image(s) to %s", count, folder)
    return folder


def extract_zip(zip_path: str | Path, dest: str | Path, *, budget: int = MAX_UPLOAD_BYTES,
                limits: UploadLimits = UploadLimits()) -> tuple[int, int]:
    """Extract the image members of a zip (and its captions: .txt files, metadata.jsonl) into ``dest``;
    returns (images, bytes).

    Refuses (with :class:`DataError`) members that would land outside ``dest``
    (absolute paths, ``..``, drive letters), symbolic links, damaged archives, and
    archives that unpack to more than ``budget`` bytes (as declared, and as written)
    or more than ``limits.files`` images.
    """
    dest = Path(dest)
    try:
        archive = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"{Path(zip_path).name} is not a readable zip file: {exc}") from exc
    with archive:
        members = [m for m in archive.infolist() if not m.is_dir()]
        for member in members:
            _check_member(member, Path(zip_path).name)
        images = [m for m in members if PurePosixPath(m.filename).suffix.lower() in IMAGE_SUFFIXES
                  and not any(p.startswith(".") or p == "__MACOSX" for p in PurePosixPath(m.filename).parts)]
        captions = [m for m in members if (PurePosixPath(m.filename).suffix.lower() == ".txt"
                                           or PurePosixPath(m.filename).name == METADATA_FILE)
                    and not any(p.startswith(".") or p == "__MACOSX" for p in PurePosixPath(m.filename).parts)]
        if len(images) > limits.files:
            raise DataError(f"{Path(zip_path).name} holds {len(images)} images; at most {limits.files} allowed")
        size = sum(m.file_size for m in images + captions)
        if size > budget:
            raise DataError(f"{Path(zip_path).name} unpacks to {size} bytes; at most {budget} allowed "
                            f"({limits.describe()})")
        written = 0
        for member in images + captions:
            target = dest.joinpath(*PurePosixPath(member.filename).parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                with archive.open(member) as src:
                    written += _copy_within(src, target, budget - written, f"{Path(zip_path).name}: "
                                            f"{member.filename}", limits)
            except (zipfile.BadZipFile, zlib.error, EOFError) as exc:  # a damaged member or a lying header
                raise DataError(f"{Path(zip_path).name} is damaged: member {member.filename!r} cannot be read "
                                f"({exc}); re-create the zip") from exc
    return len(images), written


def _copy_within(src, target: Path, budget: int, name: str, limits: UploadLimits) -> int:
    """Copy ``src`` to ``target``, counting bytes as they are written; refuse past ``budget``."""
    written = 0
    with open(target, "wb") as out:
        while chunk := src.read(1024 * 1024):
            written += len(chunk)
            if written > budget:
                raise DataError(f"{name} unpacks to more than the {budget} bytes left for this upload "
                                f"({limits.describe()})")
            out.write(chunk)
    return written


def _save_caption_file(file: Path, folder: Path, renamed: dict[str, str], budget: int, limits: UploadLimits) -> int:
    """An uploaded caption file into ``folder``: a .txt beside the image it names, a metadata.jsonl with its
    file names made the images' new ones. Returns the bytes written (0 for one that belongs to no image)."""
    import io
    import json

    if file.name == METADATA_FILE:
        lines = []
        for line in file.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                row = json.loads(line) if line.strip() else None
            except ValueError:
                row = None
            if isinstance(row, dict) and isinstance(row.get("file_name"), str):
                row["file_name"] = renamed.get(Path(row["file_name"]).name, row["file_name"])
                line = json.dumps(row)
            lines.append(line)
        data = ("\n".join(lines) + "\n").encode()
        return _copy_within(io.BytesIO(data), folder / METADATA_FILE, budget, file.name, limits)
    image = next((new for old, new in renamed.items() if Path(old).stem == file.stem), None)
    if file.suffix.lower() != ".txt" or image is None:
        log.info("upload: ignoring %s (a caption file for no uploaded image)", file.name)
        return 0
    with open(file, "rb") as src:
        return _copy_within(src, folder / (Path(image).stem + ".txt"), budget, file.name, limits)


def _check_images(folder: Path) -> None:
    """Every file of an upload (captions aside) must open as an image in PIL; the ones that do not are named."""
    from PIL import Image

    bad = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() not in CAPTION_SUFFIXES):
        shown = path.relative_to(folder).as_posix().split('-', 1)[-1]
        try:
            check_pixels(path, "files", shown)  # by its header, before anything decodes it whole
        except InputError as exc:
            raise DataError(f"{exc}; nothing was saved") from None
        try:
            with Image.open(path) as image:
                image.load()
        except Exception as exc:  # PIL raises many kinds for a file that is not an image; each is reported
            bad.append(f"{shown} ({type(exc).__name__})")
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise DataError(f"the upload has {len(bad)} file(s) PIL cannot read as an image: {shown}; "
                        "remove or re-save them and upload again (nothing was saved)")


def _tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def _check_member(member: zipfile.ZipInfo, archive: str) -> None:
    name = member.filename.replace("\\", "/")
    path = PurePosixPath(name)
    is_link = (member.external_attr >> 16) & 0o170000 == 0o120000
    if path.is_absolute() or ".." in path.parts or re.match(r"^[A-Za-z]:", name) or is_link:
        raise DataError(
            f"{archive} has an unsafe member {member.filename!r} (absolute path, '..' or a link); "
            "only plain relative paths are allowed"
        )


def _safe_stem(stem: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem)[:80] or "image"


def _new_folder_name(root: Path, name: str) -> str:
    name = (name.strip() if isinstance(name, str) else name) or "upload"
    if not isinstance(name, str) or not FOLDER_NAME.match(name):
        raise InputError(
            f"folder name {given(name)} is not allowed; use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    candidate, n = name, 1
    while (root / candidate).exists():
        n += 1
        candidate = f"{name}-{n}"
    return candidate
