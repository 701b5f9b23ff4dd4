"""A run's ``Done`` recorded and saved. The loops yield it bare (images, info, the request as run, the initial
noise's hash) and save nothing; whoever holds the outputs dir (the worker's ``run_events``, or a Python caller)
passes the loop's events through :func:`iter_saved`, which builds the run's record
(:func:`engine.records.runrecord.run_record`) and writes the PNGs (:func:`engine.records.outputs.save_png`)::

    done = list(iter_saved("txt2img", iter_txt2img(request, pipe=pipe), pipe=pipe, outputs_dir="outputs"))[-1]

img2img and SDEdit runs also keep the image they started from, once per picture, as
``<outputs>/.inits/<sha256>.png`` (hidden: History never lists it), where a replay finds it by the record's
``init_sha256``.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import Iterator

from PIL import Image

from engine.events import Done
from engine.files import atomic_write
from engine.records.outputs import a1111_parameters, save_png
from engine.records.runrecord import image_sha256, run_record
from engine.sampling.unconditional import image_grid

FOLDERS = {"txt2img": "txt2img", "unconditional": "unconditional", "img2img": "img2img", "sdedit": "img2img"}
INITS = ".inits"  # img2img's starting images, by their pixels' hash
SHA256 = re.compile(r"^[0-9a-f]{64}$")


def iter_saved(kind: str, events, *, pipe, outputs_dir: str | Path | None = None) -> Iterator:
    """``events`` (a loop's, run of ``kind``: a key of :data:`FOLDERS`) passed on, their ``Done`` recorded and,
    where ``outputs_dir`` is given, saved (:func:`saved`)."""
    for event in events:
        yield saved(kind, event, pipe, outputs_dir) if isinstance(event, Done) else event


def saved(kind: str, done: Done, pipe, outputs_dir: str | Path | None = None) -> Done:
    """``done`` with its run's record, and where ``outputs_dir`` is given its PNGs written (each image with the
    parameters and the record, then a batch's grid beside them) and their paths set."""
    record = run_record(kind, done.request, pipe, done.noise_sha256, done.images)
    if not outputs_dir:
        return replace(done, record=record)
    if "init_sha256" in record:
        save_init(done.request.image, outputs_dir, record["init_sha256"])
    folder = FOLDERS[kind]
    paths = tuple(str(save_png(im, done.info, outputs_dir, folder, record=record)) for im in done.images)
    grid = "" if len(done.images) == 1 else \
        str(save_png(image_grid(done.images), done.info, outputs_dir, folder, suffix="-grid", record=record))
    return replace(done, record=record, paths=paths, grid=grid)


def init_path(outputs_dir: str | Path, sha256: str) -> Path:
    """Where an img2img run's starting image with pixels' hash ``sha256`` is kept."""
    return Path(outputs_dir) / INITS / f"{sha256}.png"


def save_init(image: Image.Image, outputs_dir: str | Path, sha256: str) -> Path:
    """Keep ``image`` (hashing as ``sha256``) for replays, written atomically once."""
    path = init_path(outputs_dir, sha256)
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path) as tmp:
            image.save(tmp, format="PNG")
    return path


def find_init(outputs_dir: str | Path, sha256) -> Image.Image | None:
    """The starting image kept under ``outputs_dir`` whose pixels hash as ``sha256``; None where it is not there
    (or changed since)."""
    if not isinstance(sha256, str) or not SHA256.match(sha256):
        return None
    try:
        with Image.open(init_path(outputs_dir, sha256)) as im:
            image = im.convert("RGB")
    except OSError:
        return None
    return image if image_sha256(image) == sha256 else None


def final_image(done: Done) -> Image.Image:
    """What the page shows at the end: the image, or the batch as a grid, with the PNG ``parameters`` text."""
    image = image_grid(done.images)
    if image is done.images[0]:
        image = image.copy()  # the Done event's own image stays as it was
    image.info["parameters"] = a1111_parameters(done.info)
    return image
