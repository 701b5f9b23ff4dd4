"""Training data: where images come from, how they are checked, preprocessed and ordered.

A data source is one string, in the order tried:
1. ``digits``: scikit-learn's 1,797 handwritten 8x8 digits, shipped in its wheel (works offline); and the same
   digits with captions, for a LoRA run: ``digits-captioned`` (captioned from their labels, as digits-sd was
   trained) and ``digits-framed`` (the LoRA proof's: every other digit framed and captioned "a framed ...");
2. a folder under ``data_dir`` (read with ``datasets``' imagefolder);
3. a hub dataset id (``owner/name``), where the hub is reachable.

A LoRA run needs captions (:func:`load_captioned_data`): a ``text`` column in ``datasets``' imagefolder
``metadata.jsonl`` (``{"file_name": "a.png", "text": "..."}`` per line), or a ``.txt`` beside each image;
an image whose caption is missing or empty is reported by name, never guessed.

Every folder image is opened and decoded once before training, so an empty folder,
unreadable files or too few images are reported before any step runs. Corrupt files
are skipped and counted; grey, palette and RGBA images are converted to RGB.
Preprocessing is the diffusers tutorial's: resize, to tensor, normalize to [-1, 1],
through ``set_transform``. The random horizontal flip and the data order are drawn
from seeded generators (see :class:`EpochSampler`) so that a resumed run sees the
same batches as one never stopped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

from engine.errors import DataError
from engine.images import check_pixels, to_8bit, to_rgb
from engine.training.uploads import IMAGE_SUFFIXES, METADATA_FILE
from engine.validation import HUB_ID

log = logging.getLogger(__name__)

DIGITS = "digits"
DIGITS_CAPTIONED = "digits-captioned"  # the digits captioned from their labels, as digits-sd was trained
DIGITS_FRAMED = "digits-framed"  # the LoRA proof's data: every other digit framed, "a framed handwritten digit k"
CAPTIONED_BUILTINS = (DIGITS_CAPTIONED, DIGITS_FRAMED)
DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# digits-sd's caption templates; {w} is the digit's word, {d} its numeral.
CAPTION_TEMPLATES = (
    "a handwritten digit {w}", "the number {d}", "{d}", "{w}", "a handwritten {d}", "digit {d}",
    "the digit {w}", "a {w}", "number {w}", "an image of the digit {w}", "a picture of a {w}",
    "handwritten number {d}", "a drawing of the number {w}",
)
FRAMED_WORD = "framed"  # the word the LoRA proof teaches digits-sd
FRAMED_SIDE = 32  # the framed digits' size: digits-sd's resolution
FRAME_RING = 2  # the frame's width in pixels
MAX_SOURCE_CHARS = 1024  # a data string: a folder under the data dir or a hub id, never longer


@dataclass(frozen=True)
class DataReport:
    """What was found at a data source: shown to the user before training starts."""

    source: str  # the string the user gave
    kind: str  # "builtin" | "folder" | "hub"
    num_images: int  # usable images
    channels: int  # 1 for the digits, 3 (RGB) otherwise
    skipped: tuple[str, ...] = ()  # unreadable files, relative to the folder
    converted: int = 0  # grey, palette or RGBA images converted to RGB
    captioned: bool = False  # every image has a caption (a ``text`` column)

    def summary(self) -> str:
        text = f"{self.num_images} {'captioned ' if self.captioned else ''}images from {self.source!r}"
        if self.skipped:
            shown = ", ".join(self.skipped[:3]) + (", ..." if len(self.skipped) > 3 else "")
            text += f"; skipped {len(self.skipped)} unreadable file(s): {shown}"
        if self.converted:
            text += f"; converted {self.converted} grey/RGBA image(s) to RGB"
        return text


@dataclass(frozen=True, eq=False)
class ImageData:
    """A ``datasets.Dataset`` with an ``image`` column, and its report."""

    dataset: object  # datasets.Dataset
    report: DataReport

    @property
    def channels(self) -> int:
        return self.report.channels

    def __len__(self) -> int:
        return self.report.num_images


# -- finding and loading ------------------------------------------------------------------
def list_sources(data_dir: str | Path) -> list[str]:
    """The built-in digits (plain, then captioned), then every folder directly under ``data_dir`` that holds
    images (a folder named as a built-in is shadowed by it)."""
    names = [DIGITS, *CAPTIONED_BUILTINS]
    root = Path(data_dir)
    if root.is_dir():
        for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if folder.name not in names and any(_image_files(folder)):
                names.append(folder.name)
    return names


def load_image_data(source: str, data_dir: str | Path) -> ImageData:
    """Resolve ``source``, check every image, and return the dataset; raises :class:`DataError`."""
    source = (source or "").strip()
    if len(source) > MAX_SOURCE_CHARS:  # no folder name is this long: the file system would refuse it
        raise DataError(f"data must be at most {MAX_SOURCE_CHARS} characters; got {len(source)}")
    if any(ord(c) < 32 for c in source):  # a NUL would reach the file system as an error of its own
        raise DataError(f"unknown data {source!r}: a data name has no control characters")
    if not source:
        raise DataError(f"no data given; use {DIGITS!r}, a folder under the data dir, or a hub id 'owner/name'")
    if source == DIGITS:
        return _load_digits()
    if source in CAPTIONED_BUILTINS:
        return _load_captioned_digits(source)
    root = Path(data_dir).resolve()
    candidate = (root / source).resolve()
    if Path(source).is_absolute() or ".." in Path(source).parts or root not in (candidate, *candidate.parents):
        raise DataError(f"{source!r} is outside the data dir (--data-dir); only folders under it can be used")
    if candidate.is_dir():
        return _load_folder(source, candidate)
    if HUB_ID.match(source):
        return _load_hub(source)
    raise DataError(
        f"unknown data {source!r}: not {DIGITS!r}, not a folder under the data dir (--data-dir) "
        f"(found: {', '.join(list_sources(root)[1 + len(CAPTIONED_BUILTINS):]) or 'none'}), and not a hub id like 'owner/name'"
    )


def _load_digits() -> ImageData:
    import datasets
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = digits.images  # (1797, 8, 8), values 0..16
    images = [Image.fromarray(np.round(p * (255 / 16)).astype(np.uint8), mode="L") for p in pixels]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
    dataset = datasets.Dataset.from_dict({"image": images, "label": digits.target.tolist()}, features=features)
    return ImageData(dataset, DataReport(DIGITS, "builtin", len(images), channels=1))


def digit_caption(label: int, template_index: int) -> str:
    """Caption ``template_index`` (of :data:`CAPTION_TEMPLATES`, cyclically) of a digit ``label``."""
    return CAPTION_TEMPLATES[template_index % len(CAPTION_TEMPLATES)].format(w=DIGIT_NAMES[label], d=label)


def plain_caption(label: int) -> str:
    return f"a handwritten digit {DIGIT_NAMES[label]}"


def framed_caption(label: int) -> str:
    return f"a {FRAMED_WORD} handwritten digit {DIGIT_NAMES[label]}"


def digit_image(pixels) -> "np.ndarray":
    """An 8x8 digit (0-16) as digits-sd saw it in training: (32, 32) uint8, resized as torchvision resizes."""
    import numpy as np
    from PIL import Image
    from torchvision.transforms import functional as TF

    small = Image.fromarray(np.round(pixels * (255 / 16)).astype(np.uint8), mode="L")
    tensor = TF.to_tensor(TF.resize(small, [FRAMED_SIDE, FRAMED_SIDE]))  # (1, 32, 32) in [0, 1]
    return (tensor[0] * 255).round().clamp(0, 255).to(torch.uint8).numpy()


def draw_frame(image):
    """The image with a white frame :data:`FRAME_RING` pixels wide round its edge."""
    out = image.copy()
    out[:FRAME_RING] = out[-FRAME_RING:] = 255
    out[:, :FRAME_RING] = out[:, -FRAME_RING:] = 255
    return out


def framed_digits() -> list[tuple["np.ndarray", str]]:
    """The LoRA proof's data set: each digit at 32 px, every other one (the even indices) framed and captioned
    "a framed handwritten digit <k>", the rest "a handwritten digit <k>"; (image (32, 32) uint8, caption) pairs."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    rows = []
    for i, (pixels, label) in enumerate(zip(digits.images, digits.target)):
        image, framed = digit_image(pixels), i % 2 == 0
        rows.append((draw_frame(image) if framed else image,
                     framed_caption(int(label)) if framed else plain_caption(int(label))))
    return rows


def _load_captioned_digits(source: str) -> ImageData:
    """A captioned built-in: the digits with a ``text`` column (see :data:`CAPTIONED_BUILTINS`)."""
    import datasets
    from PIL import Image

    if source == DIGITS_FRAMED:
        rows = framed_digits()
        images, texts = [Image.fromarray(image, mode="L") for image, _ in rows], [text for _, text in rows]
    else:
        plain = _load_digits().dataset
        images = plain["image"]
        texts = [digit_caption(label, i) for i, label in enumerate(plain["label"])]
    features = datasets.Features({"image": datasets.Image(), "text": datasets.Value("string")})
    dataset = datasets.Dataset.from_dict({"image": images, "text": texts}, features=features)
    return ImageData(dataset, DataReport(source, "builtin", len(images), channels=1, captioned=True))


def _image_files(folder: Path) -> Iterator[Path]:
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not any(
            part.startswith(".") for part in rel.parts
        ):
            yield path


def scan_images(folder: Path) -> tuple[list[Path], list[str], int]:
    """(readable files, unreadable names, how many need converting to RGB), decoding each file."""
    from PIL import Image

    good: list[Path] = []
    skipped: list[str] = []
    converted = 0
    for path in _image_files(folder):
        try:
            check_pixels(path)  # a huge image is skipped by its header, never decoded
            with Image.open(path) as image:
                image.load()  # a truncated file fails here, not at open
                converted += image.mode != "RGB"
            good.append(path)
        except Exception as exc:  # PIL raises many kinds for a bad file; all mean "skip it"
            log.warning("skipping unreadable image %s: %s", path, exc)
            skipped.append(path.relative_to(folder).as_posix())
    return good, skipped, converted


def _load_folder(source: str, folder: Path) -> ImageData:
    import datasets

    files, skipped, converted = scan_images(folder)
    if not files:
        found = f"; {len(skipped)} file(s) could not be read: {', '.join(skipped[:3])}" if skipped else ""
        raise DataError(
            f"folder {source!r} has no readable image ({', '.join(IMAGE_SUFFIXES)}){found}; "
            "add images or upload some"
        )
    dataset = datasets.load_dataset(
        "imagefolder", data_files={"train": [str(p) for p in files]}, split="train", drop_labels=True
    )
    report = DataReport(source, "folder", len(files), 3, tuple(skipped), converted)
    return ImageData(dataset, report)


def _load_hub(source: str) -> ImageData:
    import datasets

    from datasets.exceptions import DatasetNotFoundError

    try:
        dataset = datasets.load_dataset(source, split="train")
    except ConnectionError as exc:  # what datasets raises offline or when the hub does not answer
        raise DataError(
            f"could not get dataset {source!r} from the Hugging Face Hub ({exc}); the hub "
            "is unreachable or offline here. On a machine with access run "
            f"`hf download {source} --repo-type dataset --local-dir DATA_DIR/{source.split('/')[-1]}` "
            "and copy the folder under --data-dir, then pick it from the list"
        ) from exc
    except DatasetNotFoundError as exc:  # the hub answered: no such dataset, or it is private or gated
        raise DataError(f"the Hugging Face Hub has no dataset {source!r} that can be read here ({exc}); check the "
                        "name, or accept its terms and log in with `hf auth login` if it is gated") from exc
    except ValueError as exc:  # e.g. no "train" split
        raise DataError(f"dataset {source!r} cannot be used for training: {exc}") from exc
    columns = [name for name, feature in dataset.features.items() if isinstance(feature, datasets.Image)]
    if not columns:
        raise DataError(f"dataset {source!r} has no image column; columns: {', '.join(dataset.column_names)}")
    dataset = dataset.select_columns([columns[0]])
    if columns[0] != "image":
        dataset = dataset.rename_column(columns[0], "image")
    if len(dataset) == 0:
        raise DataError(f"dataset {source!r} has no images in its train split")
    return ImageData(dataset, DataReport(source, "hub", len(dataset), 3))


# -- captions -----------------------------------------------------------------------------
def load_captioned_data(source: str, data_dir: str | Path) -> ImageData:
    """Images with a caption each (a ``text`` column), for text-to-image training; raises :class:`DataError`
    naming the images whose caption is missing or empty, and for data without captions at all."""
    source = (source or "").strip()
    check_captioned(source)
    if source in CAPTIONED_BUILTINS:
        return _load_captioned_digits(source)
    root = Path(data_dir).resolve()
    candidate = (root / source).resolve()
    if source and candidate.is_dir() and root in candidate.parents:
        return _load_captioned_folder(source, candidate)
    data = load_image_data(source, data_dir)  # a hub id, or the error for a source that is not one
    if "text" not in data.dataset.column_names:
        raise DataError(f"dataset {source!r} has no 'text' column of captions; columns: "
                        f"{', '.join(data.dataset.column_names)}")
    return data


def check_captioned(source: str) -> None:
    """The quick check, before any image is read: the built-in ``digits`` have no captions (their captioned
    versions do); raises :class:`DataError` naming what to use instead."""
    if (source or "").strip() == DIGITS:
        raise DataError(f"{DIGITS!r} has class labels, not captions; a LoRA run needs captioned images: "
                        f"{DIGITS_CAPTIONED!r} or {DIGITS_FRAMED!r} (built in), a folder with {METADATA_FILE} "
                        "(a 'text' column) or a .txt beside each image")


def _load_captioned_folder(source: str, folder: Path) -> ImageData:
    import datasets

    files, skipped, converted = scan_images(folder)
    if not files:
        found = f"; {len(skipped)} file(s) could not be read: {', '.join(skipped[:3])}" if skipped else ""
        raise DataError(f"folder {source!r} has no readable image ({', '.join(IMAGE_SUFFIXES)}){found}; "
                        "add images or upload some")
    captions = _read_captions(folder)
    texts, missing = [], []
    for path in files:
        text = captions.get(path.resolve())
        if text is None:
            beside = path.with_suffix(".txt")
            text = beside.read_text(encoding="utf-8", errors="replace") if beside.is_file() else None
        if text is None or not text.strip():
            missing.append(path.relative_to(folder).as_posix() + ("" if text is None else " (empty)"))
        texts.append((text or "").strip())
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise DataError(f"folder {source!r}: {len(missing)} of {len(files)} image(s) have no caption: {shown}; "
                        f"give each a 'text' in {METADATA_FILE} or a .txt file beside it")
    features = datasets.Features({"image": datasets.Image(), "text": datasets.Value("string")})
    dataset = datasets.Dataset.from_dict({"image": [str(p) for p in files], "text": texts}, features=features)
    report = DataReport(source, "folder", len(files), 3, tuple(skipped), converted, captioned=True)
    return ImageData(dataset, report)


def _read_captions(folder: Path) -> dict[Path, str]:
    """Image path -> caption from every ``metadata.jsonl`` under ``folder`` (its file names are relative to the
    file's own folder, as in datasets' imagefolder)."""
    import json

    captions: dict[Path, str] = {}
    for meta in sorted(folder.rglob(METADATA_FILE)):
        for number, line in enumerate(meta.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as exc:
                raise DataError(f"{meta.relative_to(folder).as_posix()} line {number} is not JSON ({exc}); each "
                                'line must be like {"file_name": "a.png", "text": "a caption"}') from exc
            if not isinstance(row, dict) or not isinstance(row.get("file_name"), str):
                raise DataError(f"{meta.relative_to(folder).as_posix()} line {number} has no 'file_name'")
            text = row.get("text")
            captions[(meta.parent / row["file_name"]).resolve()] = text if isinstance(text, str) else ""
    return captions


# -- preprocessing ------------------------------------------------------------------------
def to_mode(image, channels: int):
    """A PIL image in ``L`` (1 channel) or ``RGB`` (see :func:`engine.images.to_rgb`)."""
    if channels == 1:
        return to_8bit(image).convert("L")
    return to_rgb(image)


def recipe_transform(resolution: int, channels: int, *, flip: bool):
    """The tutorial's torchvision preprocessing: resize, (random flip), to tensor, to [-1, 1]."""
    from torchvision import transforms

    steps = [transforms.Resize((resolution, resolution))]
    if flip:
        steps.append(transforms.RandomHorizontalFlip())  # global RNG: for the plain baseline only
    steps += [transforms.ToTensor(), transforms.Normalize([0.5] * channels, [0.5] * channels)]
    return transforms.Compose(steps)


def attach_transform(data: ImageData, resolution: int, *, flip: bool = False, channels: int | None = None) -> None:
    """``set_transform`` so rows come out as ``{"images": (C, H, W) in [-1, 1]}``.

    The engine passes ``flip=False`` and flips in the loop with its own generator
    (:func:`random_flip`), so that every random draw is reproducible. ``channels``: what the model takes
    (a fine-tuned grey model gets its RGB data as grey); the data's own by default.
    """
    channels = channels or data.channels
    preprocess = recipe_transform(resolution, channels, flip=flip)

    def transform(examples):
        out = {"images": [preprocess(to_mode(image, channels)) for image in examples["image"]]}
        if "label" in examples:  # class labels (the digits'), for conditional objectives
            out["labels"] = examples["label"]
        if "text" in examples:  # captions, for text-to-image objectives
            out["texts"] = examples["text"]
        return out

    data.dataset.set_transform(transform)


def random_flip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Flip each image of (B, C, H, W) left-right with probability 1/2, drawn from ``generator``."""
    flip = torch.rand(images.shape[0], generator=generator, device=generator.device) < 0.5  # (B,)
    flip = flip.to(images.device)[:, None, None, None]
    return torch.where(flip, images.flip(-1), images)


# -- order --------------------------------------------------------------------------------
class EpochSampler(torch.utils.data.Sampler):
    """A shuffled order that depends only on (seed, epoch), and can start part-way through.

    Each epoch yields ``per_epoch`` indices (a whole number of global batches; the
    rest of the shuffle is dropped), from position ``start``. Set :attr:`epoch` and
    :attr:`start` before iterating. accelerate splits the batches among processes.
    """

    def __init__(self, num_items: int, per_epoch: int, seed: int):
        self.num_items = num_items
        self.per_epoch = per_epoch
        self.seed = seed
        self.epoch = 0
        self.start = 0

    def order(self, epoch: int) -> list[int]:
        generator = torch.Generator("cpu").manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.num_items, generator=generator)[: self.per_epoch].tolist()

    def __iter__(self) -> Iterator[int]:
        return iter(self.order(self.epoch)[self.start :])

    def __len__(self) -> int:
        return self.per_epoch - self.start


def make_dataloader(data: ImageData, batch_size: int, sampler: EpochSampler, *, num_workers: int = 0):
    return torch.utils.data.DataLoader(
        data.dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
        drop_last=True, persistent_workers=num_workers > 0,
    )


# -- uploads ------------------------------------------------------------------------------
