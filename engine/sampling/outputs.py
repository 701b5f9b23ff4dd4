"""Write final images as PNG with A1111-style ``parameters`` text chunks."""

from __future__ import annotations

import itertools
import json
import re
import threading
from datetime import date
from pathlib import Path

from PIL import Image, PngImagePlugin

from engine.files import atomic_write

_lock = threading.Lock()
RECORD_CHUNK = "workbench"  # the PNG text chunk holding a run's record as JSON (engine.sampling.runrecord)


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
        ("Batch size", info.get("batch_size")),
        ("Batch count", info.get("batch_count")),
    ]
    lines.append(", ".join(f"{k}: {v}" for k, v in fields if v is not None))
    return "\n".join(lines)


def save_png(image: Image.Image, info: dict, outputs_dir: str | Path, kind: str, suffix: str = "",
             record: dict | None = None) -> Path:
    """Save under ``outputs_dir/kind/YYYY-MM-DD/NNNNN-seed<suffix>.png`` (the next number), written atomically,
    with A1111's ``parameters`` text and, where given, the run's ``record`` as JSON in the ``workbench`` chunk
    (see :mod:`engine.sampling.runrecord`)."""
    folder = Path(outputs_dir) / kind / date.today().isoformat()
    folder.mkdir(parents=True, exist_ok=True)
    meta = PngImagePlugin.PngInfo()
    meta.add_text("parameters", a1111_parameters(info))
    if record:
        meta.add_text(RECORD_CHUNK, json.dumps(record, separators=(",", ":")))
    with _lock:
        numbers = [int(m.group(1)) for p in folder.iterdir() if (m := re.match(r"(\d+)-", p.name))]
        start = max(numbers, default=0) + 1
        for n in itertools.count(start):
            path = folder / f"{n:05d}-{info.get('seed', 0)}{suffix}.png"
            if not path.exists():
                break
        with atomic_write(path) as tmp:
            image.save(tmp, format="PNG", pnginfo=meta)
    return path


def read_parameters(path: str | Path) -> str | None:
    with Image.open(path) as im:
        return im.text.get("parameters") if hasattr(im, "text") else im.info.get("parameters")
