"""Models' tokenizers, read once per folder and change of its files (the attention view splits prompts with them)."""

from __future__ import annotations

from pathlib import Path

from engine.errors import ModelLoadError


class Tokenizers:
    """``model``'s CLIP tokenizer through ``registry``, kept per (folder, its tokenizer's mtime)."""

    def __init__(self, registry):
        self.registry = registry
        self._cache: dict[tuple[str, float], object] = {}  # (folder, its tokenizer's mtime) -> tokenizer

    def __call__(self, model: str):
        from transformers import CLIPTokenizer

        ref = self.registry.resolve(model)
        folder = self.registry.config_folder(model)
        where = str(folder) if folder is not None else ref.location  # a hub id: from the cache, offline
        stamp = max((f.stat().st_mtime for f in (Path(where) / "tokenizer").glob("*")), default=0.0) \
            if folder is not None else 0.0
        key = (where, stamp)
        if key not in self._cache:
            try:
                self._cache[key] = CLIPTokenizer.from_pretrained(where, subfolder="tokenizer", local_files_only=True)
            except (OSError, ValueError) as exc:
                raise ModelLoadError(f"the tokenizer of {model!r} cannot be read: {exc}") from None
        return self._cache[key]
