"""Compare: one prompt and seed, two to six variants along one axis, run one after another; then every column
scrubbed together, each at the step where its sampler stands at the same timestep.

A column's run is the very run Text to image (or Unconditional) makes for its settings: the same request, the
same loop, the same image. This module says what the columns are (:class:`CompareRequest`), the events that
frame them, which step of each column matches a point of the trajectory (:func:`lockstep`), and runs the columns
one after another on the device's queue it is given (:func:`iter_compare`).
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass, replace
from typing import Callable, Iterator, Sequence

from engine.errors import InputError, ModelLoadError
from engine.events import Done, Step
from engine.models.configs import latent_shape
from engine.models.registry import default_model
from engine.sampling import blend
from engine.sampling.txt2img import Txt2ImgRequest
from engine.sampling.unconditional import UnconditionalRequest, seconds_per_step
from engine.validation import check_choice, check_int

AXES = ("scheduler", "steps", "guidance scale", "model", "guidance rescale", "timestep spacing", "seed blend")
MIN_COLUMNS, MAX_COLUMNS = 2, 6  # a comparison needs two; more than six columns are too small to see
DEFAULT_VALUES = {  # what the page offers on each axis (any other value the axis takes can be typed)
    "scheduler": ("DDIM", "Euler a", "DPM++ 2M Karras"),
    "steps": (10, 25, 50),
    "guidance scale": (1.0, 4.0, 7.5, 12.0),
    "guidance rescale": (0.0, 0.7),  # plain guidance against Lin et al. 2023's recommendation
    "timestep spacing": ("leading", "trailing"),
    "seed blend": (0.0, 0.5, 1.0),  # the seed, the slerp midpoint, the second seed
}
TXT2IMG_ONLY_AXES = ("guidance scale", "guidance rescale")  # settings of guidance: unconditional models have none


@dataclass(frozen=True)
class CompareRequest:
    axis: str  # one of AXES: what changes from column to column
    values: tuple  # 2 to 6 values along the axis, in column order (a comma-separated text is split)
    prompt: str = ""
    negative_prompt: str = ""
    seed: int = -1  # one seed for every column; -1 draws one for all
    num_inference_steps: int = 25  # the settings the axis does not change, as Text to image takes them
    guidance_scale: float = 7.5
    scheduler: str = "DPM++ 2M Karras"
    width: int | None = None
    height: int | None = None
    model: str = ""  # the model of every column (its first, on the model axis)
    guidance_rescale: float = 0.0  # as Text to image takes them: plain guidance,
    timestep_spacing: str = ""  # and the model's own spacing
    seed_b: int = -1  # the seed blend axis's second seed (t = 1); the other axes take none

    def __post_init__(self):
        check_choice("axis", self.axis, AXES)
        values = self.values.split(",") if isinstance(self.values, str) else list(self.values or ())
        values = [v.strip() if isinstance(v, str) else v for v in values]
        values = [v for v in values if v != ""]
        if not MIN_COLUMNS <= len(values) <= MAX_COLUMNS:
            raise InputError(f"give {MIN_COLUMNS} to {MAX_COLUMNS} values to compare; got {len(values)}",
                             field="values")
        parsed = tuple(parse_value(self.axis, v) for v in values)
        if len(set(parsed)) < len(parsed):
            raise InputError(f"the values to compare must differ; got {', '.join(str(v) for v in parsed)}",
                             field="values")
        object.__setattr__(self, "values", parsed)  # frozen: normalised once
        check_int("seed_b", self.seed_b, -1, 2**63 - 1)
        if self.axis == "seed blend" and self.seed_b < 0:
            raise InputError(f"seed blend needs a second seed (seed_b) from 0 to {2**63 - 1}; got {self.seed_b}",
                             field="seed_b")
        # Each column's settings are checked by its own request, once the model's kind is known (see columns).

    def resolved(self) -> "CompareRequest":
        """A copy with one seed drawn for every column."""
        return replace(self, seed=self.seed if self.seed >= 0 else secrets.randbelow(2**32))

    @property
    def models(self) -> tuple[str, ...]:
        """The model of each column."""
        return self.values if self.axis == "model" else (self.model,) * len(self.values)

    def columns(self, kind: str) -> tuple:
        """Each column's request for a model of ``kind`` ("txt2img" or "unconditional"), in values order; an
        :class:`InputError` on ``values`` for a value that this kind's runs do not take."""
        return tuple(self.column_request(v, kind) for v in self.values)

    def column_request(self, value, kind: str):
        """The request of the column at ``value``: ``Txt2ImgRequest`` or ``UnconditionalRequest`` as ``kind`` says.
        A value its run refuses is an :class:`InputError` on ``values``, the run's own message inside."""
        fields = dict(scheduler=self.scheduler, num_inference_steps=self.num_inference_steps,
                      guidance_scale=self.guidance_scale, model=self.model, guidance_rescale=self.guidance_rescale,
                      timestep_spacing=self.timestep_spacing)
        fields[AXIS_FIELDS[self.axis]] = value
        seed = self.seed
        if self.axis == "seed blend":
            if kind == "unconditional":
                raise InputError("seed blend takes a text-to-image model: an unconditional run's noise is a batch of "
                                 "images, not blended here", field="model")
            # t = 0 and t = 1 are the two seeds' own runs, bit for bit; between them, the slerp of their noise.
            if value in (0, 1):
                seed = self.seed_b if value == 1 else self.seed
                fields.update(seed_blend=0.0, seed_b=-1)
            else:
                fields["seed_b"] = self.seed_b
        if kind == "unconditional" and self.axis in TXT2IMG_ONLY_AXES:
            raise InputError(f"unconditional models take no {self.axis}: compare schedulers, steps or models",
                             field="axis")
        try:
            if kind == "unconditional":
                return UnconditionalRequest(scheduler=fields["scheduler"], seed=self.seed, model=fields["model"],
                                            num_inference_steps=fields["num_inference_steps"],
                                            timestep_spacing=fields["timestep_spacing"])
            return Txt2ImgRequest(prompt=self.prompt, negative_prompt=self.negative_prompt, seed=seed,
                                  width=self.width, height=self.height, **fields)
        except InputError as exc:
            if exc.field == self.axis:
                raise InputError(f"{self.axis} value {value!r} is not one this axis takes: {exc}",
                                 field="values") from None
            raise


AXIS_FIELDS = {"scheduler": "scheduler", "steps": "num_inference_steps", "guidance scale": "guidance_scale",
               "model": "model", "guidance rescale": "guidance_rescale",
               "timestep spacing": "timestep_spacing", "seed blend": "seed_blend"}  # each axis's field in a column


def parse_value(axis: str, value):
    """A value of ``axis`` in the type its runs take (text for schedulers and models, a whole number of steps, a
    guidance number); an :class:`InputError` on ``values`` for one that is not even that. Its range is checked by
    the column's request (:meth:`CompareRequest.column_request`)."""
    if axis in ("scheduler", "model", "timestep spacing"):
        if not isinstance(value, str):
            raise InputError(f"{axis} values must be names; got {value!r}", field="values")
        return value
    number = _number(value)
    if axis == "steps":
        if number is None or not number.is_integer():
            raise InputError(f"steps values must be whole numbers; got {value!r}", field="values")
        return int(number)
    if number is None:
        raise InputError(f"{axis} values must be numbers; got {value!r}", field="values")
    return float(number)


def _number(value) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


# -- events -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CompareStarted:
    """The comparison is set up: its columns' requests, in values order."""

    axis: str
    values: tuple
    requests: tuple  # Txt2ImgRequest or UnconditionalRequest, one per column
    kind: str  # "txt2img" or "unconditional"


@dataclass(frozen=True)
class Column:
    """Column ``index`` begins: the events after it, up to its ``Done``, are its run's."""

    index: int
    value: object


@dataclass(frozen=True, eq=False)
class ColumnResult:
    """One finished column: its run's ``Done``, the noise level of each step, and its speed."""

    value: object
    done: Done
    sigmas: tuple[float, ...]  # sigma at each step's timestep, sqrt((1 - alpha_bar_t) / alpha_bar_t)

    @property
    def seconds_per_step(self) -> float | None:
        return seconds_per_step(self.done.steps)

    def summary(self) -> dict:
        """What the page and the API report of the column."""
        spp = self.seconds_per_step
        return {"value": self.value, "steps": len(self.done.steps), "elapsed": self.done.info.get("elapsed"),
                "seconds_per_step": round(spp, 4) if spp is not None else None,
                "file": self.done.paths[0] if self.done.paths else None}


@dataclass(frozen=True, eq=False)
class CompareDone:
    """Every column has finished, in values order."""

    axis: str
    columns: tuple[ColumnResult, ...]
    info: dict


# -- lock-step scrubbing ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Frame:
    """Where one column stands at a point of the trajectory."""

    index: int  # into the column's kept steps (those with previews)
    step: Step
    sigma: float
    final: bool  # the column's last step: its final image is shown

    @property
    def caption(self) -> str:
        return f"step {self.step.step}/{self.step.total} · t = {self.step.timestep:g} · σ = {self.sigma:.3g}"


def kept_steps(column: ColumnResult) -> list[tuple[Step, float]]:
    """A column's steps that kept their previews, each with its sigma."""
    return [(s, sigma) for s, sigma in zip(column.done.steps, column.sigmas) if s.preview_x0 is not None]


def lockstep(columns: Sequence[ColumnResult], fraction: float) -> list[Frame]:
    """Each column's step at ``fraction`` (0 to 1) of the trajectory: the one whose timestep is nearest
    (1 - fraction) x the columns' first timestep, so every column stands at the same noise level; 1 gives each
    column's last step."""
    fraction = min(max(float(fraction), 0.0), 1.0)
    firsts = [kept_steps(c)[0][0].timestep for c in columns if kept_steps(c)]
    target = (1.0 - fraction) * max(firsts, default=0.0)
    frames = []
    for column in columns:
        kept = kept_steps(column)
        if fraction >= 1.0:
            i = len(kept) - 1
        else:
            i = min(range(len(kept)), key=lambda k: (abs(kept[k][0].timestep - target), k))
        step, sigma = kept[i]
        frames.append(Frame(index=i, step=step, sigma=sigma, final=i == len(kept) - 1))
    return frames


def sigmas_at(timesteps: Sequence[float], alphas_cumprod: Sequence[float]) -> tuple[float, ...]:
    """sqrt((1 - alpha_bar_t) / alpha_bar_t) at each timestep (rounded to the table's nearest entry)."""
    out = []
    for t in timesteps:
        a = float(alphas_cumprod[min(max(int(round(float(t))), 0), len(alphas_cumprod) - 1)])
        out.append(math.sqrt((1 - a) / a) if a > 0 else math.inf)
    return tuple(out)


NORM_POINTS = 20  # the seed blend's norm chart: t = 0, 0.05, ..., 1
KIND_WORDS = {"txt2img": "a text-to-image", "unconditional": "an unconditional"}


def compare_columns(registry, request: CompareRequest) -> tuple[str, tuple]:
    """(the kind of the compared models, each column's request in values order), or the error the comparison would
    end with: a value its axis does not take, or models of different kinds (``registry`` finds them)."""
    models = [m or default_model("txt2img") for m in request.models]
    try:
        kinds = [registry.kind_of(m) for m in models]
        for m, kind in zip(models, kinds):
            registry.check_available(m, kind)
    except ModelLoadError as exc:
        if request.axis == "model":  # said beside the values, where the model was typed
            raise InputError(str(exc), field="values") from None
        raise
    for m, kind in zip(models[1:], kinds[1:]):
        if kind != kinds[0]:
            raise InputError(f"{m!r} is {KIND_WORDS[kind]} model, but {models[0]!r} is {KIND_WORDS[kinds[0]]} "
                             "one; the models compared must be of one kind", field="values")
    columns = request.columns(kinds[0])
    return kinds[0], tuple(replace(c, model=m) for c, m in zip(columns, models))


def iter_compare(request: CompareRequest, registry, run, sigmas: Callable[[str, Sequence[int]], tuple], *,
                 cancel=None) -> Iterator[object]:
    """Each column's run, one after another on the device (``run``: its queue, :class:`engine.worker.runs.Runs`):
    ``CompareStarted``, then for each column a ``Column`` and its run's events (``Started``, ``Step`` ...,
    ``Done``), then ``CompareDone``. ``sigmas(model, timesteps)``: sigma at each of a run's steps."""
    request = request.resolved()
    kind, columns = compare_columns(registry, request)
    yield CompareStarted(axis=request.axis, values=request.values, requests=columns, kind=kind)
    results = []
    for index, (value, column) in enumerate(zip(request.values, columns)):
        yield Column(index=index, value=value)
        done = None
        for event in run(kind, column, cancel, "drawn"):
            if isinstance(event, Done):
                done = event
            yield event
        results.append(ColumnResult(value=value, done=done,
                                    sigmas=sigmas(column.model, [s.timestep for s in done.steps])))
    info = {"axis": request.axis, "values": list(request.values), "seed": request.seed, "kind": kind,
            "columns": [r.summary() for r in results]}
    if kind == "txt2img":
        info.update(prompt=request.prompt, negative_prompt=request.negative_prompt)
    if request.axis == "seed blend":  # why a lerp midpoint washes out: the noise's norm along t
        info["seed_b"] = request.seed_b
        folder = registry.config_folder(columns[0].model)
        shape = latent_shape(folder, results[0].done.info["width"], results[0].done.info["height"]) if folder \
            else None
        if shape is not None:
            info["noise_norms"] = blend.noise_norms(request.seed, request.seed_b, shape,
                                                    [i / NORM_POINTS for i in range(NORM_POINTS + 1)])
    yield CompareDone(axis=request.axis, columns=tuple(results), info=info)
