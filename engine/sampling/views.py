"""Inside a step of the text-to-image loop: the predicted noise, classifier-free guidance made visible, and the
numbers of each step (the guidance's size, the latent's std, sigma).

Every view is drawn from tensors the loop already holds (no extra UNet call), off the loop and only for the
frames someone looks at: the loop builds :class:`~engine.events.Preview` objects, which compute nothing until
drawn. Numpy only here (see :func:`engine.sampling.preview.as_array`).
"""

from __future__ import annotations

import math

import numpy as np

from engine.events import Preview, Step
from engine.sampling.preview import X0Previewer, as_array, upscale_nearest, x0_from

# The images a page can stream for a step, by name: what each shows.
VIEWS = {
    "x0": "predicted clean image x0",
    "xt": "noisy latent x_t after the step",
    "eps": "predicted noise ε (after guidance)",
    "v": "predicted velocity v = √ᾱ ε − √(1 − ᾱ) x0",
    "guidance": "guidance Δ = ε_text − ε_uncond (heat map)",
    "attention": "attention: where the picked word lands (heat map over x0)",
}
DEFAULT_VIEWS = ("x0", "xt")  # what the page streams unless asked: the two previews every run has anyway
MEASURES = ("t", "sigma", "latent std", "guidance rms")  # a step's numbers, in the order StepMeasures gives them
# Inferno's colour ramp at five stops (matplotlib's ``inferno``): dark where guidance does little, bright where most.
HEAT_STOPS = np.array([(0, 0, 4), (87, 16, 110), (188, 55, 84), (249, 142, 9), (252, 255, 164)], dtype=np.float32)
HEAT_TOP_PERCENTILE = 99.0  # a frame's heat map is scaled to this percentile of its own magnitudes
ATTENTION_ALPHA = 0.6  # an attention frame: this much heat map over (1 - this) of x0, so both stay readable


def step_views(scheduler, timestep: float, previewer, latents, noise_pred, guidance,
               attention=None, sample=None) -> dict[str, Preview]:
    """The extra views of one step, built in the loop, drawn later (nothing is read from any tensor here).

    ``latents``: x_t after the step (B, C, h, w); ``noise_pred``: the guided noise prediction passed to
    ``scheduler.step``; ``guidance``: ``(noise_uncond, noise_text)``, or None without classifier-free guidance;
    ``attention``: the step's cross-attention maps (n_tokens, h, w) where the run collects them
    (engine.sampling.attention), else None.
    ``sample``: the variance-preserving x_t the model saw (its input before the batch for guidance), from which eps
    and v are drawn whatever the model predicts (else eps is the model's output as it is).
    """
    views = {"eps": Preview(noise_pred, previewer)}
    if sample is not None:  # the model's output is eps itself for an epsilon model: drawn as it is, above
        derived = ("v",) if scheduler.config.get("prediction_type", "epsilon") == "epsilon" else ("eps", "v")
        views.update({what: Preview((noise_pred, sample), PredictionView(scheduler, timestep, what, previewer))
                      for what in derived})
    if guidance is not None:
        views["guidance"] = Preview(tuple(guidance), GuidanceHeatmap())
    if attention is not None:
        views["attention"] = Preview(attention, AttentionMaps())
    views["measures"] = Preview((latents, *(guidance or ())), StepMeasures(scheduler, timestep))
    return views


def view_array(step: Step, name: str, tokens=None) -> np.ndarray | None:
    """Step ``step``'s view ``name`` (a key of :data:`VIEWS`) as a (H, W, 3) uint8 image; None where the step has
    none (the guidance of a run without guidance, or a view the stream left out). ``tokens``: the token indices
    the attention view shows (their maps summed); None: the last token before the end token."""
    if name == "attention":
        maps = step_attention(step)
        return None if maps is None else attention_overlay(maps, tokens, step.preview_x0.array())
    if name == "x0":
        preview = step.preview_x0
    elif name == "xt":
        preview = step.preview_xt
    else:
        preview = step.views.get(name)
    return preview.array() if preview is not None else None


def step_bytes(step: Step) -> int:
    """The memory a kept step holds: its previews' tensors (numpy as the worker sends them, or torch) and the images
    drawn from them so far."""
    previews = [step.preview_x0, step.preview_xt, *step.views.values()]
    total = 0
    for preview in filter(None, previews):
        tensors = preview.tensor if isinstance(preview.tensor, tuple) else (preview.tensor,)
        total += sum(int(getattr(t, "nbytes", 0)) for t in tensors)
        total += int(getattr(preview.__dict__.get("_array"), "nbytes", 0))  # drawn (Preview caches it)
    return total


def thin_history(steps, max_bytes: int) -> tuple[tuple[Step, ...], int]:
    """(the steps kept, k): every k-th step counted back from the last (the last always), with the smallest k whose
    kept steps hold at most about ``max_bytes`` (two steps at least: the scrubber's ends), as Unconditional's
    loop keeps its history (``engine.sampling.unconditional.scrub_every``)."""
    steps = tuple(steps)
    if not steps:
        return steps, 1
    per_step = max(max(step_bytes(s) for s in steps[-2:]), 1)  # the steps are alike; the last may be drawn
    frames = max(2, max_bytes // per_step)
    every = max(1, math.ceil(len(steps) / frames))
    return tuple(s for i, s in enumerate(steps) if (len(steps) - 1 - i) % every == 0), every


def step_measures(step: Step) -> dict[str, float] | None:
    """``{"step", "t", "sigma", "latent std", "guidance rms"}`` of a step (guidance rms is NaN without guidance);
    None where the step carries no measures."""
    preview = step.views.get("measures")
    if preview is None:
        return None
    values = preview.array()
    return {"step": step.step, **{name: float(v) for name, v in zip(MEASURES, values)}}


def step_attention(step: Step) -> np.ndarray | None:
    """A step's cross-attention maps, (n_tokens, h, w) float32; None where the run did not collect them."""
    preview = step.views.get("attention")
    return None if preview is None else preview.array()


def run_attention(steps) -> np.ndarray | None:
    """A run's cross-attention maps, (n_tokens, h, w): the mean of its steps' maps; None without maps."""
    maps = [m for s in steps if (m := step_attention(s)) is not None]
    return np.mean(np.stack(maps), axis=0).astype(np.float32) if maps else None


def attention_overlay(maps: np.ndarray, tokens, image: np.ndarray) -> np.ndarray:
    """The summed maps of ``tokens`` (indices; None: the last before the end token) as a heat map scaled from its
    own smallest to its largest value (where the word lands more and less; a map is never 0 anywhere), upsampled
    (bilinear) to ``image`` (H, W, 3) uint8 and blended over it."""
    from PIL import Image

    n = maps.shape[0]
    tokens = tuple(tokens) if tokens else (max(n - 2, 0),)
    heat = maps[[min(max(int(i), 0), n - 1) for i in tokens]].sum(axis=0)
    heat = (heat - heat.min()) / (float(heat.max() - heat.min()) or 1.0)
    height, width = image.shape[:2]
    heat = np.asarray(Image.fromarray(heat.astype(np.float32), mode="F").resize((width, height), Image.BILINEAR))
    blended = heat_colors(heat) * ATTENTION_ALPHA + image[..., :3].astype(np.float32) * (1 - ATTENTION_ALPHA)
    return np.round(blended).astype(np.uint8)


def heat_colors(values: np.ndarray) -> np.ndarray:
    """(h, w) values in [0, 1] -> (h, w, 3) uint8 on the inferno ramp."""
    x = np.clip(values, 0.0, 1.0) * (len(HEAT_STOPS) - 1)
    low = np.minimum(x.astype(np.int64), len(HEAT_STOPS) - 2)
    frac = (x - low)[..., None]
    rgb = HEAT_STOPS[low] * (1 - frac) + HEAT_STOPS[low + 1] * frac
    return np.round(rgb).astype(np.uint8)


class GuidanceHeatmap:
    """|ε_text − ε_uncond| over the latent's channels, as a heat map: where classifier-free guidance (Ho & Salimans
    2022, eq. 6: ε = ε_uncond + w (ε_text − ε_uncond)) pushes the image, scaled to this step's largest push."""

    def __init__(self, min_side: int = 256):
        self.min_side = min_side

    def __call__(self, pair) -> np.ndarray:
        noise_uncond, noise_text = (as_array(x) for x in pair)
        delta = (noise_text - noise_uncond)[0]  # (C, h, w)
        magnitude = np.sqrt((delta**2).sum(axis=0))  # (h, w)
        top = float(np.percentile(magnitude, HEAT_TOP_PERCENTILE)) or 1.0
        return upscale_nearest(heat_colors(magnitude / top), self.min_side)


class AttentionMaps:
    """The attention view's drawing: the step's maps as numpy (n_tokens, h, w) float32 (see
    :func:`attention_overlay` for the image; the page picks the tokens)."""

    def __call__(self, maps) -> np.ndarray:
        return as_array(maps)


class StepMeasures:
    """A step's numbers as a float32 array in :data:`MEASURES` order: its timestep; sigma =
    sqrt((1 - alpha_bar_t) / alpha_bar_t), the noise level at t (Karras et al. 2022, sec. 2); the std of the
    latent after the step; and the root mean square of ε_text − ε_uncond (NaN without guidance)."""

    def __init__(self, scheduler, timestep: float):
        self.alphas_cumprod = scheduler.alphas_cumprod  # read when drawn, as X0Previewer does: no read in the loop
        self.timestep = timestep

    def __getstate__(self) -> dict:
        """Crossing to another process: the table as numpy, no tensor."""
        table = self.alphas_cumprod
        return {**self.__dict__, "alphas_cumprod": table.cpu().numpy() if hasattr(table, "cpu") else table}

    @property
    def sigma(self) -> float:
        t = min(max(int(round(float(self.timestep))), 0), len(self.alphas_cumprod) - 1)
        alpha_bar = float(self.alphas_cumprod[t])
        return math.sqrt((1 - alpha_bar) / alpha_bar) if alpha_bar > 0 else math.inf

    def __call__(self, tensors) -> np.ndarray:
        latents, *guidance = (as_array(x) for x in tensors)
        rms = float(np.sqrt(np.mean((guidance[1] - guidance[0]) ** 2))) if guidance else math.nan
        return np.array([self.timestep, self.sigma, float(latents.std()), rms], dtype=np.float32)


class PredictionView(X0Previewer):
    """eps, x0 or v of one step, from (model_output, x_t), whatever the model predicts (its scheduler's
    ``prediction_type``): x0 as :func:`~engine.sampling.preview.x0_from` draws it, eps = (x_t - sqrt(alpha_bar_t) x0) /
    sqrt(1 - alpha_bar_t) (Ho et al. 2020, eq. 4), v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x0 (Salimans &
    Ho 2022, sec. 4)."""

    def __init__(self, scheduler, timestep: float, what: str, inner):
        super().__init__(scheduler, timestep, inner)
        self.what = what  # "eps", "x0" or "v"

    def __call__(self, pair) -> np.ndarray:
        model_output, sample = (as_array(x) for x in pair)
        alpha_bar = self.alpha_bar
        a, s = alpha_bar**0.5, (1 - alpha_bar) ** 0.5
        x0 = x0_from(model_output, sample, alpha_bar, self.prediction_type)
        if self.what == "x0":
            return self.inner(x0)
        eps = model_output if self.prediction_type == "epsilon" else (sample - a * x0) / s
        return self.inner(eps if self.what == "eps" else a * eps - s * x0)
