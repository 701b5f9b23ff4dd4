"""The Training tab: pick data, set the recipe, start a run in the background, watch its loss and samples.

The job belongs to the server (:class:`engine.train_jobs.TrainingManager`), not to the page:
the page only polls its status, so closing the browser does not stop a run, and a page
opened later shows it. Start waits for the data check and the model build, then returns;
Stop asks the run to save a checkpoint and end.
"""

from __future__ import annotations

import html
import inspect
import json
import math
from dataclasses import dataclass, replace
from typing import Callable

import gradio as gr

from engine.errors import DataError, InputError, ModelLoadError
from engine.sampling.schedulers import SAMPLER_BETA_SCHEDULES
from engine.training.base import METHODS, SCRATCH
from engine.training.data import DIGITS, DIGITS_FRAMED
from engine.training.objectives.pixel import PRESETS
from engine.training.recipes import DEFAULT_RECIPE, RECIPE_FIELDS, RECIPES
from engine.training.request import (LORA_LAYERS, MIXED_PRECISION, PREDICTION_TYPES, RUN_CONTROL, TrainRequest,
                                     field_help)
from engine.training.jobs import FAILED, IDLE, TrainStatus
from ui import gradio_compat
from ui.common import (DEVICE_QUEUE, field_messages, friendly_errors, message_html, page_error, progress_html,
                       fill_on_open, switch_tab_js, uploaded_path, whole)

POLL_INTERVAL = 1.0  # seconds between status polls; the loss itself arrives every log_every steps
MAX_PLOT_POINTS = 1000  # per curve: a long run's history is thinned so that a poll stays small
STOP_WAIT = 120.0  # seconds Stop waits for the checkpoint before it answers (the run still ends after)
UNCONDITIONAL_TAB = "Unconditional"  # the tab "Sample from this checkpoint" switches to
HELP = {name: comment for name, (_, comment) in field_help().items()}
GRID_HEIGHT = 540  # px the sample grid is shown at: a 4x4 grid of 128 px samples with 8 px gaps is 536
LOSS_COLOURS = {"raw": "#a3a3a3", "smoothed": "#ea580c"}
LR_COLOUR = "#2563eb"
BUCKET_SCHEME = "viridis"  # bucket 0 (least noise) dark to the last (most noise) light
PLOT_HEIGHT = 240
METHOD_LABELS = {"full": "full: every weight of an unconditional UNet",
                 "lora": "lora: adapters on a text-to-image model (the base stays frozen)"}


@dataclass(frozen=True)
class _Status:
    """The status widgets, in the order every status handler returns them."""

    progress: gr.HTML
    info: gr.JSON
    loss_plot: gr.Plot
    bucket_plot: gr.Plot
    lr_plot: gr.Plot
    grid: gr.Image
    checkpoint: gr.Markdown
    sample: gr.Button
    runs: gr.Dropdown
    unconditional_model: gr.Dropdown | None

    def outputs(self) -> list:
        widgets = [self.progress, self.info, self.loss_plot, self.bucket_plot, self.lr_plot, self.grid,
                   self.checkpoint, self.sample, self.runs]
        return widgets + ([self.unconditional_model] if self.unconditional_model is not None else [])


def build(
    *,
    start_training: Callable[[TrainRequest], TrainStatus],  # returns once the first step is about to run
    resume_training: Callable[..., TrainStatus],  # (run_name, **run-control changes)
    run_settings: Callable[[str], TrainRequest],  # the request a run was started with
    stop_training: Callable[[float], TrainStatus],  # (seconds to wait for the checkpoint)
    training_status: Callable[[], TrainStatus],
    list_data: Callable[[], list[str]],
    save_upload: Callable[[list[str], str], str],  # (files, folder name) -> the new folder's name
    list_runs: Callable[[], list[str]],  # runs with a checkpoint to resume
    list_unconditional_models: Callable[[], list[str]],
    shown: Callable[[str], str],  # a path or a message as people read it: the app's folders relative
    unconditional_model: gr.Dropdown | None = None,  # the Unconditional tab's model box, kept up to date
    list_txt2img_models: Callable[[], list[str]] = lambda: [],  # what a LoRA run can start from
    base_resolution: Callable[[str, str], int | None] = lambda name, method: None,  # (start_from, method) -> px
    check_training: Callable[[TrainRequest], None] = lambda request: None,  # what Start would refuse at once
    tab: gr.Tab,  # this tab: its status is shown and polled while it is open
) -> gr.Timer:
    """Lay out the tab inside the current ``gr.Blocks`` and wire its events; returns the status poll's timer, which
    runs while the tab is open (:func:`stop_polling_elsewhere` stops it when another tab is opened)."""
    defaults = TrainRequest()

    def as_shown(s: TrainStatus) -> TrainStatus:
        """The status as the page shows it: the run's folder and checkpoint as ``models/<run>``."""
        return replace(s, run_dir=shown(s.run_dir), checkpoint=s.checkpoint and shown(s.checkpoint),
                       message=shown(s.message), lora=s.lora and shown(s.lora))

    def start_choices(method: str) -> list[str]:
        if method == "lora":  # a LoRA trains on a diffusers folder, never a single file
            return [m for m in list_txt2img_models() if not m.endswith(".safetensors")]
        return [SCRATCH, *list_unconditional_models()]

    with gr.Row(elem_classes="wb-run-layout"):
        with gr.Column(scale=2):
            w = _settings(defaults, list_data, list_runs, start_choices(defaults.method))
        with gr.Column(scale=3, elem_classes="wb-previews"):
            status = _status_column(w["runs"], unconditional_model)
    seen = gr.State(None)  # what this page shows already, so a poll sends only what changed
    api_status = gr.JSON(visible=False, label="status")
    api_grid = gr.Image(visible=False, format="png", label="grid")
    api_trigger = gr.Button(visible=False)

    form = {field: w[field] for field in START_PARAMS.values()}  # TrainRequest field -> its widget
    recipe_form = {field: form[field] for field in RECIPE_FIELDS}

    def request_of(*args, **kwargs) -> tuple[bool, dict]:
        """(resume, the values by TrainRequest field, as the request takes them) of /train_start's arguments."""
        given = START_SIGNATURE.bind(*args, **kwargs)
        given.apply_defaults()
        values = {START_PARAMS[name]: value for name, value in given.arguments.items()}  # by TrainRequest field
        resume = values.pop("resume")
        if not isinstance(resume, bool):  # the API takes values as sent: 'no' would be true
            raise InputError(f"resume must be true or false; got {resume!r}", field="resume")
        return resume, {field: _page_value(field, v) for field, v in values.items()}

    @friendly_errors
    @_takes(START_SIGNATURE)  # gradio names the endpoint's parameters after this signature
    def train_start(*args, **kwargs):
        resume, values = request_of(*args, **kwargs)
        if resume:
            started = resume_training(values["run_name"], **{field: values[field] for field in RESUME_CHANGES})
        else:
            started = start_training(TrainRequest(**values))
        if started.state == FAILED:  # not the user's doing: the log has the traceback
            raise gr.Error(started.message, print_exception=False)
        return status_dict(as_shown(started))

    def train_start_page(*args):
        """The page's Start: a refusal is said in the progress line (and a toast), where it stays until the status
        changes; beside its field too (the validator's)."""
        try:
            return train_start.__wrapped__(*args), gr.skip()
        except Exception as exc:
            message = exc.message if isinstance(exc, gr.Error) else page_error(exc)
            gr.Warning(html.escape(message))
            return gr.skip(), message_html(message)

    def start_problem(*args) -> InputError | DataError | ModelLoadError | None:
        """What Start would be refused for, found without starting anything."""
        try:
            resume, values = request_of(*args)
            if not resume:
                check_training(TrainRequest(**values))
        except (InputError, DataError, ModelLoadError) as exc:
            return exc
        return None

    def start_check(*args):
        """At the click: a refusal in the progress line, and under Data when it is the data's."""
        exc = start_problem(*args)
        if exc is None:
            return gr.skip(), ""
        data = isinstance(exc, DataError) or getattr(exc, "field", None) == "data"
        return message_html(str(exc)), message_html(str(exc)) if data else ""

    def validate_start(*args):
        """Each refusal beside its field (a data error beside Data) before anything starts."""
        exc = start_problem(*args)
        if exc is None:
            return [gr.validate(True, "")] * len(args)
        if isinstance(exc, DataError):
            exc = InputError(str(exc), field="data")
        return field_messages(exc, start_fields, len(args))

    @friendly_errors
    def train_stop():
        return status_dict(as_shown(stop_training(STOP_WAIT)))

    @friendly_errors
    def train_status():
        s = as_shown(training_status())
        return status_dict(s, history=True), s.grid

    @friendly_errors
    def train_upload(files, folder_name):
        if files is not None and not isinstance(files, list):
            raise InputError(f"files must be a list of files (gradio_client's handle_file); got {files!r}",
                             field="files")
        name = save_upload([uploaded_path(f, "files") for f in files or []],
                           folder_name.strip() if isinstance(folder_name, str) else folder_name)
        return gr.update(choices=list_data(), value=name), f"Saved as data folder **{name}**; it is selected above."

    def show_all():
        return poll(None)

    def poll(on_page):
        return _status_updates(as_shown(training_status()), on_page, status, list_runs, list_unconditional_models)

    def sample_checkpoint():
        s = training_status()
        if not s.checkpoint:
            return gr.skip()
        return gr.update(choices=list_unconditional_models(), value=s.run_name)

    def pick_method(method, data):
        """What the method can start from (a LoRA run's base is a text-to-image model) and, for a LoRA run on the
        uncaptioned digits, the captioned built-in that works as it is: the LoRA proof's framed digits."""
        choices = start_choices(method)
        value = choices[0] if choices else SCRATCH
        data = DIGITS_FRAMED if method == "lora" and data == DIGITS else gr.skip()
        return gr.update(choices=choices, value=value), _resolution_for(value, method), data

    def pick_start(name, method):  # a base model trains at its own resolution
        return _resolution_for(name, method)

    def _resolution_for(name, method):
        if not name or name == SCRATCH:
            return gr.skip()
        size = base_resolution(name, method)
        return size if size else gr.skip()

    def pick_recipe(name):  # fills the recipe's settings; the data, flip, seed and the rest stay as they are
        if name not in RECIPES:
            return {widget: gr.skip() for widget in recipe_form.values()}
        settings = RECIPES[name].settings
        return {widget: settings[field] for field, widget in recipe_form.items()}

    @friendly_errors
    def pick_run(name):  # fills the form with the run's settings, resume (ticked) included
        if not name:
            return {widget: gr.skip() for widget in form.values()}
        saved = run_settings(name)
        return {widget: getattr(saved, field) for field, widget in form.items()}

    # The API takes values as sent (preprocess=False): the engine checks each, and its message names the field and
    # what it takes, where Gradio's own checks name neither (and a number box rounds 2.5 to 2 unasked).
    api_start = gr.Button(visible=False)  # the public /train_start; the page's Start says a refusal in the page
    api_start.click(
        train_start, inputs=list(form.values()), outputs=[status.info], api_name="train_start",
        concurrency_id=DEVICE_QUEUE, concurrency_limit=1, preprocess=False,
    )
    # A refusal's field, as the engine's message names it (InputError.field), -> the position of its input.
    start_fields = {FIELD_LABELS.get(field, field.replace("_", " ")): k for k, field in enumerate(form)}
    # As Text to image's Generate: its first listener clicks a hidden button whose answer puts a refusal in the
    # progress line (the validator's messages go beside the fields; a refused click runs nothing else).
    check = gr.Button(visible="hidden", elem_id="train-check")
    check.click(start_check, list(form.values()), [status.progress, w["data_note"]], queue=False,
                api_visibility="private", show_progress="hidden")
    w["start"].click(None, js="() => { document.querySelector('#train-check')?.click(); }")
    w["start"].click(train_start_page, inputs=list(form.values()), outputs=[status.info, status.progress],
                     validator=validate_start, api_visibility="private", concurrency_id=DEVICE_QUEUE,
                     concurrency_limit=1)
    # Status and Stop stay out of the device queue: they must answer while the run holds the device.
    w["stop"].click(train_stop, None, [status.info], api_name="train_stop", concurrency_limit=None)
    api_trigger.click(train_status, None, [api_status, api_grid], api_name="train_status", concurrency_limit=None)
    w["save"].click(train_upload, [w["files"], w["folder_name"]], [w["data"], w["upload_note"]],
                    api_name="train_upload", preprocess=False)
    w["refresh_data"].click(lambda: gr.update(choices=list_data()), None, w["data"], api_visibility="private")
    fill_on_open(tab, lambda method=defaults.method: (gr.update(choices=list_data()),
                                                      gr.update(choices=start_choices(method))),
                 [w["data"], w["start_from"]], [w["method"]])
    w["runs"].change(pick_run, w["runs"], list(form.values()), api_visibility="private")
    w["recipe"].input(pick_recipe, w["recipe"], list(recipe_form.values()), api_visibility="private")
    w["method"].input(pick_method, [w["method"], w["data"]], [w["start_from"], w["resolution"], w["data"]],
                      api_visibility="private")
    w["start_from"].input(pick_start, [w["start_from"], w["method"]], w["resolution"], api_visibility="private")
    # The status is polled only while this tab is open. Gradio 6.31's page redraws every component any event has
    # updated on each message of any event, so a poll each second elsewhere slowed every other tab's live previews
    # (bench/page.py: about 0.04 s a Text to image run in Chromium). Opening the tab shows the running job at once.
    timer = gr.Timer(POLL_INTERVAL, active=False)
    timer.tick(poll, seen, status.outputs() + [seen], api_visibility="private", concurrency_limit=None,
               show_progress="hidden")
    tab.select(lambda: (*show_all(), gr.Timer(active=True)), None, status.outputs() + [seen, timer],
               api_visibility="private", concurrency_limit=None, show_progress="hidden")
    if unconditional_model is not None:
        status.sample.click(sample_checkpoint, None, unconditional_model, api_visibility="private",
                            js=switch_tab_js(UNCONDITIONAL_TAB))  # then the server sets its model
    return timer


def stop_polling_elsewhere(timer: gr.Timer, tabs: list[gr.Tab]) -> None:
    """Opening any of ``tabs`` (the others) stops the Training tab's status poll."""
    for other in tabs:
        other.select(lambda: gr.Timer(active=False), None, timer, queue=False, api_visibility="private",
                     show_progress="hidden")


# -- /train_start: the one map from the API to the request -----------------------------------------
# /train_start's parameters in their documented order (README "Training" -> "API"), each with the TrainRequest field
# whose widget fills it. The handler's inputs, the endpoint's parameter names and defaults, and the form that picking
# a run fills are all read from here, so a value cannot land in another field's slot.
START_REQUIRED = {
    "dataset": "data", "resolution": "resolution", "batch_size": "batch_size", "max_steps": "max_steps",
    "learning_rate": "learning_rate", "lr_warmup_steps": "lr_warmup_steps", "mixed_precision": "mixed_precision",
    "ema": "use_ema", "seed": "seed", "run_name": "run_name", "save_every": "save_every",
    "sample_every": "sample_every",
}
# Optional: a Python caller gets the TrainRequest default; over the API every parameter defaults to its widget's value.
START_OPTIONAL = {
    "preset": "preset", "epochs": "num_epochs", "gradient_accumulation_steps": "gradient_accumulation_steps",
    "beta_schedule": "beta_schedule", "num_train_timesteps": "num_train_timesteps", "resume": "resume",
    "clamp_batch_size": "clamp_batch_size", "random_flip": "random_flip", "first_sample_step": "first_sample_step",
    "start_from": "start_from", "method": "method", "lora_rank": "lora_rank", "lora_alpha": "lora_alpha",
    "lora_layers": "lora_layers", "lora_text_encoder": "lora_text_encoder", "snr_gamma": "snr_gamma",
    "validation_prompts": "validation_prompts", "prediction_type": "prediction_type",
    "rescale_betas_zero_snr": "rescale_betas_zero_snr",
}
START_PARAMS = {**START_REQUIRED, **START_OPTIONAL}
# TrainRequest fields whose messages name them otherwise than their name with spaces (see TrainRequest's checks).
FIELD_LABELS = {"num_epochs": "epochs", "lr_warmup_steps": "warm-up steps", "num_train_timesteps": "train timesteps",
                "save_every": "save interval", "sample_every": "sample interval",
                "lora_rank": "LoRA rank", "lora_alpha": "LoRA alpha", "lora_layers": "LoRA layers",
                "snr_gamma": "SNR gamma"}
_DEFAULTS = TrainRequest()
START_SIGNATURE = inspect.Signature([
    inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                      default=getattr(_DEFAULTS, field) if name in START_OPTIONAL else inspect.Parameter.empty)
    for name, field in START_PARAMS.items()
])
# What a resume takes from the form: the run-control fields that have a widget (the run keeps the rest).
RESUME_CHANGES = tuple(f for f in START_PARAMS.values() if f in RUN_CONTROL and f != "resume")


def _takes(signature: inspect.Signature) -> Callable:
    """Give a ``*args, **kwargs`` handler ``signature``, which gradio reads for the endpoint's parameters."""

    def give(fn: Callable) -> Callable:
        fn.__signature__ = signature
        return fn

    return give


def _page_value(field: str, value):
    """A widget's value as ``field`` of TrainRequest takes it: whole numbers as ints, text stripped."""
    default = getattr(_DEFAULTS, field)
    if isinstance(default, str):  # anything else as sent: the request refuses it by name
        return "" if value is None else value.strip() if isinstance(value, str) else value
    if isinstance(default, int) and not isinstance(default, bool):
        return whole(value)
    return value  # booleans and floats as the page gives them


# -- layout ------------------------------------------------------------------------------------
def _settings(d: TrainRequest, list_data, list_runs, start_choices: list[str]) -> dict:
    """The left column: recipe, Start and Stop on top (in reach without scrolling), then data and settings.
    Widgets by name (TrainRequest's, for its fields)."""
    w = {}

    def number(name, label, **kw):
        w[name] = gr.Number(value=getattr(d, name), precision=0, label=label, info=HELP[name], **kw)

    with gr.Row(elem_classes="wb-run-buttons"):
        w["start"] = gr.Button("Start", variant="primary", elem_id="train-start")
        w["stop"] = gr.Button("Stop (saves a checkpoint)", variant="stop", elem_id="train-stop")
    w["recipe"] = gr.Dropdown(list(RECIPES), value=DEFAULT_RECIPE, label="Recipe", elem_id="train-recipe",
                              info="fills the settings below; " + "; ".join(f"{r.name}: {r.summary}"
                                                                            for r in RECIPES.values()))
    with gr.Row():
        w["data"] = gr.Dropdown(list_data(), value=d.data, label="Data", allow_custom_value=True, scale=4,
                                elem_id="train-data",
                                info="digits (built in; captioned, for a LoRA: digits-captioned, digits-framed), a "
                                     "folder under the data dir, or a hub dataset id (owner/name)")
        w["refresh_data"] = gr.Button("↻ Refresh", scale=1, min_width=60, elem_id="train-data-refresh")
    w["data_note"] = gr.HTML("", elem_id="train-data-note")  # a refusal of the data, under it (a dropdown shows none)
    with gr.Row():
        w["random_flip"] = gr.Checkbox(value=d.random_flip, label="Random horizontal flip", info=HELP["random_flip"],
                                       elem_id="train-flip")
        w["clamp_batch_size"] = gr.Checkbox(value=d.clamp_batch_size, elem_id="train-clamp",
                                            label="clamp_batch_size: with fewer images than the batch size, "
                                                  "train on all of them")
    with gr.Accordion("Upload images or a zip as a new data folder", open=False):
        w["files"] = gr.File(file_count="multiple", file_types=["image", ".zip", ".txt", ".jsonl"],
                             label="Images or zips (with captions for a LoRA: a .txt beside each image, or "
                                   "metadata.jsonl in the zip)", elem_id="train-files")
        with gr.Row():
            w["folder_name"] = gr.Textbox(label="Folder name ('' = upload, upload-2, ...)", scale=3)
            w["save"] = gr.Button("Save as a data folder", scale=1, elem_id="train-upload")
        w["upload_note"] = gr.Markdown(label="Upload", elem_id="train-upload-note")
    with gr.Row():
        w["method"] = gr.Radio(list(METHODS), value=d.method, label="Method", elem_id="train-method",
                               info="; ".join(METHOD_LABELS.values()))
        w["start_from"] = gr.Dropdown(start_choices, value=d.start_from, label="Start from", allow_custom_value=True,
                                      elem_id="train-start-from",
                                      info="scratch: a new UNet of the preset; or a model to train further (a "
                                           "built-in, a folder under the models dir, a hub id): it sets the "
                                           "resolution, and its UNet and scheduler config are kept")
    with gr.Row():
        w["preset"] = gr.Dropdown(list(PRESETS), value=d.preset, label="Preset", info=HELP["preset"])
        number("resolution", "Resolution (px)", elem_id="train-resolution")
    with gr.Row():
        number("batch_size", "Batch size", elem_id="train-batch")
        number("num_epochs", "Epochs")
        number("max_steps", "Max steps", elem_id="train-max-steps")
    with gr.Row():
        w["learning_rate"] = gr.Number(value=d.learning_rate, label="Learning rate", info=HELP["learning_rate"],
                                       elem_id="train-lr")
        number("lr_warmup_steps", "Warm-up steps", elem_id="train-warmup")
        w["mixed_precision"] = gr.Radio(list(MIXED_PRECISION), value=d.mixed_precision, label="Mixed precision",
                                        info=HELP["mixed_precision"])
    with gr.Row():
        w["run_name"] = gr.Textbox(label="Run name", info=HELP["run_name"], elem_id="train-run-name")
        number("save_every", "Save every N steps", elem_id="train-save-every")
        number("sample_every", "Sample every N steps", elem_id="train-sample-every")
        number("first_sample_step", "First grid at step", elem_id="train-first-sample")
    with gr.Accordion("More settings", open=False):
        with gr.Row():
            w["use_ema"] = gr.Checkbox(value=d.use_ema, label="EMA weights", info=HELP["use_ema"])
            number("seed", "Seed")
        with gr.Row():
            w["beta_schedule"] = gr.Dropdown(list(SAMPLER_BETA_SCHEDULES), value=d.beta_schedule, label="Beta schedule",
                                             info=HELP["beta_schedule"])
            number("num_train_timesteps", "Train timesteps")
            number("gradient_accumulation_steps", "Gradient accumulation")
        w["snr_gamma"] = gr.Number(value=d.snr_gamma, label="Min-SNR gamma", info=HELP["snr_gamma"],
                                   elem_id="train-snr-gamma")
        with gr.Row():  # what the model predicts and the zero-terminal-SNR schedule (Lin et al. 2023)
            w["prediction_type"] = gr.Dropdown([("the model's own", ""), *((p, p) for p in PREDICTION_TYPES)],
                                               value=d.prediction_type, label="Prediction type",
                                               info=HELP["prediction_type"], elem_id="train-prediction-type")
            w["rescale_betas_zero_snr"] = gr.Checkbox(value=d.rescale_betas_zero_snr, label="Zero terminal SNR",
                                                      info=HELP["rescale_betas_zero_snr"], elem_id="train-zero-snr")
    with gr.Accordion("LoRA settings (method lora)", open=False, elem_id="train-lora"):
        with gr.Row():
            number("lora_rank", "Rank", elem_id="train-lora-rank")
            w["lora_alpha"] = gr.Number(value=d.lora_alpha, label="Alpha", info=HELP["lora_alpha"],
                                        elem_id="train-lora-alpha")
        with gr.Row():
            w["lora_layers"] = gr.Dropdown(list(LORA_LAYERS), value=d.lora_layers, label="Layers",
                                           info=HELP["lora_layers"], elem_id="train-lora-layers")
            w["lora_text_encoder"] = gr.Checkbox(value=d.lora_text_encoder, label="Text encoder too",
                                                 info=HELP["lora_text_encoder"], elem_id="train-lora-text")
        w["validation_prompts"] = gr.Textbox(value=d.validation_prompts, label="Validation prompts",
                                             info=HELP["validation_prompts"], elem_id="train-lora-prompts")
    with gr.Row():
        w["resume"] = gr.Checkbox(value=False, label="Resume the run named above", elem_id="train-resume",
                                  info="it keeps its own settings; only epochs, max steps and the save and sample "
                                       "intervals above apply")
        w["runs"] = gr.Dropdown(list_runs(), value=None, label="Runs with a checkpoint", elem_id="train-runs",
                                info="pick one to fill the form with its settings and resume it")
    return w


def _status_column(runs: gr.Dropdown, unconditional_model: gr.Dropdown | None) -> _Status:
    """The right column: progress, loss curve, sample grid, checkpoint, the status as JSON."""
    progress = gr.HTML(_progress(TrainStatus()), elem_id="train-progress", elem_classes="wb-live")
    with gr.Row():
        loss_plot = gr.Plot(label="Training loss (log scale)", elem_id="train-loss", elem_classes="wb-vega")
        bucket_plot = gr.Plot(label="Loss by timestep bucket (log scale; mean over each report's steps)",
                              elem_id="train-bucket-loss", elem_classes="wb-vega")
    lr_plot = gr.Plot(label="Learning rate", elem_id="train-lr-plot", elem_classes="wb-vega")
    grid = gr.Image(label=_grid_label(TrainStatus()), format="png", interactive=False, height=GRID_HEIGHT,
                    elem_id="train-grid", elem_classes=["wb-pixels", "wb-live"])
    with gr.Row():
        checkpoint = gr.Markdown("No checkpoint yet.", elem_id="train-checkpoint")
        sample = gr.Button("Sample from this checkpoint", visible=False, scale=0, elem_id="train-sample")
    with gr.Accordion("Status (JSON)", open=False):
        info = gr.JSON(label="Run", elem_id="train-info")
    return _Status(progress=progress, info=info, loss_plot=loss_plot, bucket_plot=bucket_plot, lr_plot=lr_plot,
                   grid=grid, checkpoint=checkpoint, sample=sample, runs=runs, unconditional_model=unconditional_model)


# -- status to widgets ------------------------------------------------------------------------
def status_dict(s: TrainStatus, *, history: bool = False) -> dict:
    """The status as plain JSON; ``history`` adds the per-step raw and smoothed losses."""
    out = {
        "state": s.state, "run_name": s.run_name, "step": s.step, "total": s.total, "start_step": s.start_step,
        "loss": _finite(s.losses[-1]) if s.losses else None,
        "smoothed_loss": _finite(s.smoothed[-1]) if s.smoothed else None,
        "lr": s.lr, "steps_per_sec": round(s.steps_per_sec, 3), "images_per_sec": round(s.images_per_sec, 2),
        "eta": None if s.eta is None else round(s.eta, 1), "elapsed": round(s.elapsed, 1),
        "grid_step": s.grid_step, "checkpoint": s.checkpoint, "checkpoint_step": s.checkpoint_step,
        "run_dir": s.run_dir, "message": s.message, "hint": s.hint, "method": s.method, "lora": s.lora,
        "grid_caption": s.grid_caption,
    }
    if history:
        out["losses"] = [_finite(x) for x in s.losses]  # losses[i] is the loss of step i + 1
        out["smoothed"] = [_finite(x) for x in s.smoothed]
        out["lrs"] = list(s.lrs)  # lrs[i] is the learning rate of step i + 1
        out["bucket_loss"] = {"edges": list(s.bucket_edges), "steps": list(s.bucket_steps),
                              "values": [[None if v is None else _finite(v) for v in row] for row in s.bucket_losses]}
    return out


def _thinned(n: int) -> list[int]:
    """Indices 0..n-1, at most :data:`MAX_PLOT_POINTS` of them, the newest always among them."""
    stride = max(1, math.ceil(n / MAX_PLOT_POINTS))
    index = list(range(0, n, stride))
    if index and index[-1] != n - 1:
        index.append(n - 1)
    return index


def bucket_labels(edges) -> list[str]:
    """"t 0-99", "t 100-199", ... for the buckets between ``edges``."""
    return [f"t {lo}-{hi - 1}" for lo, hi in zip(edges[:-1], edges[1:])]


def bucket_rows(edges, steps, values) -> list[dict]:
    """Long-format rows {step, loss, bucket} for each report and bucket that had images, thinned to
    :data:`MAX_PLOT_POINTS` reports; a loss a log axis cannot show is left out."""
    labels = bucket_labels(edges)
    return [{"step": steps[j], "loss": float(v), "bucket": labels[i]} for j in _thinned(len(steps))
            for i, v in enumerate(values[j]) if v is not None and math.isfinite(v) and v > 0]


def bucket_plot(edges, steps, values) -> gradio_compat.PlotData:
    """The loss in each timestep bucket over the run, one line a bucket on a log axis: low t (little noise) is
    where a denoiser's loss is largest and falls last."""
    labels = bucket_labels(edges)
    color = {"field": "bucket", "type": "ordinal", "title": None, "sort": labels,
             "scale": {"domain": labels, "scheme": BUCKET_SCHEME}, "legend": {"orient": "right"}}
    return _line_plot(bucket_rows(edges, steps, values), "loss", "loss (MSE, log scale)", color, log=True,
                      points=True)


def lr_rows(lrs) -> list[dict]:
    return [{"step": i + 1, "lr": float(lrs[i])} for i in _thinned(len(lrs))]


def lr_plot(lrs) -> gradio_compat.PlotData:
    """The learning rate each step used: the warm-up and the cosine decay, on a linear axis."""
    color = {"value": LR_COLOUR}
    return _line_plot(lr_rows(lrs), "lr", "learning rate", color, log=False, height=PLOT_HEIGHT // 2)


CHART_GREY = "#888888"


def _line_plot(rows: list[dict], y: str, y_title: str, color: dict, *, log: bool, height: int = PLOT_HEIGHT,
               points: bool = False) -> gradio_compat.PlotData:
    """A Vega-Lite line chart over ``step`` drawn as SVG, so the page (and a test) can read the axes. ``points``
    marks each value too (a line needs two reports to show)."""
    y_encoding = {"field": y, "type": "quantitative", "title": y_title}
    if log:
        y_encoding["scale"] = {"type": "log"}
    else:
        y_encoding["axis"] = {"format": ".1e"}
    spec = {
        "$schema": "https://vega.github.io/schema/vega-lite/v5.json",
        "width": "container", "height": height, "autosize": {"type": "fit", "contains": "padding"},
        "padding": {"top": 32, "left": 5, "right": 5, "bottom": 5},  # room for the block's label
        "data": {"values": rows},
        "mark": {"type": "line", "clip": True, "point": points},
        "encoding": {"x": {"field": "step", "type": "quantitative", "title": "step",
                           "axis": {"format": "d", "tickMinStep": 1}}, "y": y_encoding,
                     "color": color},
        "usermeta": {"embedOptions": {"renderer": "svg", "actions": False}},
        # No white card in dark mode: the page's own background, and a grey that reads on light and dark alike.
        "background": "transparent",
        "config": {"axis": {key: CHART_GREY for key in ("labelColor", "titleColor", "domainColor", "tickColor")}
                   | {"gridColor": CHART_GREY, "gridOpacity": 0.3},
                   "legend": {"labelColor": CHART_GREY, "titleColor": CHART_GREY, "labelLimit": 0},
                   "view": {"stroke": None}},
    }
    return gradio_compat.plot_data("altair", json.dumps(spec))


def loss_rows(losses, smoothed) -> list[dict]:
    """Long-format rows {step, loss, series}, thinned to :data:`MAX_PLOT_POINTS` per curve; a loss that a log
    axis cannot show (not finite, or not above 0) is left out."""
    index = _thinned(len(losses))
    rows = []
    for series, values in (("raw", losses), ("smoothed", smoothed)):
        rows += [{"step": i + 1, "loss": float(values[i]), "series": series} for i in index
                 if math.isfinite(values[i]) and values[i] > 0]
    return rows


def loss_plot(losses, smoothed) -> gradio_compat.PlotData:
    """The loss curves with a log y axis: a loss falls by orders of magnitude, and a linear axis goes flat after
    the first few dozen steps."""
    color = {"field": "series", "type": "nominal", "title": None,
             "scale": {"domain": list(LOSS_COLOURS), "range": list(LOSS_COLOURS.values())},
             "legend": {"orient": "top-right"}}
    return _line_plot(loss_rows(losses, smoothed), "loss", "loss (MSE, log scale)", color, log=True)


def _status_updates(s: TrainStatus, shown: dict | None, status: _Status, list_runs, list_unconditional_models):
    """Updates for :meth:`_Status.outputs` plus the new ``shown``; unchanged widgets are skipped."""
    now = {"run": s.run_name, "state": s.state, "step": s.step, "message": s.message, "losses": len(s.losses),
           "grid": s.grid_step, "checkpoint": (s.checkpoint, s.checkpoint_step)}
    shown = shown or {}

    def changed(*keys) -> bool:
        return any(shown.get(k) != now[k] for k in ("run", *keys))

    text = changed("state", "step", "message")
    plot = changed("losses")
    grid = changed("grid")
    checkpoint = changed("checkpoint")
    updates = [
        _progress(s) if text else gr.skip(),
        status_dict(s) if text else gr.skip(),
        (loss_plot(s.losses, s.smoothed) if s.losses else None) if plot else gr.skip(),
        (bucket_plot(s.bucket_edges, s.bucket_steps, s.bucket_losses) if s.bucket_steps else None)
        if plot else gr.skip(),
        (lr_plot(s.lrs) if s.lrs else None) if plot else gr.skip(),
        gr.update(value=s.grid, label=_grid_label(s)) if grid else gr.skip(),
        _checkpoint_text(s) if checkpoint else gr.skip(),
        gr.update(visible=bool(s.checkpoint) and s.method == "full" and status.unconditional_model is not None)
        if checkpoint else gr.skip(),
        gr.update(choices=list_runs()) if checkpoint else gr.skip(),
    ]
    if status.unconditional_model is not None:  # a new checkpoint is in the Unconditional tab's list at once
        updates.append(gr.update(choices=list_unconditional_models()) if checkpoint else gr.skip())
    return (*updates, now)


def _progress(s: TrainStatus) -> str:
    if s.state == IDLE:
        return progress_html(0, 1, note="idle: no training job since the server started")
    parts = [s.state, s.run_name]
    if s.losses:
        parts.append(f"loss {s.losses[-1]:.4f} (smoothed {s.smoothed[-1]:.4f})")
    if s.lr is not None:
        parts.append(f"lr {s.lr:.2e}")
    if s.steps_per_sec:
        parts.append(f"{s.steps_per_sec:.2f} steps/s")
    if s.active and s.eta is not None:
        parts.append(f"ETA {_duration(s.eta)}")
    if s.message:
        parts.append(s.message)
    if s.hint:
        parts.append(s.hint)
    return progress_html(s.step, s.total or 1, elapsed=s.elapsed, note=" · ".join(parts))


def _grid_label(s: TrainStatus) -> str:
    how = s.grid_caption or "DDIM, the same seeds each time"
    if s.grid_step is None:
        return f"Samples ({how})"
    return f"Samples at step {s.grid_step} ({how})"


def _checkpoint_text(s: TrainStatus) -> str:
    """Where the checkpoint is, then its Python line in a code block of its own: a narrow window scrolls the code
    instead of cutting the sentence."""
    if not s.checkpoint:
        return "No checkpoint yet."
    if s.lora:
        name = s.lora.rsplit("/", 1)[-1].removesuffix(".safetensors")
        folder, file = s.lora.rsplit("/", 1)
        where = (f"LoRA at step {s.checkpoint_step}: **`{name}`** in the Text to image tab's LoRA list (for models "
                 "like its base).")
        code = f'pipe.load_lora_weights("{folder}", weight_name="{file}")'
    else:
        where = f"Checkpoint at step {s.checkpoint_step}: model **`{s.run_name}`** in the Unconditional tab's list."
        code = f'DDPMPipeline.from_pretrained("{s.checkpoint}")'
    return f"{where} In Python:\n\n```python\n{code}\n```"


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def _finite(value: float) -> float | None:
    """JSON has no NaN or infinity: a diverged loss shows as null."""
    return float(value) if math.isfinite(value) else None
