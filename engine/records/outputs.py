"""Write final images as PNG with A1111-style ``parameters`` text chunks."""

from __future__ import annotations

import json
import os
import re
import threading
from datetime import date
from pathlib import Path

from PIL import Image, PngImagePlugin

from engine.files import atomic_write, process_alive

_lock = threading.Lock()
NUMBERED = re.compile(r"^\.?(\d+)[-.]")  # an image "00012-seed...png" or a claim ".00012.claim"
RECORD_CHUNK = "workbench"  # the PNG text chunk holding a run's record as JSON (engine.records.runrecord)


def a1111_parameters(info: dict) -> str:
    """The ``parameters`` chunk A1111 writes (and PNG Info readers parse)."""
    lines = [info.get("prompt", "")]
    if info.get("negative_prompt"):
        lines.append(f"Negative prompt: {info['negative_prompt']}")
    fields = [
        ("Steps", info.get("steps")),
        ("Sampler", info.get("scheduler")),
        ("CFG scale", info.get("guidance_scale")),
        ("CFG rescale", info.get("guidance_rescale") or None),  # phi (Lin et al. 2023); written only when used
        ("Timestep spacing", info.get("timestep_spacing") or None),  # "" (the model's own) is not written
        ("Variation seed", info.get("seed_b") if info.get("seed_blend") else None),  # A1111's names: a slerp too
        ("Variation seed strength", info.get("seed_blend") or None),
        ("Seed", info.get("seed")),
        ("Size", f"{info['width']}x{info['height']}" if "width" in info else None),
        ("Model", info.get("model")),
        ("LoRA", f"{info['lora']}:{info.get('lora_scale', 1.0):g}" if info.get("lora") else None),
        ("Denoising strength", info.get("strength")),
        ("Resize mode", info.get("resize_mode")),
        ("Batch size", info.get("batch_size")),
        ("Batch count", info.get("batch_count")),
    ]
    lines.append(", ".join(f"{k}: {v}" for k, v in fields if v is not None))
    return "\n".join(lines)


def save_png(image: Image.Image, info: dict, outputs_dir: str | Path, kind: str, suffix: str = "",
             record: dict | None = None) -> Path:
    """Save under ``outputs_dir/kind/YYYY-MM-DD/NNNNN-seed<suffix>.png`` (the next number), written atomically,
    with A1111's ``parameters`` text and, where given, the run's ``record`` as JSON in the ``workbench`` chunk
    (see :mod:`engine.records.runrecord`). The number is claimed exclusively (:func:`_claim_number`): the server
    (grids) and the device worker (images) save into the same folders, and each number goes to one image."""
    folder = Path(outputs_dir) / kind / date.today().isoformat()
    folder.mkdir(parents=True, exist_ok=True)
    meta = PngImagePlugin.PngInfo()
    meta.add_text("parameters", a1111_parameters(info))
    if record:
        meta.add_text(RECORD_CHUNK, json.dumps(record, separators=(",", ":")))
    with _lock:  # this process's writers in turn; other processes are kept apart by the claim
        n, claim = _claim_number(folder)
        try:
            path = folder / f"{n:05d}-{info.get('seed', 0)}{suffix}.png"
            with atomic_write(path) as tmp:
                image.save(tmp, format="PNG", pnginfo=meta)
        finally:
            claim.unlink(missing_ok=True)
    return path


def _claim_number(folder: Path) -> tuple[int, Path]:
    """(the next free number in ``folder``, its claim): a hidden file ``.NNNNN.claim`` created exclusively
    (``O_EXCL``: of two processes creating it, one succeeds), held while the image is written and removed after.
    A number is free when no image and no claim has it; a claim made just after another writer wrote that number's
    image and removed its claim finds the image and moves on."""
    while True:
        numbers = [int(m.group(1)) for p in folder.iterdir() if (m := NUMBERED.match(p.name))]
        n = max(numbers, default=0) + 1
        claim = folder / f".{n:05d}.claim"
        try:
            fd = os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:  # another writer holds it: look again
            continue
        try:
            os.write(fd, str(os.getpid()).encode())  # whose claim: one a killed writer left is removed at start
        finally:
            os.close(fd)
        if any(p.name.startswith(f"{n:05d}-") for p in folder.iterdir()):
            claim.unlink(missing_ok=True)  # written meanwhile by a writer whose claim is gone
            continue
        return n, claim


def read_parameters(path: str | Path) -> str | None:
    with Image.open(path) as im:
        return im.text.get("parameters") if hasattr(im, "text") else im.info.get("parameters")


def remove_stale_claims(root: str | os.PathLike) -> list[str]:
    """Delete the number claims (see :func:`_claim_number`) under ``root`` whose writer is gone, a process killed
    mid-write; returns their names. A claim not yet holding its writer's pid is one a killed writer left too: at
    start no writer of this app is under way."""
    removed = []
    for claim in Path(root).glob("**/.*.claim"):
        try:
            pid = int(claim.read_text() or 0)
        except (OSError, ValueError):
            pid = 0
        if pid and (pid == os.getpid() or process_alive(pid)):
            continue
        claim.unlink(missing_ok=True)
        removed.append(claim.name)
    return removed
