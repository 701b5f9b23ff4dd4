"""The Noise tab: the forward process x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) noise, made visible."""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import gradio as gr
import numpy as np
import pandas as pd

from engine.sampling.schedulers import BETA_SCHEDULES
from engine.forward.noise import (
    DEFAULT_TIMESTEPS,
    MAX_RESOLUTION,
    MIN_RESOLUTION,
    SAMPLE_IMAGES,
    NoiseRequest,
    NoiseSchedule,
)
from ui.common import friendly_errors, whole

CUSTOM = "(the settings below)"
PLOTS = {  # plot title -> the curves it overlays (names of the engine's schedule_arrays)
    "beta_t": ("beta",),
    "alpha_bar_t": ("alpha_bar",),
    "signal sqrt(alpha_bar_t) and noise sqrt(1 - alpha_bar_t)": ("sqrt(alpha_bar)", "sqrt(1 - alpha_bar)"),
    "log SNR_t": ("log SNR",),
}
SHORT_NAMES = {"sqrt(alpha_bar)": "signal", "sqrt(1 - alpha_bar)": "noise"}  # legends stay one line
MAX_PLOT_ROWS = 990  # browser line plots thin 1000 rows or more by min/max binning, which breaks the stems


def build(
    *,
    add_noise: Callable,  # (NoiseRequest, image) -> NoiseStrip
    schedule_arrays: Callable,  # NoiseSchedule -> {curve name: (T,) array}
    visited_timesteps: Callable,  # (scheduler, steps, NoiseSchedule) -> the timesteps it visits
    schedule_of_model: Callable[[str], NoiseSchedule],
    list_models: Callable[[], list[str]],
    schedulers: list[str],
) -> None:
    """Lay out the tab inside the current ``gr.Blocks`` and wire its events."""
    defaults, schedule_defaults = NoiseRequest(), NoiseSchedule()
    with gr.Row():
        with gr.Column(scale=2):
            with gr.Row():
                image = gr.Image(label="Image (empty: the sample image)", type="filepath", sources=["upload"],
                                 height=200, elem_id="noise-image")
                with gr.Column():
                    sample_image = gr.Radio(list(SAMPLE_IMAGES), value=defaults.sample_image, label="Sample image")
                    resolution = gr.Slider(MIN_RESOLUTION, MAX_RESOLUTION, value=defaults.resolution, step=8,
                                           label="Resolution (px)")
                    seed = gr.Number(value=defaults.seed, precision=0, minimum=0, label="Noise seed",
                                     elem_id="noise-seed")
            timesteps = gr.Textbox(value=", ".join(str(t) for t in DEFAULT_TIMESTEPS), label="Timesteps",
                                   info="whole numbers from 0 to num_train_timesteps - 1", elem_id="noise-timesteps")
            with gr.Group():
                with gr.Row():
                    model = gr.Dropdown([CUSTOM] + list_models(), value=CUSTOM, label="Schedule of model",
                                        allow_custom_value=True, scale=4, elem_id="noise-model")
                    refresh = gr.Button("↻ Refresh", scale=1, min_width=60)
                with gr.Row():
                    beta_schedule = gr.Dropdown(list(BETA_SCHEDULES), value=schedule_defaults.beta_schedule,
                                                label="beta_schedule", elem_id="noise-beta-schedule")
                    num_train_timesteps = gr.Number(value=schedule_defaults.num_train_timesteps, precision=0,
                                                    label="num_train_timesteps", elem_id="noise-T")
                with gr.Row():
                    beta_start = gr.Number(value=schedule_defaults.beta_start, label="beta_start")
                    beta_end = gr.Number(value=schedule_defaults.beta_end, label="beta_end")
                    rescale = gr.Checkbox(value=False, label="rescale_betas_zero_snr")
                overlay = gr.CheckboxGroup(list(BETA_SCHEDULES), value=[], elem_id="noise-overlay",
                                           label="Overlay other beta schedules (same T, beta_start, beta_end)")
                with gr.Row():
                    marker_scheduler = gr.Dropdown(["(none)"] + schedulers, value="DDIM",
                                                   label="Mark the timesteps this scheduler visits")
                    marker_steps = gr.Number(value=50, precision=0, minimum=1, label="for this many steps")
            show = gr.Button("Show", variant="primary", elem_id="noise-show")
        with gr.Column(scale=3):
            strip = gr.Gallery(label="x_t for each t (one noise sample, only t changes)", columns=4, height="auto",
                               format="png", object_fit="contain", elem_id="noise-strip")
            with gr.Row():
                single_t = gr.Slider(0, schedule_defaults.num_train_timesteps - 1, value=500, step=1,
                                     label="Slide t", elem_id="noise-t")
                single = gr.Image(label="x_t at the slider's t", format="png", interactive=False, height=200,
                                  elem_id="noise-single", elem_classes="wb-pixels")
            plots = [gr.LinePlot(x="t", y="value", color="series", title=title, height=260, x_title="t",
                                 y_title="", elem_id=f"noise-plot-{i}")
                     for i, title in enumerate(PLOTS)]

    def schedules(model, beta_schedule, num_train_timesteps, beta_start, beta_end, rescale_betas_zero_snr, overlay):
        """{label: NoiseSchedule}: the chosen one first (a model's or the settings'), then the overlays."""
        if model and model != CUSTOM:
            label, main = model, schedule_of_model(model)
        else:
            label = beta_schedule
            main = NoiseSchedule(beta_schedule=beta_schedule, num_train_timesteps=whole(num_train_timesteps),
                                 beta_start=beta_start, beta_end=beta_end,
                                 rescale_betas_zero_snr=bool(rescale_betas_zero_snr))
        out = {label: main}
        for name in overlay or []:
            other = NoiseSchedule(beta_schedule=name, num_train_timesteps=main.num_train_timesteps,
                                  beta_start=main.beta_start, beta_end=main.beta_end)
            out.setdefault(name if name != label else f"{name} (overlay)", other)
        return out

    @friendly_errors
    def add_noise_endpoint(image, timesteps, beta_schedule, num_train_timesteps, seed,
                           beta_start=schedule_defaults.beta_start, beta_end=schedule_defaults.beta_end,
                           rescale_betas_zero_snr=False, resolution=defaults.resolution,
                           sample_image=defaults.sample_image, model=CUSTOM, overlay=(),
                           marker_scheduler="DDIM", marker_steps=50, shown_series=None):
        chosen = schedules(model, beta_schedule, num_train_timesteps, beta_start, beta_end, rescale_betas_zero_snr,
                           overlay)
        main = next(iter(chosen.values()))
        request = NoiseRequest(timesteps=timesteps, schedule=main, seed=whole(seed), resolution=whole(resolution),
                               sample_image=sample_image)
        result = add_noise(request, image)
        gallery = [(im, f"t = {t}, √ᾱ = {a ** 0.5:.2f}")
                   for im, t, a in zip(result.images, result.timesteps, result.alpha_bars)]
        marker = None if marker_scheduler in (None, "", "(none)") else marker_scheduler
        arrays = {label: schedule_arrays(schedule) for label, schedule in chosen.items()}
        visited = visited_timesteps(marker, whole(marker_steps), main) if marker else ()
        frames = plot_frames(arrays, visited, f"{marker}, {whole(marker_steps)} steps" if marker else "")
        slider = gr.update(maximum=main.num_train_timesteps - 1)
        series = [list(dict.fromkeys(frame["series"])) for frame in frames.values()]
        if series != shown_series:
            # Gradio 6.31 draws a plot's legend (its colour domain) once, when the plot mounts: new
            # series would not be drawn. Hiding the plots here and showing them after (show_plots)
            # mounts them afresh.
            yield [gallery, slider, *(gr.update(value=f, visible=False) for f in frames.values()), gr.skip()]
        yield [gallery, slider, *frames.values(), series]

    @friendly_errors
    def single_frame(image, t, beta_schedule, num_train_timesteps, seed, beta_start, beta_end,
                     rescale_betas_zero_snr, resolution, sample_image, model):
        main = next(iter(schedules(model, beta_schedule, num_train_timesteps, beta_start, beta_end,
                                   rescale_betas_zero_snr, ()).values()))
        request = NoiseRequest(timesteps=(min(whole(t), main.num_train_timesteps - 1),), schedule=main,
                               seed=whole(seed), resolution=whole(resolution), sample_image=sample_image)
        return add_noise(request, image).images[0]

    shown_series = gr.State(None)  # each plot's series as last drawn
    noise_inputs = [image, timesteps, beta_schedule, num_train_timesteps, seed, beta_start, beta_end, rescale,
                    resolution, sample_image, model, overlay, marker_scheduler, marker_steps, shown_series]
    noise_outputs = [strip, single_t, *plots, shown_series]

    def show_plots():
        return [gr.update(visible=True)] * len(plots)

    show.click(add_noise_endpoint, noise_inputs, noise_outputs, api_name="add_noise").then(
        show_plots, None, plots, api_visibility="private")
    # Changing the schedule (or the picture) redraws at once: the strip and the plots change together.
    gr.on([beta_schedule.change, rescale.change, overlay.change, marker_scheduler.change, sample_image.change,
           image.change, model.change, num_train_timesteps.submit, beta_start.submit, beta_end.submit,
           marker_steps.submit, timesteps.submit, seed.submit],
          add_noise_endpoint, noise_inputs, noise_outputs, api_visibility="private").then(
        show_plots, None, plots, api_visibility="private")
    single_inputs = [image, single_t, beta_schedule, num_train_timesteps, seed, beta_start, beta_end, rescale,
                     resolution, sample_image, model]
    single_t.release(single_frame, single_inputs, single, api_visibility="private")
    refresh.click(lambda: gr.update(choices=[CUSTOM] + list_models()), None, model, api_visibility="private")


def plot_frames(
    arrays: Mapping[str, Mapping[str, np.ndarray]],
    visited: Sequence[int] = (),
    marker_name: str = "",
) -> dict:
    """Plot-ready DataFrames (t, value, series), one per entry of :data:`PLOTS`.

    ``arrays``: each named schedule's curves (the engine's ``schedule_arrays``), the chosen
    schedule first. Each is thinned evenly (first and last t kept) to fit :data:`MAX_PLOT_ROWS`;
    with ``visited`` (the timesteps a sampler visits on the chosen schedule), a series named
    ``marker_name`` of stems from the plot's floor up to the chosen schedule's first curve.
    """
    first = next(iter(arrays), None)
    visited = {first: visited} if len(visited) and first is not None else {}
    frames = {}
    for title, curves in PLOTS.items():
        stem_rows = 3 * sum(len(set(v)) for v in visited.values())
        per_series = max(2, (MAX_PLOT_ROWS - stem_rows) // max(1, len(arrays) * len(curves)))
        floor = min(float(a[c].min()) for a in arrays.values() for c in curves)
        parts = []
        for label, a in arrays.items():
            keep = np.unique(np.linspace(0, len(a["t"]) - 1, min(len(a["t"]), per_series)).round().astype(int))
            for curve in curves:
                series = label if len(curves) == 1 else f"{label}: {SHORT_NAMES[curve]}"
                parts.append(pd.DataFrame({"t": a["t"][keep], "value": a[curve][keep], "series": series}))
            if label in visited:
                ts = np.array(sorted(set(visited[label])))
                top = a[curves[0]][ts]
                name = marker_name
                parts.append(pd.DataFrame({  # (t, floor), (t, curve), (t, floor) per visited t: a stem
                    "t": np.repeat(ts, 3),
                    "value": np.stack([np.full_like(top, floor), top, np.full_like(top, floor)], 1).ravel(),
                    "series": name,
                }))
        frames[title] = pd.concat(parts, ignore_index=True)
    return frames
