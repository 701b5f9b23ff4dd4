"""The objective a request asks for, where ``iter_train`` is given none."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from engine.training.base import SCRATCH, resolve_base


@dataclass(frozen=True)
class RequestObjective:
    """What ``iter_train`` trains when it is given no objective, as the request's ``start_from`` and ``method``
    say: a new UNet (scratch), a fine-tune of an unconditional model, or LoRA adapters on a text-to-image one."""

    models_dir: Path

    def from_request(self, request, data):
        from engine.training.objectives.pixel import NoisePrediction

        if request.start_from == SCRATCH:
            return NoisePrediction.from_request(request, data)
        base = resolve_base(request.start_from, self.models_dir, request.method)
        if request.method == "lora":
            from engine.training.objectives.lora import LoraTextToImage

            return LoraTextToImage(base, request, data)
        return NoisePrediction.from_pretrained(base, request)
