"""The Noise tab: the forward process x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) noise, made visible.

The tab opens drawn with its defaults: the components' first values are computed in :func:`build`,
so the page shows the strip, the slider's frame and the plots before anyone presses a thing. From
then on one rule holds for every field: a person's change redraws (a choice when picked, a number
or the timesteps on Enter, a slider on release, an image on upload or clear).

The plots mount once and then only get new data, and new colours just after it (see ``dress``):
a new ``color_map`` makes Gradio's plot build its chart, legend included, afresh. Hiding and
showing the plots to redraw a legend left Gradio's plot observing a removed element: a console
error on each later resize.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import gradio as gr
import numpy as np
import pandas as pd

from engine.sampling.schedulers import BETA_SCHEDULES
from engine.errors import InputError
from engine.forward.noise import (
    DEFAULT_TIMESTEPS,
    MAX_TRAIN_TIMESTEPS,
    MAX_RESOLUTION,
    MIN_RESOLUTION,
    SAMPLE_IMAGES,
    NoiseRequest,
    NoiseSchedule,
    TIMESTEP_SPACINGS,
    clamp_timesteps,
)
from engine.validation import check_choice, check_int, given
from ui.common import fill_on_open, friendly_errors, uploaded_path, whole

CUSTOM = "(the settings below)"
NO_MARKER = "(none)"
FIRST_T = 500  # the slider's first t: halfway through DDPM's T = 1000
PLOTS = {  # plot title -> the curves it overlays (names of the engine's schedule_arrays)
    "β_t: the noise added at step t": ("beta",),
    "ᾱ_t: the share of the image left (squared)": ("alpha_bar",),
    "signal √ᾱ_t and noise √(1 - ᾱ_t)": ("sqrt(alpha_bar)", "sqrt(1 - alpha_bar)"),
    "log SNR_t = log(ᾱ_t / (1 - ᾱ_t))": ("log SNR",),
}
SHORT_NAMES = {"sqrt(alpha_bar)": "signal", "sqrt(1 - alpha_bar)": "noise"}  # legends stay one line
CURSOR = "slider t"  # the series of the vertical line at the slider's t; one name, so moving it redraws no legend
MAX_PLOT_ROWS = 990  # browser line plots thin 1000 rows or more by min/max binning, which breaks ticks and cursor
MAX_TICKS = 100  # visited timesteps past this are thinned evenly: closer ticks merge at a plot's width anyway
TICK_HEIGHT = 0.05  # of the plot's value range: a comb along the bottom, not a bar chart
PALETTE = ("#4c78a8", "#f58518", "#54a24b", "#b279a2", "#72b7b2", "#eeca3b", "#9d755d", "#ff9da6")  # tableau10
MAX_MARKER_STEPS = 10_000  # a marker scheduler's steps: more than any schedule has timesteps (those are fitted)
TICK_COLOR, CURSOR_COLOR = "#8c8c8c", "#e45756"  # tableau10's grey and red, kept out of PALETTE


@dataclass(frozen=True, eq=False)
class Drawing:
    """Everything the tab shows for one set of fields."""

    strip: list  # [(image (H, W, 3) uint8, caption)], one per timestep shown; empty when not drawn
    frame: np.ndarray  # (H, W, 3) uint8: x_t at the slider's t
    frame_caption: str
    plots: dict[str, pd.DataFrame]  # plot title -> (t, value, series)
    colors: dict[str, dict[str, str]]  # plot title -> series -> colour
    note: str  # what was fitted to the schedule (timesteps past its end, marker steps), "" when nothing was


@dataclass(frozen=True, eq=False)
class NoiseTab:
    """What another part of the tab (the way back, ui/img2img.py) reads and moves: the image, the schedule's model
    and the slider's t, with the redraws that follow a change made to them."""

    image: gr.Image
    sample_image: gr.Radio
    schedule_model: gr.Dropdown
    t: gr.Slider
    redraw: Callable  # (a dependency) -> the redraw's event: ``schedule_model``'s schedule filled in, all redrawn
    move: Callable  # (a dependency) -> None: after it, the frame and the plots' cursor at ``t``


def build(
    *,
    add_noise: Callable,  # (NoiseRequest, image) -> NoiseStrip
    schedule_arrays: Callable,  # NoiseSchedule -> {curve name: (T,) array}
    visited_timesteps: Callable,  # (scheduler, steps, NoiseSchedule) -> the timesteps it visits
    schedule_of_model: Callable[[str], NoiseSchedule],
    list_models: Callable[[], list[str]],
    schedulers: list[str],
    tab: gr.Tab | None = None,  # the tab itself: opening it refreshes the model list
    schedule_facts: Callable,  # (NoiseSchedule, scheduler, steps, timestep_spacing, model) -> dict
) -> NoiseTab:
    """Lay out the tab inside the current ``gr.Blocks`` and wire its events; returns what the way back moves."""
    defaults, schedule_defaults = NoiseRequest(), NoiseSchedule()

    def schedules(model, beta_schedule, num_train_timesteps, beta_start, beta_end, rescale_betas_zero_snr, overlay):
        """{label: NoiseSchedule}: the chosen one first (a model's or the settings'), then the overlays."""
        if model and model != CUSTOM:
            label, main = model, schedule_of_model(model)
        else:
            label = beta_schedule
            main = settings_schedule(beta_schedule, num_train_timesteps, beta_start, beta_end,
                                     rescale_betas_zero_snr)
        out = {label: main}
        if not isinstance(overlay or [], (list, tuple)):
            raise InputError(f"overlay must be a list of beta schedules ({', '.join(BETA_SCHEDULES)}); "
                             f"got {given(overlay)}", field="overlay")
        for name in overlay or []:
            check_choice("overlay", name, BETA_SCHEDULES)
            other = NoiseSchedule(beta_schedule=name, num_train_timesteps=main.num_train_timesteps,
                                  beta_start=main.beta_start, beta_end=main.beta_end)
            out.setdefault(name if name != label else f"{name} (overlay)", other)
        return out

    def draw(*, image, timesteps, beta_schedule, num_train_timesteps, seed, beta_start, beta_end,
             rescale_betas_zero_snr, resolution, sample_image, model, overlay, marker_scheduler, marker_steps, t,
             with_strip=True) -> Drawing:
        """What the tab shows for these fields (the strip only ``with_strip``)."""
        # 1. The schedules: the chosen one first.
        chosen = schedules(model, beta_schedule, num_train_timesteps, beta_start, beta_end, rescale_betas_zero_snr,
                           overlay)
        main = next(iter(chosen.values()))
        common = dict(schedule=main, seed=whole(seed), resolution=whole(resolution), sample_image=sample_image)
        image = uploaded_path(image, "image")  # the API's file dict (it skips Gradio's preprocessing), or a path

        # 2. The strip (its timesteps fitted to the schedule: those past its end shown at its end) and the
        # frame at the slider's t, both with diffusers' add_noise.
        shown, past = [], ()
        if with_strip:
            fitted, past = clamp_timesteps(timesteps, main.num_train_timesteps)
            result = add_noise(NoiseRequest(timesteps=fitted, **common), image)
            shown = [(im, f"t = {ts}, √ᾱ = {a ** 0.5:.2f}")
                     for im, ts, a in zip(result.images, result.timesteps, result.alpha_bars)]
        check_int("t", whole(t), 0, MAX_TRAIN_TIMESTEPS - 1)
        t = min(whole(t), main.num_train_timesteps - 1)  # a t past a shorter schedule's end: its end
        single = add_noise(NoiseRequest(timesteps=(t,), **common), image)

        # 3. The curves, the visited timesteps' ticks (no more steps than the schedule has) and the cursor at t.
        marker = None if marker_scheduler in (None, "", NO_MARKER) else marker_scheduler
        asked = whole(marker_steps)
        if marker:
            check_int("marker_steps", asked, 1, MAX_MARKER_STEPS)
        steps = min(asked, main.num_train_timesteps) if marker and isinstance(asked, int) else asked
        marker_name = f"{marker}, {steps} steps" if marker else ""
        visited = visited_timesteps(marker, steps, main) if marker else ()
        frames = plot_frames({label: schedule_arrays(s) for label, s in chosen.items()}, visited, marker_name,
                             cursor=t)

        notes = [past_the_end_note(past, main.num_train_timesteps),
                 too_many_steps_note(marker, asked, steps) if marker else ""]
        return Drawing(shown, single.images[0], f"x_t at t = {t}, √ᾱ = {single.alpha_bars[0] ** 0.5:.2f}", frames,
                       {title: series_colors(frame, marker_name) for title, frame in frames.items()},
                       " ".join(n for n in notes if n))

    first = draw(image=None, timesteps=", ".join(str(t) for t in DEFAULT_TIMESTEPS),
                 beta_schedule=schedule_defaults.beta_schedule,
                 num_train_timesteps=schedule_defaults.num_train_timesteps, seed=defaults.seed,
                 beta_start=schedule_defaults.beta_start, beta_end=schedule_defaults.beta_end,
                 rescale_betas_zero_snr=schedule_defaults.rescale_betas_zero_snr, resolution=defaults.resolution,
                 sample_image=defaults.sample_image, model=CUSTOM, overlay=[], marker_scheduler="DDIM",
                 marker_steps=50, t=FIRST_T)

    # -- layout: every field starts at the value ``first`` was drawn with ------------------
    with gr.Row():
        with gr.Column(scale=2, elem_id="noise-form"):
            with gr.Row():
                # image_mode None: the file as uploaded; Gradio's "RGB" decoded any other image whole before the
                # engine could measure it (and clipped 16-bit greys), the engine converts it (engine.images)
                image = gr.Image(label="Image (empty: the sample image)", type="filepath", sources=["upload"],
                                 image_mode=None, height=200, elem_id="noise-image")
                with gr.Column():
                    sample_image = gr.Radio(list(SAMPLE_IMAGES), value=defaults.sample_image, label="Sample image",
                                            elem_id="noise-sample")
                    resolution = gr.Slider(MIN_RESOLUTION, MAX_RESOLUTION, value=defaults.resolution, step=8,
                                           label="Resolution (px)", elem_id="noise-resolution")
                    seed = gr.Number(value=defaults.seed, precision=0, minimum=0, label="Noise seed",
                                     elem_id="noise-seed")
            timesteps = gr.Textbox(value=", ".join(str(t) for t in DEFAULT_TIMESTEPS), label="Timesteps",
                                   info="whole numbers from 0 to T - 1; larger ones are shown at T - 1",
                                   elem_id="noise-timesteps")
            with gr.Group():
                with gr.Row():
                    model = gr.Dropdown([CUSTOM] + list_models(), value=CUSTOM, label="Schedule of model",
                                        info="a model's own schedule fills the fields below (read-only)",
                                        allow_custom_value=True, scale=4, elem_id="noise-model")
                    refresh = gr.Button("↻ Refresh", scale=1, min_width=60)
                with gr.Row():
                    beta_schedule = gr.Dropdown(list(BETA_SCHEDULES), value=schedule_defaults.beta_schedule,
                                                label="Beta schedule", info="beta_schedule",
                                                elem_id="noise-beta-schedule")
                    num_train_timesteps = gr.Number(value=schedule_defaults.num_train_timesteps, precision=0,
                                                    label="Training timesteps T", info="num_train_timesteps",
                                                    elem_id="noise-T")
                with gr.Row():
                    beta_start = gr.Number(value=schedule_defaults.beta_start, label="First beta",
                                           info="beta_start: β at t = 0", elem_id="noise-beta-start")
                    beta_end = gr.Number(value=schedule_defaults.beta_end, label="Last beta",
                                         info="beta_end: β at t = T - 1", elem_id="noise-beta-end")
                rescale = gr.Checkbox(value=schedule_defaults.rescale_betas_zero_snr,
                                      label="Zero terminal SNR: pure noise at t = T - 1",
                                      info="rescale_betas_zero_snr (Lin et al. 2023)", elem_id="noise-rescale")
                overlay = gr.CheckboxGroup(list(BETA_SCHEDULES), value=[], elem_id="noise-overlay",
                                           label="Overlay other beta schedules",
                                           info="with the same T, first and last beta")
                with gr.Row():
                    marker_scheduler = gr.Dropdown([NO_MARKER] + schedulers, value="DDIM",
                                                   label="Mark the timesteps this scheduler visits",
                                                   elem_id="noise-marker")
                    marker_steps = gr.Number(value=50, precision=0, minimum=1, label="in this many steps",
                                             elem_id="noise-marker-steps")
            show = gr.Button("Show", variant="primary", elem_id="noise-show")
            build_facts(schedule_facts, schedulers, model=model, beta_schedule=beta_schedule,
                        num_train_timesteps=num_train_timesteps, beta_start=beta_start, beta_end=beta_end,
                        rescale_betas_zero_snr=rescale)
        with gr.Column(scale=3):
            strip = gr.Gallery(first.strip, label="x_t for each t (one noise sample, only t changes)", columns=4,
                               height="auto", format="png", object_fit="contain", elem_id="noise-strip")
            note = gr.Markdown(first.note, elem_id="noise-note")
            with gr.Row():
                single_t = gr.Slider(0, schedule_defaults.num_train_timesteps - 1, value=FIRST_T, step=1,
                                     label="Slide t", info="the plots mark it", elem_id="noise-t")
                single = gr.Image(first.frame, label=first.frame_caption, format="png", interactive=False,
                                  height=200, elem_id="noise-single", elem_classes="wb-pixels")
            plots = [gr.LinePlot(first.plots[title], x="t", y="value", color="series", color_map=first.colors[title],
                                 title=title, height=260, x_title="t", y_title="", elem_id=f"noise-plot-{i}")
                     for i, title in enumerate(PLOTS)]

    # -- events ---------------------------------------------------------------------------
    # What the API does not return, set once the data has landed: each plot's colours, the frame's caption.
    colors, frame_caption = gr.State(first.colors), gr.State(first.frame_caption)

    @friendly_errors
    def add_noise_endpoint(image, timesteps, beta_schedule, num_train_timesteps, seed,
                           beta_start=schedule_defaults.beta_start, beta_end=schedule_defaults.beta_end,
                           rescale_betas_zero_snr=False, resolution=defaults.resolution,
                           sample_image=defaults.sample_image, model=CUSTOM, overlay=(),
                           marker_scheduler="DDIM", marker_steps=50, t=FIRST_T):
        """The strip, the frame at t, the four plots' data and a note on what was fitted to the schedule."""
        drawing = draw(image=image, timesteps=timesteps, beta_schedule=beta_schedule,
                       num_train_timesteps=num_train_timesteps, seed=seed, beta_start=beta_start, beta_end=beta_end,
                       rescale_betas_zero_snr=rescale_betas_zero_snr, resolution=resolution,
                       sample_image=sample_image, model=model, overlay=overlay, marker_scheduler=marker_scheduler,
                       marker_steps=marker_steps, t=t)
        return [drawing.strip, drawing.frame, *drawing.plots.values(), drawing.note, drawing.colors,
                drawing.frame_caption]

    @friendly_errors
    def move_t(image, timesteps, beta_schedule, num_train_timesteps, seed, beta_start, beta_end,
               rescale_betas_zero_snr, resolution, sample_image, model, overlay, marker_scheduler, marker_steps, t,
               shown=None):
        """The frame at the slider's t and the plots with their cursor there; the strip stays. ``shown``: the
        fields of the drawing shown (``drawn_fields``), returned with the new t while only t has changed."""
        drawing = draw(image=image, timesteps=timesteps, beta_schedule=beta_schedule,
                       num_train_timesteps=num_train_timesteps, seed=seed, beta_start=beta_start, beta_end=beta_end,
                       rescale_betas_zero_snr=rescale_betas_zero_snr, resolution=resolution,
                       sample_image=sample_image, model=model, overlay=overlay, marker_scheduler=marker_scheduler,
                       marker_steps=marker_steps, t=t, with_strip=False)
        fields = [image, timesteps, beta_schedule, num_train_timesteps, seed, beta_start, beta_end,
                  rescale_betas_zero_snr, resolution, sample_image, model, overlay, marker_scheduler, marker_steps]
        shown = [*fields, t] if shown is not None and shown[:-1] == fields else None
        return [drawing.frame, *drawing.plots.values(), drawing.colors, drawing.frame_caption, shown]

    def dress(colors, frame_caption):
        """The frame's caption and the plots' colours. Gradio 6.31's plot applies a new color_map before
        new data, and builds its chart (legend included) only when the colours change: sent after the
        data, new series get their legend."""
        return [gr.update(label=frame_caption), *(gr.update(color_map=colors[title]) for title in PLOTS)]

    @friendly_errors
    def fill_schedule(model):
        """The schedule fields: a chosen model's values, read-only; editable again for the settings below."""
        if not model or model == CUSTOM:
            return [gr.update(interactive=True)] * 5
        s = schedule_of_model(model)
        values = (s.beta_schedule, s.num_train_timesteps, s.beta_start, s.beta_end, s.rescale_betas_zero_snr)
        return [gr.update(value=v, interactive=False) for v in values]

    def fit_slider(num_train_timesteps, t):
        """The slider ends where the schedule does; its value moves only if past the end (a value sent
        back unchanged could undo a slide made while this was on its way)."""
        last = whole(num_train_timesteps) - 1
        return gr.update(maximum=last, value=last) if whole(t) > last else gr.update(maximum=last)

    inputs = [image, timesteps, beta_schedule, num_train_timesteps, seed, beta_start, beta_end, rescale,
              resolution, sample_image, model, overlay, marker_scheduler, marker_steps, single_t]
    outputs = [strip, single, *plots, note, colors, frame_caption]
    # One queue for the tab's events, the last trigger always run: what is shown follows the last change.
    queue = dict(concurrency_id="noise", concurrency_limit=1, trigger_mode="always_last")
    # The fields of the drawing shown, as a person's change drew it (then the slider's t with it); None once anything
    # else has drawn (the Show button: the API's draw).
    drawn_fields = gr.State(None)

    @friendly_errors
    def redraw_if_changed(*values):
        """A person's change: the tab redrawn, unless the fields are those of the drawing shown. Gradio 6.31's
        dropdown says `input` twice for one pick (as the option is picked, and again as the box loses focus,
        which also happens on a click in and out with no pick): every pick drew the strip and the plots twice."""
        *fields, shown = values
        if fields == shown:
            return [gr.skip()] * (len(outputs) + 1)
        return [*add_noise_endpoint(*fields), fields]

    def fit_slider_and_forget(num_train_timesteps, t):
        """:func:`fit_slider` after a drawing that no person's change asked for: the next change redraws."""
        return fit_slider(num_train_timesteps, t), None

    def then_dress_and_fit(drawn, by_change=False):
        drawn.success(dress, [colors, frame_caption], [single, *plots], api_visibility="private")
        if by_change:
            drawn.success(fit_slider, [num_train_timesteps, single_t], single_t, api_visibility="private")
        else:
            drawn.success(fit_slider_and_forget, [num_train_timesteps, single_t], [single_t, drawn_fields],
                          api_visibility="private")

    # The API takes values as sent (preprocess=False): the engine checks each, and its message names the field and
    # what it takes, where Gradio's own checks (a number box's bounds, a dropdown's choices) name neither.
    then_dress_and_fit(show.click(add_noise_endpoint, inputs, outputs, api_name="add_noise", preprocess=False,
                                  **queue))
    # Every field redraws when a person changes it: choices when picked, typed values on Enter, sliders
    # on release. Only a person's changes: the fields a model fills do not set off a second redraw.
    then_dress_and_fit(gr.on(
        [image.upload, image.clear, sample_image.input, resolution.release, seed.submit, timesteps.submit,
         beta_schedule.input, num_train_timesteps.submit, beta_start.submit, beta_end.submit, rescale.input,
         overlay.input, marker_scheduler.input, marker_steps.submit],
        redraw_if_changed, [*inputs, drawn_fields], [*outputs, drawn_fields], api_visibility="private", **queue),
        by_change=True)
    then_dress_and_fit(model.input(
        fill_schedule, model, [beta_schedule, num_train_timesteps, beta_start, beta_end, rescale],
        api_visibility="private", **queue).success(redraw_if_changed, [*inputs, drawn_fields],
                                                   [*outputs, drawn_fields], api_visibility="private", **queue),
        by_change=True)
    moved = [single, *plots, colors, frame_caption, drawn_fields]
    single_t.release(move_t, [*inputs, drawn_fields], moved, api_visibility="private", **queue).success(
        dress, [colors, frame_caption], [single, *plots], api_visibility="private")
    refresh.click(lambda: gr.update(choices=[CUSTOM] + list_models()), None, model, api_visibility="private")
    fill_on_open(tab, lambda: gr.update(choices=[CUSTOM] + list_models()), [model])

    def redraw(dependency):
        drawn = dependency.success(
            fill_schedule, model, [beta_schedule, num_train_timesteps, beta_start, beta_end, rescale],
            api_visibility="private", **queue).success(redraw_if_changed, [*inputs, drawn_fields],
                                                       [*outputs, drawn_fields], api_visibility="private", **queue)
        then_dress_and_fit(drawn, by_change=True)
        return drawn

    def move(dependency) -> None:
        dependency.success(move_t, [*inputs, drawn_fields], moved, api_visibility="private", **queue).success(
            dress, [colors, frame_caption], [single, *plots], api_visibility="private")

    return NoiseTab(image=image, sample_image=sample_image, schedule_model=model, t=single_t, redraw=redraw, move=move)


def past_the_end_note(past: Sequence[int], num_train_timesteps: int) -> str:
    """The page's line on timesteps past the schedule's end (see the engine's ``clamp_timesteps``); "" for none."""
    if not past:
        return ""
    given = f"Timesteps {', '.join(str(t) for t in past)} are" if len(past) > 1 else f"Timestep {past[0]} is"
    return (f"{given} past the end of this schedule (num_train_timesteps = {num_train_timesteps}): "
            f"shown at t = {num_train_timesteps - 1}.")


def too_many_steps_note(marker: str, asked, steps: int) -> str:
    """The page's line on marker steps cut to the schedule's length; "" when they were not."""
    if asked == steps:
        return ""
    return f"{marker} cannot take {asked} steps on a schedule of {steps} timesteps: marked for {steps} steps."


def evenly(values: np.ndarray, n: int) -> np.ndarray:
    """At most ``n`` of ``values``, evenly spaced, the first and last kept."""
    if len(values) <= n:
        return values
    return values[np.unique(np.linspace(0, len(values) - 1, n).round().astype(int))]


def plot_frames(
    arrays: Mapping[str, Mapping[str, np.ndarray]],
    visited: Sequence[int] = (),
    marker_name: str = "",
    cursor: int | None = None,
) -> dict[str, pd.DataFrame]:
    """Plot-ready DataFrames (t, value, series), one per entry of :data:`PLOTS`.

    ``arrays``: each named schedule's curves (the engine's ``schedule_arrays``), the chosen
    schedule first. ``visited`` (the timesteps a sampler visits on the chosen schedule, thinned
    evenly to :data:`MAX_TICKS`): a comb of short ticks along the plot's bottom, a series named
    ``marker_name``. ``cursor``: a vertical line across the plot at that t (series :data:`CURSOR`).
    The curves share the rows left under :data:`MAX_PLOT_ROWS` evenly, each thinned evenly with
    its first and last t kept.
    """
    ticks = evenly(np.array(sorted(set(visited)), dtype=int), MAX_TICKS) if marker_name else np.zeros(0, int)
    fixed_rows = 3 * len(ticks) + (2 if cursor is not None else 0)
    frames = {}
    for title, curves in PLOTS.items():
        # 1. The plot's value range: the ticks rise from its bottom, the cursor spans it.
        lo = min(float(a[c].min()) for a in arrays.values() for c in curves)
        hi = max(float(a[c].max()) for a in arrays.values() for c in curves)
        span = (hi - lo) or 1.0

        # 2. The curves, thinned to share the rows the ticks and the cursor leave.
        per_series = max(2, (MAX_PLOT_ROWS - fixed_rows) // max(1, len(arrays) * len(curves)))
        parts = []
        for label, a in arrays.items():
            keep = evenly(np.arange(len(a["t"])), per_series)
            for curve in curves:
                series = label if len(curves) == 1 else f"{label}: {SHORT_NAMES[curve]}"
                parts.append(pd.DataFrame({"t": a["t"][keep], "value": a[curve][keep], "series": series}))

        # 3. A tick per visited t, (t, lo), (t, lo + TICK_HEIGHT * span), (t, lo); the cursor, (t, lo), (t, hi).
        if len(ticks):
            parts.append(pd.DataFrame({"t": np.repeat(ticks, 3),
                                       "value": np.tile([lo, lo + TICK_HEIGHT * span, lo], len(ticks)),
                                       "series": marker_name}))
        if cursor is not None:
            parts.append(pd.DataFrame({"t": [cursor, cursor], "value": [lo, hi], "series": CURSOR}))
        frames[title] = pd.concat(parts, ignore_index=True)
    return frames


def series_colors(frame: pd.DataFrame, marker_name: str = "") -> dict[str, str]:
    """A colour per series of a plot frame: the curves from :data:`PALETTE` in order, the ticks grey,
    the cursor red."""
    colors, curves = {}, 0
    for series in dict.fromkeys(frame["series"]):
        if series == CURSOR:
            colors[series] = CURSOR_COLOR
        elif marker_name and series == marker_name:
            colors[series] = TICK_COLOR
        else:
            colors[series] = PALETTE[curves % len(PALETTE)]
            curves += 1
    return colors


# -- what the schedule leaves at the end -------------------------------------------------------------------
OWN_SPACING = "(the model's own)"
FACTS_STEPS = 10  # the readout's steps: few enough that each spacing's timesteps fit on a line


def settings_schedule(beta_schedule, num_train_timesteps, beta_start, beta_end, rescale_betas_zero_snr):
    """The NoiseSchedule of the tab's schedule fields."""
    return NoiseSchedule(beta_schedule=beta_schedule, num_train_timesteps=whole(num_train_timesteps),
                         beta_start=beta_start, beta_end=beta_end, rescale_betas_zero_snr=rescale_betas_zero_snr)


def build_facts(schedule_facts: Callable, schedulers: list[str], **fields) -> None:
    """The readouts of what the schedule leaves at T (Lin et al. 2023) and where each spacing starts, with the
    ``/schedule_facts`` endpoint; ``fields``: the tab's model and schedule widgets, by their request names."""

    @friendly_errors
    def facts_endpoint(beta_schedule, num_train_timesteps, beta_start, beta_end, rescale_betas_zero_snr,
                       model=CUSTOM, scheduler="DDIM", steps=FACTS_STEPS, timestep_spacing=OWN_SPACING):
        """sqrt(alpha_bar_T), sqrt(1 - alpha_bar_T), SNR(T), Lin et al.'s Table 1 where it names the schedule,
        and the timesteps ``scheduler`` visits in ``steps`` under each spacing, as a dict."""
        custom = not model or model == CUSTOM
        schedule = settings_schedule(beta_schedule, num_train_timesteps, beta_start, beta_end,
                                     rescale_betas_zero_snr) if custom else None
        spacing = None if timestep_spacing in (None, "", OWN_SPACING) else timestep_spacing
        return schedule_facts(schedule, scheduler, whole(steps), spacing, None if custom else model)

    first = facts_endpoint(NoiseSchedule().beta_schedule, NoiseSchedule().num_train_timesteps,
                           NoiseSchedule().beta_start, NoiseSchedule().beta_end, False)
    with gr.Group(elem_id="noise-facts-form"):
        with gr.Row():
            scheduler = gr.Dropdown(schedulers, value="DDIM", label="What the schedule leaves at the end: sampler",
                                    elem_id="noise-facts-scheduler")
            steps = gr.Number(value=FACTS_STEPS, precision=0, minimum=1, label="steps", elem_id="noise-facts-steps")
            spacing = gr.Dropdown([OWN_SPACING, *TIMESTEP_SPACINGS], value=OWN_SPACING, label="Timestep spacing",
                                  info="timestep_spacing", elem_id="noise-facts-spacing")
    readout = gr.Markdown(facts_markdown(first), elem_id="noise-facts")
    data = gr.JSON(first, visible=False)

    inputs = [fields["beta_schedule"], fields["num_train_timesteps"], fields["beta_start"], fields["beta_end"],
              fields["rescale_betas_zero_snr"], fields["model"], scheduler, steps, spacing]
    queue = dict(concurrency_id="noise", concurrency_limit=1, trigger_mode="always_last")
    f = fields
    gr.on([f["beta_schedule"].input, f["num_train_timesteps"].submit, f["beta_start"].submit, f["beta_end"].submit,
           f["rescale_betas_zero_snr"].input, f["model"].change, scheduler.input, steps.submit, spacing.input],
          facts_endpoint, inputs, data, api_name="schedule_facts", preprocess=False, **queue
          ).success(facts_markdown, data, readout, api_visibility="private")


def facts_markdown(facts: dict) -> str:
    """The readouts as the page shows them: the end of the schedule beside Table 1, the meaning, the spacings."""
    last = facts["T"] - 1
    paragraphs = [f"**At t = T - 1 = {last}:** √ᾱ_T = {facts['sqrt_alpha_bar_T']:g} · "
                  f"√(1 - ᾱ_T) = {facts['sqrt_one_minus_alpha_bar_T']:g} · SNR(T) = {facts['snr_T']:g}"]
    paper = facts.get("lin_et_al_table_1")
    if paper:
        paragraphs.append(f"Lin et al. 2023, Table 1 ({paper['schedule']}): "
                          f"√ᾱ_T = {paper['sqrt_alpha_bar_T']:.6f} · SNR(T) = {paper['snr_T']:.6f}")
    paragraphs.append(facts["meaning"])
    rows = [f"| spacing | timesteps {facts['scheduler']} visits in {facts['steps']} steps (the first in bold) |",
            "|---|---|"]
    for spacing, timesteps in facts["timesteps"].items():
        name = f"{spacing} (used)" if spacing == facts["timestep_spacing"] else spacing
        start = "starts at T - 1" if timesteps[0] == last else f"skips t > {timesteps[0]}"
        shown = ", ".join([f"**{timesteps[0]}**", *(str(t) for t in timesteps[1:])])
        rows.append(f"| {name} | {shown} ({start}) |")
    return "\n\n".join([*paragraphs, "\n".join(rows)])
