"""Replay: a run's record (from its PNG, or the JSON "Export run" writes) run again, and a verdict.

A replay ends in one of:

- **identical**: the replayed images hash as the run's did, bit for bit;
- **within N/255**: they differ, at most N levels of 255 on any pixel, measured against the run's own image
  (where it is at hand: the PNG given, or the one the bundle names in the outputs dir), with what differs
  between the run's environment and this one (device, dtype, library versions);
- **differs**: they differ and the run's image is not at hand to measure by how much;
- **cannot replay**: the model is not here, or is here but changed since the run (its files hash otherwise), or
  an img2img or SDEdit run's starting image (the record holds its hash) is not in the outputs dir
  (:mod:`engine.records.runs` keeps it there); nothing is run.

Run files that are not ours, from a newer format, or that name a model outside the models dir are refused
with an :class:`InputError` before anything runs.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from engine.errors import InputError
from engine.images import check_pixels
from engine.validation import given
from engine.records.pnginfo import read_record
from engine.records.runrecord import FORMAT, VERSION, image_sha256
from engine.records.runs import SHA256
from engine.sampling.img2img import Img2ImgRequest
from engine.sampling.txt2img import Txt2ImgRequest
from engine.sampling.unconditional import UnconditionalRequest, image_grid

MAX_BUNDLE_BYTES = 1 << 20  # a run file is a few kilobytes
REQUESTS = {"txt2img": Txt2ImgRequest, "unconditional": UnconditionalRequest, "img2img": Img2ImgRequest,
            "sdedit": Img2ImgRequest}
MODEL_KIND = {"txt2img": "txt2img", "unconditional": "unconditional", "img2img": "txt2img", "sdedit": "unconditional"}
# An img2img request is checked with this in place of its image, which the record holds as a hash
# (``init_sha256``) and the replay finds in the outputs dir (engine.records.policy).
NO_IMAGE = Image.new("RGB", (8, 8))
# The environment's entries, as the verdict names them.
ENVIRONMENT = {"device": "device", "device_name": "device name", "dtype": "dtype", "torch": "torch",
               "diffusers": "diffusers", "transformers": "transformers", "gradio": "gradio"}
IDENTICAL, WITHIN, DIFFERS, CANNOT = "identical", "within", "differs", "cannot replay"


@dataclass(frozen=True)
class RunBundle:
    """A run to replay: its kind, its request (validated), the record it came from, and its own image where
    the replay can measure against it."""

    kind: str
    request: Txt2ImgRequest | UnconditionalRequest | Img2ImgRequest  # img2img's: the image still to be found
    record: dict
    image: str | None = None  # the run's image, relative to the outputs dir, as the bundle names it
    original: Image.Image | None = None  # the run's image itself, where a PNG was given


@dataclass(frozen=True)
class ReplayReport:
    """The verdict of a replay (see the module's docstring)."""

    outcome: str  # IDENTICAL, WITHIN, DIFFERS or CANNOT
    message: str  # what the page says, in a sentence or two
    max_difference: int | None = None  # out of 255, where measured
    differences: tuple[str, ...] = ()  # what differs between the run's environment and this one
    paths: tuple[str, ...] = ()  # the replay's saved images

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def export_bundle(record: dict, image: str | None = None) -> dict:
    """The JSON "Export run" writes: the run's record, and the image it was exported from (relative to the
    outputs dir) so that a replay here can measure against it."""
    return {**record, "image": image} if image else dict(record)


def read_bundle(path: str | Path) -> RunBundle:
    """The run in a ``.json`` run file or in a PNG this workbench saved; :class:`InputError` for anything else."""
    path = Path(path)
    name = path.name
    if path.suffix.lower() == ".png":
        record = read_record(path)  # raises InputError for a file that is not a PNG
        if record is None:
            raise InputError(f"{name} has no run record: only PNGs this workbench saved can be replayed "
                             "(PNG Info reads the settings of others)", field="run file")
        check_pixels(path, field="run file")
        try:
            with Image.open(path) as im:
                original = im.copy()
        except (OSError, UnidentifiedImageError) as exc:
            raise InputError(f"{name} is a damaged PNG: {exc}", field="run file") from None
        return dataclasses.replace(check_bundle(record), original=original)
    if path.stat().st_size > MAX_BUNDLE_BYTES:
        raise InputError(f"{name} is {path.stat().st_size} bytes; a run file is a few kilobytes "
                         f"(at most {MAX_BUNDLE_BYTES})", field="run file")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"{name} is not a run file: not JSON ({exc})", field="run file") from None
    except RecursionError:  # json's parser recurses once a level: a run file has four or five
        raise InputError(f"{name} is not a run file: its JSON is nested deeper than Python's parser goes",
                         field="run file") from None
    return check_bundle(record)


def check_bundle(record) -> RunBundle:
    """A record checked field by field: ours, a format this version reads, a known kind, a valid request."""
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise InputError(f"not a run file of this workbench: 'format' must be {FORMAT!r}", field="run file")
    version = record.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise InputError(f"the run file's version must be a whole number from 1; got {version!r}", field="run file")
    if version > VERSION:
        raise InputError(f"the run file is format version {version}, newer than this workbench reads (up to "
                         f"{VERSION}); update the workbench to replay it", field="run file")
    kind = record.get("kind")
    if kind not in REQUESTS:
        raise InputError(f"the run file's kind must be one of {', '.join(REQUESTS)}; got {kind!r}", field="run file")
    fields = record.get("request")
    if not isinstance(fields, dict):
        raise InputError("the run file has no request", field="run file")
    known = {f.name for f in dataclasses.fields(REQUESTS[kind])} - {"image"}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise InputError(f"the run file's request has fields this workbench does not know: {', '.join(unknown)}",
                         field="run file")
    model = fields.get("model")
    if not isinstance(model, str) or not model:
        raise InputError("the run file names no model", field="model")
    if Path(model).is_absolute() or ".." in Path(model).parts:
        raise InputError(f"the run file names model {model!r}, outside the models dir; only built-ins, models under "
                         "the models dir and hub ids are replayed", field="model")
    for key in ("noise_sha256", "images_sha256", "model", "environment"):
        if key not in record:
            raise InputError(f"the run file has no {key!r}: it was not written by a finished run", field="run file")
    for key in ("model", "environment"):  # what a replay compares with this machine's: each a table of values
        if not isinstance(record[key], dict):
            raise InputError(f"the run file's {key!r} must be a table of values as a run writes it; got "
                             f"{given(record[key])}", field="run file")
    if not isinstance(record.get("lora") or {}, dict):
        raise InputError(f"the run file's 'lora' must be a table (name, scale, sha256) or null; got "
                         f"{given(record['lora'])}", field="run file")
    starts_from_image = REQUESTS[kind] is Img2ImgRequest
    if starts_from_image and not (isinstance(record.get("init_sha256"), str) and SHA256.match(record["init_sha256"])):
        raise InputError(f"the run file's 'init_sha256' must be the SHA-256 of the image an {kind} run started "
                         f"from (64 hex digits); got {given(record.get('init_sha256'))}", field="run file")
    # each field checked as a run from the page is
    request = REQUESTS[kind](**fields, image=NO_IMAGE) if starts_from_image else REQUESTS[kind](**fields)
    if request.seed < 0:
        raise InputError("the run file's seed is -1: a replay needs the seed the run drew", field="seed")
    image = record.get("image")
    return RunBundle(kind, request, record, image if isinstance(image, str) else None)


def cannot(message: str) -> ReplayReport:
    return ReplayReport(CANNOT, f"Cannot replay: {message}. Nothing was run.")


def environment_differences(recorded: dict, current: dict) -> tuple[str, ...]:
    """What differs between the run's environment and this one: "torch 2.14.1 here, 2.13.0 in the run"."""
    return tuple(f"{label} {current.get(key)} here, {recorded.get(key)} in the run"
                 for key, label in ENVIRONMENT.items() if recorded.get(key) != current.get(key))


def verdict(bundle: RunBundle, record: dict, images, paths=(), original: Image.Image | None = None) -> ReplayReport:
    """Compare a replay (its ``record`` and ``images``) with the run; ``original`` is the run's image where it
    is at hand (the PNG given, or the bundle's own in the outputs dir)."""
    expected, got = bundle.record.get("images_sha256") or [], record.get("images_sha256") or []
    differences = environment_differences(bundle.record.get("environment") or {}, record.get("environment") or {})
    noise = "" if record.get("noise_sha256") == bundle.record.get("noise_sha256") else \
        " The initial noise differs too: this machine's generator drew other numbers for the same seed."
    if list(expected) == list(got):
        return ReplayReport(IDENTICAL, f"Identical: the replay's image hashes as the run's did "
                                       f"(sha256 {got[0][:12]}…), bit for bit.", 0, differences, tuple(paths))
    where = "; ".join(differences) if differences else \
        "the same device, dtype and library versions (a kernel that is not deterministic?)"
    largest = max_difference(original, expected, images) if original is not None else None
    if largest is None:
        return ReplayReport(DIFFERS, "Differs: the replay's image does not hash as the run's, and the run's own "
                                     "image is not here to measure by how much (replay its PNG to measure). "
                                     f"Differences: {where}.{noise}", None, differences, tuple(paths))
    return ReplayReport(WITHIN, f"Same within {largest}/255: the replay differs from the run by at most {largest} "
                                f"of 255 levels on a pixel. Differences: {where}.{noise}",
                        largest, differences, tuple(paths))


def max_difference(original: Image.Image, expected_hashes, images) -> int | None:
    """The largest pixel difference (0-255) between the run's ``original`` image (one of its images, or a
    batch's grid) and the replay's counterpart; None where the original is neither."""
    pixels = np.asarray(original.convert("RGB"), dtype=np.int16)
    sha = image_sha256(original)
    candidates = list(images)
    if sha in expected_hashes:
        candidates = [images[list(expected_hashes).index(sha)]]
    elif len(images) > 1:
        candidates = [image_grid(images)]
    for image in candidates:
        other = np.asarray(image.convert("RGB"), dtype=np.int16)
        if other.shape == pixels.shape:
            return int(np.abs(other - pixels).max())
    return None
