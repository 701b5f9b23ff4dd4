"""Training objectives: what a model learns (noise prediction in pixels, VAE and text to image in latents).

The loop (:mod:`engine.training.loop`) knows an objective only through the two protocols below.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import torch

    from engine.cancel import CancelToken
    from engine.training.data import ImageData
    from engine.training.objectives.terms import LossTerms
    from engine.training.request import TrainRequest


class Objective(Protocol):
    """One training recipe: builds the model, gives its loss, samples grids, saves and restores weights.

    ``loss`` returns the scalar loss, or :class:`LossTerms` where the loss has timesteps (the loop then charts
    the loss by timestep bucket). Only the parameters that require grad are trained, checkpointed and averaged
    (EMA), so an objective with a frozen base (LoRA) freezes it in ``build_model``."""

    def build_model(self, seed: int) -> torch.nn.Module: ...

    def loss(self, model: torch.nn.Module, batch: dict, generator: torch.Generator) -> torch.Tensor | LossTerms: ...

    def sample(self, model: torch.nn.Module, *, num_images: int, seed: int, num_inference_steps: int,
               cancel: CancelToken | None = None) -> torch.Tensor:
        """(num_images, C, H, W) in [-1, 1] from fixed seeds, so grids compare through training."""
        ...

    def save_pretrained(self, model: torch.nn.Module, folder: Path) -> None: ...

    def load_saved_weights(self, folder: Path) -> dict[str, torch.Tensor]: ...


class ObjectiveFactory(Protocol):
    """What ``iter_train(objective=...)`` takes: an objective class, or a setup holding what the request lacks."""

    def from_request(self, request: TrainRequest, data: ImageData) -> Objective: ...
