"""The Compare tab: one prompt and seed, two to six variants along one axis, run one after another; a grid that
fills in live, then one slider that scrubs every column together along the trajectory."""

from __future__ import annotations

import html
from typing import Callable

import gradio as gr

from engine.errors import InputError, ModelLoadError, WorkbenchError
from engine.events import Done, Step
from engine.sampling.compare import (AXES, DEFAULT_VALUES, MAX_COLUMNS, Column, ColumnResult, CompareDone,
                                     CompareRequest, CompareStarted, lockstep)
from engine.sampling.txt2img import MAX_GUIDANCE, MAX_STEPS, Txt2ImgRequest
from ui.common import (DEVICE_QUEUE, field_messages, friendly_errors, message_html, model_dropdown, page_error,
                       progress_html, schedule_fields, shown_values, stream_updates, whole)
from ui.charts import line_chart_html
from ui.txt2img import DEFAULT_PROMPT

# The engine's field names (as its messages say them) -> the position of their input below.
FIELDS = {"model": 0, "prompt": 1, "negative prompt": 2, "seed": 3, "axis": 4, "values": 5, "steps": 6,
          "guidance scale": 7, "scheduler": 8, "width": 9, "height": 10, "timestep spacing": 11,
          "guidance rescale": 12, "seed_b": 13}
FIRST_SEED = 7  # a fixed seed: the same comparison twice gives the same grid


def build(
    *,
    iter_compare: Callable,  # (CompareRequest, cancel=) -> events
    compare_columns: Callable,  # CompareRequest -> (kind, requests), or the error the comparison would end with
    model_kind: Callable[[str], str],  # model -> "txt2img" | "unconditional"
    list_models: Callable[[], list[str]],  # every model, both kinds
    default_model: str,
    default_size: Callable[[str], tuple[int, int] | None],
    schedulers: Callable[[str], tuple[str, ...]],  # kind -> the scheduler names its runs take
    shown: Callable[[str], str] = lambda text: text,  # a path as people read it: the app's folders relative
) -> None:
    """Lay out the tab inside the current ``gr.Blocks`` and wire its events."""
    size = default_size(default_model) or (512, 512)
    defaults = Txt2ImgRequest(prompt="")
    with gr.Row(elem_classes="wb-run-layout"):
        with gr.Column(scale=2):
            with gr.Row():
                model = model_dropdown(list_models(), default_model, elem_id="cmp-model")
                refresh = gr.Button("↻ Refresh", scale=1, min_width=60)
            prompt = gr.Textbox(value=DEFAULT_PROMPT, label="Prompt (Ctrl+Enter compares)", lines=2,
                                elem_id="cmp-prompt")
            negative_prompt = gr.Textbox(label="Negative prompt", lines=1, elem_id="cmp-negative")
            with gr.Row(elem_classes="wb-run-buttons"):
                run = gr.Button("Compare", variant="primary", elem_id="cmp-run", elem_classes="wb-generate")
                stop = gr.Button("Stop", variant="stop", elem_id="cmp-stop")
            with gr.Row():
                axis = gr.Radio(list(AXES), value="scheduler", label="Compare along", elem_id="cmp-axis")
                seed = gr.Number(value=FIRST_SEED, label="Seed (one for every column; -1 = random)",
                                 elem_id="cmp-seed")
                seed_b = gr.Number(value=FIRST_SEED + 1, label="Second seed (seed blend: t = 1)", elem_id="cmp-seed-b")
            values = gr.Dropdown(list(schedulers("txt2img")), value=list(DEFAULT_VALUES["scheduler"]),
                                 multiselect=True, allow_custom_value=True, elem_id="cmp-values",
                                 label=f"Values, one column each (2 to {MAX_COLUMNS}; type others and press Enter)")
            gr.Markdown("The settings the axis leaves alone:")
            with gr.Row():
                steps = gr.Slider(1, MAX_STEPS, value=defaults.num_inference_steps, step=1,
                                  label="Steps (all columns)", elem_id="cmp-steps")
                guidance_scale = gr.Slider(1, MAX_GUIDANCE, value=defaults.guidance_scale, step=0.5,
                                           label="Guidance scale", elem_id="cmp-guidance")
            with gr.Row():
                scheduler = gr.Dropdown(list(schedulers("txt2img")), value=defaults.scheduler, label="Scheduler",
                                        elem_id="cmp-scheduler", visible=False)  # the first axis: the values
                width = gr.Number(value=size[0], step=8, label="Width", elem_id="cmp-width")
                height = gr.Number(value=size[1], step=8, label="Height", elem_id="cmp-height")
            timestep_spacing, guidance_rescale = schedule_fields("cmp", defaults, rescale=True)
        with gr.Column(scale=3, elem_classes="wb-previews"):
            progress = gr.HTML(progress_html(0, 1, note="idle"), elem_id="cmp-progress", elem_classes="wb-live")
            images, captions, columns = [], [], []
            with gr.Row(elem_id="cmp-grid", elem_classes="wb-live"):
                for i in range(MAX_COLUMNS):
                    with gr.Column(min_width=120, visible=i < len(DEFAULT_VALUES["scheduler"]),
                                   elem_id=f"cmp-col-{i}") as column:
                        images.append(gr.Image(label=str(DEFAULT_VALUES["scheduler"][i % 3]),
                                               format="png", interactive=False, height=200,
                                               elem_id=f"cmp-image-{i}", elem_classes="wb-pixels"))
                        captions.append(gr.HTML("", elem_id=f"cmp-caption-{i}"))
                    columns.append(column)
            scrub = gr.Slider(0, 100, value=100, step=1, visible=False, elem_id="cmp-scrub",
                              label="Scrub every column together: % of the trajectory (each column at the step "
                                    "nearest the same timestep)")
            info = gr.JSON(label="Columns: settings and time per step", elem_id="cmp-info")
            norms = gr.HTML(visible=False, elem_id="cmp-norms")  # a seed blend's noise norms along t
            finals = gr.Gallery(label="Final images", format="png", visible=False, elem_id="cmp-finals")
    history = gr.State(None)  # the last comparison's CompareDone
    inputs = [model, prompt, negative_prompt, seed, axis, values, steps, guidance_scale, scheduler, width, height,
              timestep_spacing, guidance_rescale, seed_b]

    def make_request(model, prompt, negative_prompt, seed, axis, values, steps, guidance_scale, scheduler, width,
                     height, timestep_spacing="", guidance_rescale=0.0, seed_b=-1) -> CompareRequest:
        """The page's values, by keyword, as the engine's request."""
        return CompareRequest(
            model=model or "", prompt=prompt or "", negative_prompt=negative_prompt or "", seed=whole(seed),
            axis=axis, values=values if isinstance(values, str) else tuple(whole(v) for v in values or ()),
            num_inference_steps=whole(steps), guidance_scale=guidance_scale, scheduler=scheduler,
            width=whole(width), height=whole(height), timestep_spacing=timestep_spacing or "",
            guidance_rescale=guidance_rescale, seed_b=whole(seed_b),
        )

    def renderer(page: bool):
        """The outputs for each event: the page's grid (images, captions, progress, info, scrubber, history) or
        the API's (the images so far in a gallery, progress, info)."""
        run = {"values": (), "index": 0, "shown": []}

        def grid(i, image, caption):
            """Slot ``i`` set; the others left as they are."""
            run["shown"][i] = (image, caption)
            if not page:
                return ([item for item in run["shown"] if item[0] is not None], gr.skip(), gr.skip())
            out_images = [gr.skip()] * MAX_COLUMNS
            out_captions = [gr.skip()] * MAX_COLUMNS
            out_images[i], out_captions[i] = image, _caption_html(caption)
            return (*out_images, *out_captions, gr.skip(), gr.skip(), gr.skip(), gr.skip())

        def with_progress(outputs, text):
            outputs = list(outputs)
            outputs[-4 if page else -2] = text
            return tuple(outputs)

        def render(event):
            if isinstance(event, CompareStarted):
                run.update(values=event.values, shown=[(None, "waiting")] * len(event.values))
                line = progress_html(0, len(event.values), unit="Column", note=f"comparing {event.axis}: "
                                     + ", ".join(str(v) for v in event.values))
                if not page:
                    return ([], line, gr.skip())
                n = len(event.values)
                return (*[gr.update(value=None, label=str(event.values[i]) if i < n else "")
                          for i in range(MAX_COLUMNS)],
                        *[_caption_html("waiting") if i < n else "" for i in range(MAX_COLUMNS)],
                        line, gr.skip(), gr.update(visible=False), None)
            if isinstance(event, Column):
                run["index"] = event.index
                return None
            if isinstance(event, Step):
                i, n = run["index"], len(run["values"])
                caption = f"step {event.step}/{event.total} · t = {event.timestep:g}"
                return with_progress(grid(i, event.preview_x0.array(), caption),
                                     progress_html(event.step, event.total, event.timestep, event.elapsed,
                                                   event.eta, note=f"column {i + 1} of {n}: {run['values'][i]}"))
            if isinstance(event, Done):
                i, n = run["index"], len(run["values"])
                final = event.paths[0] if event.paths else event.images[0]
                column = ColumnResult(value=run["values"][i], done=event, sigmas=())
                run["elapsed"] = run.get("elapsed", 0.0) + event.info.get("elapsed", 0.0)
                return with_progress(grid(i, final, _timing(column)),
                                     progress_html(i + 1, n, elapsed=run["elapsed"], unit="Column",
                                                   note=f"{run['values'][i]} finished"))
            if isinstance(event, CompareDone):
                line = progress_html(len(event.columns), len(event.columns), unit="Column", note="done",
                                     elapsed=sum(c.done.info.get("elapsed", 0.0) for c in event.columns))
                if not page:
                    gallery = [(c.done.paths[0] if c.done.paths else c.done.images[0], str(c.value))
                               for c in event.columns]
                    return (gallery, line, shown_values(shown, event.info))
                return ((gr.skip(),) * (2 * MAX_COLUMNS)
                        + (line, shown_values(shown, event.info), gr.update(visible=True, value=100), event))
            return None

        return render

    @friendly_errors
    async def compare(model, prompt, negative_prompt, seed, axis, values, steps, guidance_scale, scheduler, width,
                      height, timestep_spacing="", guidance_rescale=0.0, seed_b=-1):
        """The API: the images so far, progress and info; the last output holds the final images in values order
        and each column's time per step. Errors are raised, as gradio_client expects."""
        request = make_request(model, prompt, negative_prompt, seed, axis, values, steps, guidance_scale, scheduler,
                               width, height, timestep_spacing, guidance_rescale, seed_b)
        async for update in stream_updates(lambda cancel: iter_compare(request, cancel=cancel), renderer(False)):
            yield update

    async def compare_page(*values_in):
        """The page: the grid fills in live; an error is said in the progress line and a toast."""
        try:
            request = make_request(*values_in)
            async for update in stream_updates(lambda cancel: iter_compare(request, cancel=cancel), renderer(True)):
                yield update
        except Exception as exc:
            message = page_error(exc)
            gr.Warning(html.escape(message))
            yield (*(gr.skip(),) * (2 * MAX_COLUMNS), message_html(message), gr.skip(), gr.skip(), gr.skip())

    def problem(*values_in) -> InputError | ModelLoadError | None:
        try:
            compare_columns(make_request(*values_in))
        except (InputError, ModelLoadError) as exc:
            return exc
        return None

    def validate(*values_in):
        exc = problem(*values_in)
        return field_messages(exc, FIELDS, len(inputs)) if exc else [gr.validate(True, "")] * len(inputs)

    def before_run(*values_in):
        exc = problem(*values_in)
        return message_html(str(exc)) if exc is not None else gr.skip()

    def scrub_to(percent, done: CompareDone | None):
        """Every column at ``percent`` of the trajectory; at 100 %, the final images."""
        if done is None:
            return (gr.skip(),) * (2 * MAX_COLUMNS)
        frames = lockstep(done.columns, float(percent) / 100)
        out_images, out_captions = [gr.skip()] * MAX_COLUMNS, [gr.skip()] * MAX_COLUMNS
        for i, (frame, column) in enumerate(zip(frames, done.columns)):
            final = percent >= 100
            out_images[i] = (column.done.paths[0] if column.done.paths else column.done.images[0]) if final \
                else frame.step.preview_x0.array()
            out_captions[i] = _caption_html(frame.caption + ("" if not final else " · final image"), _timing(column))
        return (*out_images, *out_captions)

    def on_axis(axis_name, model_name):
        """The values the axis offers (its defaults picked), and the axis's own setting hidden (the values set it)."""
        kind = _kind_or_txt2img(model_kind, model_name)
        if axis_name == "model":
            same = [m for m in list_models() if _kind_or_txt2img(model_kind, m) == kind]
            choices, value = same, same[:2]
        elif axis_name == "scheduler":
            choices = list(schedulers(kind))
            value = [v for v in DEFAULT_VALUES["scheduler"] if v in choices] or choices[:3]
        else:
            choices = [f"{v:g}" if isinstance(v, float) else str(v) for v in DEFAULT_VALUES[axis_name]]
            value = choices[:3]
        return (gr.update(choices=choices, value=value),
                *(gr.update(visible=axis_name != name) for name in ("steps", "guidance scale", "scheduler")))

    def on_model(model_name, axis_name):
        """A model's kind decides the schedulers on offer; its size fills width and height."""
        kind = _kind_or_txt2img(model_kind, model_name)
        choices = list(schedulers(kind))
        found = default_size(model_name) if kind == "txt2img" else None
        return (gr.update(choices=choices, value=choices[0] if kind == "unconditional" else defaults.scheduler),
                *((gr.update(value=found[0]), gr.update(value=found[1])) if found else (gr.skip(), gr.skip())),
                *on_axis(axis_name, model_name)[:1])

    grid_outputs = [*images, *captions]
    page_outputs = grid_outputs + [progress, info, scrub, history]
    api_trigger = gr.Button(visible=False)  # the public /compare endpoint; the page's button below validates
    api_trigger.click(compare, inputs=inputs, outputs=[finals, progress, info], api_name="compare",
                      concurrency_id=DEVICE_QUEUE, concurrency_limit=1)
    # The check answers before the run is sent (as in img2img.py: a later answer erased the validator's messages).
    event = run.click(before_run, inputs, progress, queue=False, api_visibility="private") \
        .then(compare_page, inputs=inputs, outputs=page_outputs, validator=validate,
              api_visibility="private", concurrency_id=DEVICE_QUEUE, concurrency_limit=1)
    stop.click(None, None, None, cancels=[event], api_visibility="private")
    scrub.input(scrub_to, [scrub, history], grid_outputs, trigger_mode="always_last", show_progress="hidden",
                api_visibility="private")
    axis.input(on_axis, [axis, model], [values, steps, guidance_scale, scheduler], api_visibility="private")
    model.input(on_model, [model, axis], [scheduler, width, height, values], api_visibility="private")
    refresh.click(lambda: gr.update(choices=list_models()), None, model, api_visibility="private")
    info.change(norm_chart, info, norms, api_visibility="private", queue=False)
    # Column visibility follows the number of values chosen.
    values.change(lambda vs: [gr.update(visible=i < max(len(vs or []), 1)) for i in range(MAX_COLUMNS)],
                  values, columns, api_visibility="private")


def _kind_or_txt2img(model_kind: Callable[[str], str], model: str) -> str:
    """The model's kind; text to image where it cannot be told (the run says why)."""
    try:
        return model_kind(model)
    except WorkbenchError:
        return "txt2img"


def _timing(column: ColumnResult) -> str:
    spp = column.seconds_per_step
    per_step = f"{spp:.3f} s a step" if spp is not None else "one step"
    return f"{column.value}: {per_step}, {len(column.done.steps)} steps"


def _caption_html(*lines: str) -> str:
    return "<div class='wb-caption'>" + "<br>".join(html.escape(line) for line in lines if line) + "</div>"


NORM_COLORS = {"lerp": "#e45756", "slerp": "#4c78a8"}  # tableau10's red and blue


def norm_chart(info) -> dict:
    """A seed blend's chart of ||noise|| / sqrt(d) along t, for lerp and slerp; hidden for other comparisons."""
    norms = info.get("noise_norms") if isinstance(info, dict) else None
    if not norms:
        return gr.update(visible=False)
    series = {name: list(zip(norms["t"], norms[name])) for name in ("lerp", "slerp")}
    half = norms["t"].index(0.5) if 0.5 in norms["t"] else None
    note = (f"<p>At t = 0.5: lerp {norms['lerp'][half]:.3f}, slerp {norms['slerp'][half]:.3f}. A lerp midpoint is "
            "noise of a smaller norm than the model ever started from: its image comes out washed out.</p>"
            if half is not None else "")
    return gr.update(visible=True, value=line_chart_html("||noise|| / √d along the blend t", series, NORM_COLORS,
                                                         x_title="t") + note)
