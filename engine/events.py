"""Small typed events that sampling and training generators yield."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import numpy as np


class Previewer(Protocol):
    """Turns a latent, pixel tensor or (model_output, x_t) pair into a (H, W, 3) uint8 image.

    Called off the denoising loop, on first look (see :class:`Preview`); numpy only there.
    """

    def __call__(self, tensor: Any) -> np.ndarray: ...


@dataclass(frozen=True, eq=False)
class Preview:
    """A latent (or pixel) tensor and the previewer that turns it into an image.

    The conversion runs on first use of :meth:`array`, in the consumer's thread,
    so the denoising loop never waits for it.
    """

    tensor: Any  # (B, C, h, w), detached
    previewer: Previewer | Callable[[Any], np.ndarray]

    @functools.cached_property
    def _array(self) -> np.ndarray:
        return self.previewer(self.tensor)

    def array(self) -> np.ndarray:
        """The preview as a (H, W, 3) uint8 array."""
        return self._array


@dataclass(frozen=True)
class Started:
    """The run is set up: the resolved settings and the timesteps it will visit."""

    total: int
    timesteps: tuple[int, ...]
    info: dict = field(default_factory=dict)
    code: str = ""  # plain-diffusers code for this run (also on Done): a stopped run has it too


@dataclass(frozen=True, eq=False)
class Step:
    """One denoising step has finished.

    Both loops give the previews the same meaning: ``preview_xt`` is the noisy sample *after*
    this step (x_{t-1}, the one the next step starts from; at the last step the finished sample),
    ``preview_x0`` the clean sample x0 predicted at ``timestep``.
    """

    step: int  # 1-based
    total: int
    timestep: float  # the timestep this step denoised from, read on the CPU
    preview_xt: Preview | None
    preview_x0: Preview | None
    elapsed: float  # seconds since the loop started
    # More of the step, drawn only when looked at (the text-to-image loop's: "eps", "guidance", "measures";
    # see engine.sampling.views): tensors the loop already has, no extra model call.
    views: dict = field(default_factory=dict)

    @property
    def eta(self) -> float:
        """Seconds left, estimated from the mean time per step so far."""
        return self.elapsed / max(self.step, 1) * (self.total - self.step)


@dataclass(frozen=True, eq=False)
class Done:
    """The run finished: final images, the parameters used and every step's event (the loop says which
    steps keep their previews)."""

    images: tuple  # PIL images
    info: dict
    steps: tuple[Step, ...] = ()
    paths: tuple[str, ...] = ()
    code: str = ""  # plain-diffusers code that reproduces the images
    grid: str = ""  # a batch's grid, saved beside its images; "" for one image or nothing saved
    record: dict = field(default_factory=dict)  # what replays the run (engine.records.runrecord); {} until recorded
    # What the caller that records the run needs from the loop (engine.records.runs):
    request: Any = None  # the request as run: seed drawn, size filled in
    noise_sha256: str = ""  # the initial noise's hash (engine.sampling.hashes.tensor_sha256)


@dataclass(frozen=True, eq=False)
class BatchDone:
    """After the last run of a batch count (N runs, seeds s, s+1, ...): their seeds, every run's saved images, and
    the grid of all their images, saved beside them."""

    seeds: tuple[int, ...]
    paths: tuple[str, ...]
    grid: str  # the grid's PNG; "" when nothing was saved
    image: Any  # the grid, a PIL image
    info: dict = field(default_factory=dict)  # the first run's parameters, with batch_count


# How a run's history (``Done.steps``) reaches a consumer across the device worker, where a VAE preview costs a decode:
HISTORY_MODES = (
    "drawn",  # every step's previews drawn before Done is sent (the default; Done alone is complete)
    "after",  # Done first, with the frames drawn for the stream and the nearest of them in the gaps; then StepsDrawn
    "streamed",  # the frames drawn for the stream, the nearest of them in the gaps; nothing drawn after the loop
)


@dataclass(frozen=True, eq=False)
class StepsDrawn:
    """After a ``Done`` sent with ``history="after"``: the run's steps again, every preview drawn, so the final image
    reaches the page without waiting for the previews of the steps it did not show."""

    steps: tuple[Step, ...]


@dataclass(frozen=True)
class Loading:
    """A model's component is about to load (before the run's ``Started``): which, and how far the load is."""

    model: str  # the model as the request names it
    component: str  # "unet", as model_index.json names it
    index: int  # 1-based
    total: int  # components loaded, unused ones left out
    elapsed: float = 0.0  # seconds since the load began

    @property
    def message(self) -> str:
        return f"Loading model {self.model}: {self.component} ({self.index} of {self.total})"
