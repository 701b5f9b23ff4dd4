"""The Noise tab's way back: the tab's image noised to the t a strength reaches, then denoised step by step from
there by a model (img2img with a prompt on a text-to-image model, SDEdit on an unconditional one), beside the
original; and a strip of strengths 0.2 ... 1.0 saying how much of the original survives each."""

from __future__ import annotations

import html
from typing import Callable

import gradio as gr

from engine.errors import InputError, ModelLoadError, WorkbenchError
from engine.events import Done, Started, Step
from engine.images import RESIZE_MODES
from engine.sampling.img2img import STRIP_STRENGTHS, Img2ImgRequest
from engine.sampling.txt2img import MAX_GUIDANCE
from ui.common import (DEVICE_QUEUE, field_messages, friendly_errors, message_html, model_dropdown, page_error,
                       progress_html, schedule_fields, shown_values, stream_updates, whole)
from ui.noise import CUSTOM, NoiseTab

# The engine's field names (as its messages say them) -> the position of their input below.
FIELDS = {"model": 0, "image": 1, "prompt": 2, "negative prompt": 3, "strength": 4, "steps": 5, "guidance scale": 6,
          "scheduler": 7, "seed": 8, "width": 9, "height": 10, "resize mode": 11, "timestep spacing": 12,
          "guidance rescale": 13}
DEFAULT_PROMPT = "a handwritten digit seven"  # the text-to-image built-in knows digits
DEFAULT_SCHEDULER = {"txt2img": "DPM++ 2M Karras", "unconditional": "DDIM"}  # each tab's own default
AUTO = 0  # a width or height of 0: the engine's default size (None in the request)
# What each resize mode does to an image of another aspect, as the size line says it.
RESIZE_WORDS = {"Just resize": "stretched to it", "Crop and resize": "scaled to cover it, the overflow cropped",
                "Resize and fill": "scaled to fit inside it, its edges drawn out over the rest"}


def build(
    *,
    noise: NoiseTab,  # the tab's image, schedule and slider t, which this part reads and moves
    iter_img2img: Callable,  # (Img2ImgRequest, cancel=, history=) -> events
    iter_strength_strip: Callable,  # (Img2ImgRequest, cancel=) -> StripFrame per strength
    check_img2img: Callable,  # Img2ImgRequest -> the run's kind, or the error it would end with
    img2img_size: Callable,  # Img2ImgRequest -> {"width", "height", "size_from"} before it runs, or None
    img2img_start: Callable,  # (model, scheduler, steps, strength, spacing) -> {"timestep", "steps_run", ...}
    model_kind: Callable[[str], str],
    sample_image: Callable,  # name -> a PIL image
    list_models: Callable[[], list[str]],  # every model, both kinds
    schedule_models: Callable[[], list[str]],  # the models whose schedule the tab can show
    default_model: str,
    schedulers: Callable[[str], tuple[str, ...]],  # kind -> the scheduler names its runs take
    shown: Callable[[str], str] = lambda text: text,  # a path or code as people read it: the app's folders relative
) -> None:
    """Lay out the way back below the Noise tab's forward process and wire its events."""
    defaults = Img2ImgRequest(image=sample_image("china.jpg"))
    with gr.Column(elem_id="i2i-section"):
        gr.Markdown("## Forward, then back: img2img\nThe image above is noised to the timestep the strength reaches "
                    "(the slider t and the plots above move there), then the model denoises it from that t to 0. "
                    "A text-to-image model follows the prompt (img2img); an unconditional one only its training "
                    "(SDEdit).")
        with gr.Row(elem_classes="wb-run-layout"):
            with gr.Column(scale=2):
                with gr.Row(elem_id="i2i-model-row"):
                    model = model_dropdown(list_models(), default_model)
                    refresh = gr.Button("↻ Refresh", scale=1, min_width=60)
                prompt = gr.Textbox(value=DEFAULT_PROMPT, label="Prompt (text-to-image models)", lines=2,
                                    elem_id="i2i-prompt")
                negative_prompt = gr.Textbox(label="Negative prompt", lines=1, elem_id="i2i-negative")
                with gr.Row(elem_classes="wb-run-buttons"):
                    run = gr.Button("Denoise from t", variant="primary", elem_id="i2i-run")
                    stop = gr.Button("Stop", variant="stop", elem_id="i2i-stop")
                strength = gr.Slider(0, 1.0, value=defaults.strength, step=0.05, elem_id="i2i-strength",
                                     label="Strength: how far forward (1 = from the first timestep)")
                start_line = gr.Markdown(_start_text(img2img_start, default_model, defaults), elem_id="i2i-start")
                with gr.Row():
                    steps = gr.Number(value=defaults.num_inference_steps, label="Steps (of the full schedule)",
                                      elem_id="i2i-steps")
                    guidance_scale = gr.Slider(1, MAX_GUIDANCE, value=defaults.guidance_scale, step=0.5,
                                               label="Guidance scale", elem_id="i2i-guidance")
                with gr.Row():
                    scheduler = gr.Dropdown(list(schedulers("txt2img")), value=defaults.scheduler, label="Scheduler",
                                            elem_id="i2i-scheduler")
                    seed = gr.Number(value=-1, label="Seed (-1 = random)", elem_id="i2i-seed")
                with gr.Row():  # 0 (the page's empty box sends 0): the image's aspect at about the model's pixel count
                    width = gr.Number(value=AUTO, label="Width (multiple of 8; 0 = auto)", elem_id="i2i-width")
                    height = gr.Number(value=AUTO, label="Height (multiple of 8; 0 = auto)", elem_id="i2i-height")
                resize_mode = gr.Radio(list(RESIZE_MODES), value=defaults.resize_mode, label="Resize mode",
                                       elem_id="i2i-resize-mode")
                timestep_spacing, guidance_rescale = schedule_fields("i2i", defaults, rescale=True)
                size_line = gr.Markdown(_size_text(img2img_size, Img2ImgRequest(
                    image=sample_image(noise.sample_image.value), model=default_model)), elem_id="i2i-size")
                strip_button = gr.Button(f"Strip: strengths {', '.join(f'{s:g}' for s in STRIP_STRENGTHS)}",
                                         elem_id="i2i-strip-run")
            with gr.Column(scale=3, elem_classes="wb-previews"):
                progress = gr.HTML(progress_html(0, 1, note="idle"), elem_id="i2i-progress", elem_classes="wb-live")
                with gr.Row(elem_classes="wb-live"):
                    original = gr.Image(label="Original", format="png", interactive=False, height=240,
                                        elem_id="i2i-original", elem_classes="wb-pixels")
                    image = gr.Image(label="Predicted clean image x0 → result", format="png", type="pil",
                                     interactive=False, height=240, elem_id="i2i-image", elem_classes="wb-pixels")
                    xt = gr.Image(label="Noisy sample after this step", format="png", interactive=False, height=240,
                                  elem_id="i2i-xt", elem_classes="wb-pixels")
                scrub = gr.Slider(1, 2, value=1, step=1, visible=False, elem_id="i2i-scrub",
                                  label="Scrub through the steps (the last is the result)")
                strip = gr.Gallery(label="How much of the original survives: strength · from t · similarity "
                                         "to the original (1 = the same picture)",
                                   columns=len(STRIP_STRENGTHS),
                                   height="auto", format="png", object_fit="contain", elem_id="i2i-strip")
                info = gr.JSON(label="Parameters used", elem_id="i2i-info")
                code = gr.Code(label="diffusers code", language="python", wrap_lines=True, elem_id="i2i-code")
    history = gr.State(None)  # {"steps": the run's Step events, "final": its PNG}
    inputs = [model, noise.image, prompt, negative_prompt, strength, steps, guidance_scale, scheduler, seed, width,
              height, resize_mode, timestep_spacing, guidance_rescale]
    outputs = [image, xt, progress, info, code]

    def make_request(model, image, prompt, negative_prompt, strength, steps, guidance_scale, scheduler, seed,
                     width=AUTO, height=AUTO, resize_mode="Just resize", timestep_spacing="",
                     guidance_rescale=0.0) -> Img2ImgRequest:
        """The values, by keyword, as the engine's request (a size of 0 or none: the engine's default)."""
        return Img2ImgRequest(model=model or "", image=image, prompt=prompt or "",
                              negative_prompt=negative_prompt or "", strength=strength,
                              num_inference_steps=whole(steps), guidance_scale=guidance_scale, scheduler=scheduler,
                              seed=whole(seed), width=_size(width), height=_size(height), resize_mode=resize_mode,
                              timestep_spacing=timestep_spacing or "", guidance_rescale=guidance_rescale)

    def page_request(*values, sample_name) -> Img2ImgRequest:
        """The page's request: with no image uploaded, the tab's sample image."""
        values = list(values)
        if values[1] is None:
            values[1] = sample_image(sample_name)
        return make_request(*values)

    def render(event, run: dict) -> tuple | None:
        """The five outputs (result, x_t, progress, info, code) for one event."""
        if isinstance(event, Started):
            run["total"] = event.total
            note = (f"seed {event.info['seed']} · {event.info['width']}x{event.info['height']} · "
                    f"from t = {event.info['start_timestep']}, "
                    f"{event.info['steps_run']} of {event.info['steps']} steps")
            return (gr.skip(), gr.skip(), progress_html(0, event.total, note=note), shown_values(shown, event.info),
                    shown(event.code))
        if isinstance(event, Step):
            run["steps"].append(event)
            return (event.preview_x0.array(), event.preview_xt.array(),
                    progress_html(event.step, event.total, event.timestep, event.elapsed, event.eta),
                    gr.skip(), gr.skip())
        if isinstance(event, Done):
            final = event.paths[0] if event.paths else event.images[0]
            run.update(final=final, steps=list(event.steps))
            info_out = shown_values(shown, {**event.info, "file": event.paths[0] if event.paths else None})
            n = len(event.steps)
            return (final, event.steps[-1].preview_xt.array() if n else None,
                    progress_html(n, n, elapsed=event.info.get("elapsed", 0.0),
                                  note=f"done · {event.info['width']}x{event.info['height']}"), info_out,
                    shown(event.code))
        return None

    @friendly_errors
    async def img2img(model, image, prompt, negative_prompt, strength, steps, guidance_scale, scheduler, seed,
                      width=AUTO, height=AUTO, resize_mode="Just resize", timestep_spacing="", guidance_rescale=0.0):
        """The API: previews streamed, then the final PNG with its parameters; errors are raised."""
        request = make_request(model, image, prompt, negative_prompt, strength, steps, guidance_scale, scheduler,
                               seed, width, height, resize_mode, timestep_spacing, guidance_rescale)
        run = {"steps": []}
        async for update in stream_updates(lambda cancel: iter_img2img(request, cancel=cancel, history="streamed"),
                                           lambda event: render(event, run)):
            yield update

    async def img2img_page(*values):
        """The page: the original beside the way back; the scrubber and history after it."""
        *values, sample_name = values
        run = {"steps": []}

        def page_render(event):
            update = render(event, run)
            if update is None:
                return None
            if isinstance(event, Done):
                return update + (gr.skip(), _scrubber(len(run["steps"])),
                                 {"steps": run["steps"], "final": run["final"]})
            return update + (gr.skip(), gr.skip(), gr.skip())

        try:
            request = page_request(*values, sample_name=sample_name)
            yield (gr.skip(),) * len(outputs) + (request.image, gr.update(visible=False), None)
            async for update in stream_updates(lambda cancel: iter_img2img(request, cancel=cancel), page_render):
                yield update
        except Exception as exc:
            message = page_error(exc)
            gr.Warning(html.escape(message))
            yield (gr.skip(), gr.skip(), message_html(message), gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip())

    async def strip_page(*values):
        """Each strength of the strip, one run after another, the seed shared."""
        *values, sample_name = values
        frames = []
        try:
            request = page_request(*values, sample_name=sample_name)
            async for frame in stream_updates(lambda cancel: iter_strength_strip(request, cancel=cancel),
                                              lambda frame: frame):
                frames.append((frame.path or frame.image, frame.caption))
                yield list(frames), progress_html(len(frames), len(STRIP_STRENGTHS), unit="Strength",
                                                  note=f"strip, one seed: {request.seed}" if request.seed >= 0
                                                  else "strip, one seed for all")
        except Exception as exc:
            message = page_error(exc)
            gr.Warning(html.escape(message))
            yield gr.skip(), message_html(message)

    def problem(*values) -> InputError | ModelLoadError | None:
        *values, sample_name = values
        try:
            check_img2img(page_request(*values, sample_name=sample_name))
        except (InputError, ModelLoadError) as exc:
            return exc
        return None

    def validate(*values):
        exc = problem(*values)
        count = len(values)
        return field_messages(exc, FIELDS, count) if exc else [gr.validate(True, "")] * count

    def before_run(*values):
        exc = problem(*values)
        return message_html(str(exc)) if exc is not None else gr.skip()

    def show_step(index, last_run):
        if not last_run or not last_run.get("steps"):
            return gr.skip(), gr.skip(), gr.skip()
        frames = last_run["steps"]
        s = frames[min(max(int(index), 1), len(frames)) - 1]
        if int(index) >= len(frames):
            return last_run["final"], s.preview_xt.array(), progress_html(s.step, s.total, elapsed=s.elapsed,
                                                                         note="result")
        return s.preview_x0.array(), s.preview_xt.array(), progress_html(s.step, s.total, s.timestep, s.elapsed)

    def where_it_starts(model_name, scheduler_name, steps_value, strength_value, spacing=""):
        """The strength as the t it reaches: said here, and the tab's slider t moved there (the plots follow)."""
        try:
            start = img2img_start(model_name, scheduler_name, whole(steps_value), strength_value, spacing or "")
        except WorkbenchError as exc:
            return f"*{html.escape(str(exc))}*", gr.skip()
        return _start_line(start, strength_value, whole(steps_value)), gr.update(value=start["timestep"])

    def on_model(model_name):
        """A model's kind decides the schedulers and whether a prompt and a size count; its schedule fills the tab's
        plots."""
        try:
            kind = model_kind(model_name)
        except WorkbenchError:
            return (gr.skip(),) * 6
        choices = list(schedulers(kind))
        shown = model_name if model_name in schedule_models() else CUSTOM
        takes = kind == "txt2img"
        size = gr.update(interactive=True) if takes else gr.update(value=AUTO, interactive=False)  # SDEdit: fixed
        return (gr.update(choices=choices, value=DEFAULT_SCHEDULER[kind]),
                gr.update(interactive=takes), gr.update(interactive=takes), shown, size, size)

    def show_size(*values):
        """The size the run will make, and where it comes from; the error of a size it will not take."""
        *values, sample_name = values
        try:
            request = page_request(*values, sample_name=sample_name)
        except InputError as exc:
            return f"*{html.escape(str(exc))}*"
        return _size_text(img2img_size, request)

    page_inputs = inputs + [noise.sample_image]
    page_outputs = outputs + [original, scrub, history]
    api_trigger = gr.Button(visible=False)  # the public /img2img endpoint; the page's button below validates
    api_trigger.click(img2img, inputs=inputs, outputs=outputs, api_name="img2img", concurrency_id=DEVICE_QUEUE,
                      concurrency_limit=1)
    # The check in the progress line answers before the run is sent: Gradio clears an event's inputs' field
    # messages at its first answer, so a check answering after the run's validator erased the message it had just
    # put beside a bad field (seen under load: test_spacing_rescale_browser's bad phi said nowhere).
    event = run.click(before_run, page_inputs, progress, queue=False, api_visibility="private") \
        .then(img2img_page, inputs=page_inputs, outputs=page_outputs, validator=validate,
              api_visibility="private", concurrency_id=DEVICE_QUEUE, concurrency_limit=1)
    strip_event = strip_button.click(strip_page, inputs=page_inputs, outputs=[strip, progress], validator=validate,
                                     api_visibility="private", concurrency_id=DEVICE_QUEUE, concurrency_limit=1)
    stop.click(None, None, None, cancels=[event, strip_event], api_visibility="private")
    gr.on([scrub.release, scrub.input], show_step, [scrub, history], [image, xt, progress], api_visibility="private")
    refresh.click(lambda: gr.update(choices=list_models()), None, model, api_visibility="private")
    start_inputs = [model, scheduler, steps, strength, timestep_spacing]
    noise.move(gr.on([strength.release, steps.submit, scheduler.input, timestep_spacing.input], where_it_starts,
                     start_inputs, [start_line, noise.t], api_visibility="private"))
    chosen = model.input(on_model, model, [scheduler, prompt, negative_prompt, noise.schedule_model, width, height],
                         api_visibility="private")
    chosen.then(show_size, page_inputs, size_line, queue=False, api_visibility="private")
    gr.on([noise.image.change, noise.sample_image.change, width.submit, width.blur, height.submit, height.blur,
           resize_mode.input], show_size, page_inputs, size_line, queue=False, api_visibility="private")
    noise.move(noise.redraw(chosen).success(where_it_starts, start_inputs, [start_line, noise.t],
                                            api_visibility="private"))


def _size(value):
    """A width or height from the page: 0 or empty is the engine's default (None); anything else is checked there."""
    value = whole(value)
    return None if value in (None, AUTO) else value


def _size_text(img2img_size: Callable, request: Img2ImgRequest) -> str:
    """The line under the size fields: the size a run of ``request`` makes, where it comes from, and what the
    resize mode does to the image there."""
    try:
        size = img2img_size(request)
    except WorkbenchError as exc:
        return f"*{html.escape(str(exc))}*"
    if size is None:
        return "The size follows the model's configs, read once it is downloaded."
    w, h = size["width"], size["height"]
    image_w, image_h = request.image.size
    if (image_w, image_h) == (w, h):
        what = "the image is at that size already, so it goes in untouched"
    elif image_w * h == image_h * w:
        what = f"the {image_w}x{image_h} image is scaled to it"
    else:
        what = f"the {image_w}x{image_h} image is {RESIZE_WORDS[request.resize_mode]}"
    return f"Runs at **{w}x{h}**: {html.escape(size['size_from'])}; {what}."


def _scrubber(frames: int):
    return gr.update(visible=frames > 1, minimum=1, maximum=max(frames, 2), value=max(frames, 1))


def _start_line(start: dict, strength: float, steps: int) -> str:
    return (f"Strength {strength:g}: noised to **t = {start['timestep']}** of {start['num_train_timesteps']}, then "
            f"**{start['steps_run']} of {steps} steps** back to 0.")


def _start_text(img2img_start: Callable, model: str, request: Img2ImgRequest) -> str:
    """The first start line, for the page's defaults."""
    try:
        start = img2img_start(model, request.scheduler, request.num_inference_steps, request.strength)
    except WorkbenchError as exc:
        return f"*{html.escape(str(exc))}*"
    return _start_line(start, request.strength, request.num_inference_steps)
