"""The Unconditional tab: a DDPM-layout model denoises pure noise; every step's x_t and x0, then the grid."""

from __future__ import annotations

import html
from typing import Callable

import gradio as gr

from engine.errors import Cancelled, WorkbenchError
from engine.events import BatchDone, Done, Started, Step
from engine.sampling.unconditional import DEFAULT_STEPS, MAX_BATCH, RunEstimate, UnconditionalRequest
from engine.sampling.views import DEFAULT_VIEWS, VIEWS, view_array
from ui.common import (COMPILE_INFO, DEVICE_QUEUE, FILLED, SessionRuns, batch_done_html, batch_note, done_note,
                       export_update, fill_on_open, friendly_errors, last_seed, message_html, model_dropdown,
                       page_error, progress_html, schedule_fields, seed_buttons, stream_updates, whole)


def build(
    *,
    iter_unconditional: Callable,  # (UnconditionalRequest, cancel=, batch_count=, views=) -> events
    final_image: Callable,  # Done -> the image, or the batch's grid, with its PNG parameters
    default_steps: Callable[[str, str], int | None],  # (model, scheduler) -> steps, None if unknown
    estimate: Callable[..., RunEstimate | None],  # (UnconditionalRequest, probe=) -> the run's time here
    list_models: Callable[[], list[str]],
    default_model: str,
    schedulers: list[str],
    shown: Callable[[str], str],  # a path or a code snippet as people read it: the app's folders relative
    export_run: Callable[[str], dict] | None = None,  # a saved image -> its run's replay bundle
    tab: gr.Tab | None = None,  # the tab itself: opening it refreshes the model list
) -> dict:
    """Lay out the tab inside the current ``gr.Blocks`` and wire its events; returns its settings' widgets by
    request field name (the Training tab keeps the model box's list up to date; History and PNG Info fill them)."""
    defaults = UnconditionalRequest()
    with gr.Row(elem_classes="wb-run-layout"):
        with gr.Column(scale=2):
            with gr.Row(elem_id="ddpm-model-row"):
                model = model_dropdown(list_models(), default_model)
                refresh = gr.Button("↻ Refresh", scale=1, min_width=60, elem_id="ddpm-refresh")
            with gr.Row(elem_classes="wb-run-buttons"):
                generate = gr.Button("Generate", variant="primary", elem_id="ddpm-generate", elem_classes="wb-generate")
                stop = gr.Button("Stop", variant="stop", elem_id="ddpm-stop")
            with gr.Row():
                scheduler = gr.Dropdown(schedulers, value=defaults.scheduler, label="Scheduler",
                                        info=f"{defaults.scheduler} is fast; DDPM samples as the model was trained",
                                        elem_id="ddpm-scheduler")
                steps = gr.Number(value=default_steps(default_model, defaults.scheduler) or DEFAULT_STEPS,
                                  label="Steps", elem_id="ddpm-steps",
                                  info=f"default: {DEFAULT_STEPS}, or the model's training timesteps for DDPM")
            as_trained = gr.Button(_as_trained_label(default_steps(default_model, "DDPM")), size="sm",
                                   elem_id="ddpm-as-trained")
            estimate_line = gr.Markdown(visible="hidden", elem_id="ddpm-estimate")  # shown before slow runs
            with gr.Row():
                seed = gr.Number(value=defaults.seed, label="Seed (-1 = random)", elem_id="ddpm-seed")
                reuse_seed, random_seed = seed_buttons("ddpm")
            with gr.Row():
                batch_size = gr.Number(value=defaults.batch_size, label=f"Batch size (1 to {MAX_BATCH})",
                                       elem_id="ddpm-batch")
                batch_count = gr.Number(value=1, label="Batch count (runs: seeds s, s+1, ...)",
                                        elem_id="ddpm-batch-count")
            compile_unet = gr.Checkbox(value=defaults.compile, label="Compile for speed", elem_id="ddpm-compile",
                                       info=COMPILE_INFO)
            timestep_spacing, _ = schedule_fields("ddpm", defaults, rescale=False)
            with gr.Row():  # inside a step: which two views the page shows (eps, x0 and v whatever the model predicts)
                views = [gr.Dropdown([(_view_label(name), name) for name in PAGE_VIEWS], value=DEFAULT_VIEWS[k],
                                     label=f"{side} image shows", elem_id=f"ddpm-view-{side.lower()}")
                         for k, side in enumerate(("Left", "Right"))]
            timesteps = gr.Textbox(label="Timesteps the loop visits (scheduler.timesteps)", lines=3, max_lines=6,
                                   interactive=False, elem_id="ddpm-timesteps")
        with gr.Column(scale=3, elem_classes="wb-previews"):
            progress = gr.HTML(progress_html(0, 1, note="idle"), elem_id="ddpm-progress", elem_classes="wb-live")
            with gr.Row(elem_classes="wb-live"):
                image = gr.Image(label=_view_label("x0"), format="png", type="pil", interactive=False,
                                 height=360, elem_id="ddpm-image", elem_classes="wb-pixels")
                xt = gr.Image(label=_view_label("xt"), format="png", interactive=False, height=360,
                              elem_id="ddpm-xt", elem_classes="wb-pixels")
            scrub = gr.Slider(1, 2, value=1, step=1, label="Scrub through the steps", visible=False,
                              elem_id="ddpm-scrub")
            info = gr.JSON(label="Parameters used", elem_id="ddpm-info")
            export = gr.DownloadButton("Export run (replay file)", visible=False, size="sm", elem_id="ddpm-export")
            code = gr.Code(label="The same loop in plain diffusers", language="python", elem_id="ddpm-code")
    history = gr.State(None)  # (the steps kept with previews, the final image or None) of the last run
    exports = [export] if export_run is not None else []  # the page run's last output: the Export button
    hide_export = (gr.update(visible=False, value=None),) * len(exports)
    runs = SessionRuns()

    def render(event, run: dict | None = None) -> tuple | None:
        """The eight outputs for one event (image, x_t, progress, timesteps, info, code, scrubber, history);
        ``run`` (the page's) keeps what Stop will show."""
        run = run if run is not None else {}
        if isinstance(event, Started):
            run.update(started=event, steps=[], final=None)  # a batch's next run starts afresh
            note = " · ".join(filter(None, [f"seed {event.info['seed']}", batch_note(event.info),
                                            event.info.get("compiling")]))
            return (gr.skip(), gr.skip(), progress_html(0, event.total, note=note),
                    _timesteps_text(event.timesteps), event.info, gr.skip(), gr.update(visible=False), None)
        if isinstance(event, Step):
            if event.preview_xt is not None:
                run.setdefault("steps", []).append(event)
            left, right = run.get("views", DEFAULT_VIEWS)
            return (_or_skip(view_array(event, left)), _or_skip(view_array(event, right)),
                    progress_html(event.step, event.total, event.timestep, event.elapsed, event.eta),
                    gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip())
        if isinstance(event, BatchDone):  # the grid of every run's images, their files listed
            run["shown"] = {**event.info, "files": [shown(p) for p in event.paths],
                            "grid": shown(event.grid) if event.grid else None}
            return (event.grid or event.image, gr.skip(),
                    batch_done_html(event.seeds),
                    gr.skip(), run["shown"], gr.skip(), gr.update(visible=False), None)
        if isinstance(event, Done):
            final = event.grid or (event.paths[0] if event.paths else final_image(event))  # the saved PNG as is
            info_out = dict(event.info)
            run["shown"] = info_out
            info_out["files"] = [shown(path) for path in event.paths]  # the images themselves are sent as they are
            info_out["grid"] = shown(event.grid) if event.grid else None
            n = len(event.steps)
            frames = tuple(s for s in event.steps if s.preview_xt is not None)  # every k-th step, the last always
            return (final if run.get("views", DEFAULT_VIEWS)[0] == "x0" else gr.skip(), gr.skip(),
                    progress_html(n, n, elapsed=event.info.get("elapsed", 0.0), note=done_note(event.info)),
                    gr.skip(), info_out, shown(event.code), _scrubber(frames, n), (frames, final))
        return None

    @friendly_errors
    async def ddpm(model, scheduler, steps, seed, batch_size, batch_count=1, compile=False, timestep_spacing=""):
        request = UnconditionalRequest(model=model or "", scheduler=scheduler,
                                       num_inference_steps=whole(steps), seed=whole(seed),
                                       batch_size=whole(batch_size), compile=compile,
                                       timestep_spacing=timestep_spacing or "")
        async for update in stream_updates(lambda cancel: iter_unconditional(request, cancel=cancel,
                                                                             batch_count=whole(batch_count)), render):
            yield update

    async def ddpm_page(model, scheduler, steps, seed, batch_size, batch_count, compile, timestep_spacing,
                        view_left=DEFAULT_VIEWS[0], view_right=DEFAULT_VIEWS[1], session: gr.Request = None):
        """The page: no Gradio overlay (the progress line says it all), an error said in that line and a toast,
        Stop's line says where the run stopped and its frames so far stay; the Export button comes with the
        run's last update."""
        run = runs.begin(session.session_hash)
        run["views"] = (view_left, view_right)
        one_run = whole(batch_count) == 1
        try:
            request = UnconditionalRequest(model=model or "", scheduler=scheduler,
                                           num_inference_steps=whole(steps), seed=whole(seed),
                                           batch_size=whole(batch_size), compile=compile,
                                           timestep_spacing=timestep_spacing or "")

            def page_update(event):  # in stream_updates' thread
                update = render(event, run)
                if isinstance(event, Done):
                    run["final"] = update[0]
                last = isinstance(event, BatchDone) or (isinstance(event, Done) and one_run)
                if update is None:
                    return None
                return update + ((export_update(export_run, run.get("shown")) if last else gr.skip(),)
                                 if exports else ())

            def events(cancel):  # x0 and x_t come with every step; eps and v where the stream is asked for them
                return iter_unconditional(request, cancel=cancel, batch_count=whole(batch_count), views=run["views"])

            async for update in stream_updates(events, page_update, cancel=run["cancel"]):
                yield update
        except Cancelled:  # the page's Stop
            if run.get("final") is None:
                yield stopped(run) + hide_export
        except Exception as exc:
            message = page_error(exc)
            gr.Warning(html.escape(message))
            yield (gr.skip(), gr.skip(), message_html(message), *(gr.skip(),) * 5, *(gr.skip(),) * len(exports))
        finally:
            runs.end(run)

    def stopped(run: dict) -> tuple:
        """After Stop: where the run stopped; its frames so far (scrubbable), parameters and timesteps stay."""
        started, frames = run.get("started"), tuple(run.get("steps", ()))
        if started is None:
            return (gr.skip(), gr.skip(), message_html("Stopped before the first step", "stopped"),
                    *(gr.skip(),) * 5)
        at = frames[-1].step if frames else 0
        batch = f" ({batch_note(started.info)})" if batch_note(started.info) else ""
        return (gr.skip(), gr.skip(), message_html(f"Stopped at step {at} of {started.total}{batch}", "stopped"),
                gr.skip(), {**started.info, "stopped_at_step": at}, gr.skip(),
                _scrubber(frames, started.total, stopped=True), (frames, None))

    def stop_page_run(session: gr.Request):
        """Stop's own answer, the same line as the run's last update once it has stopped (either may come last)."""
        run = runs.stop(session.session_hash, wait=STOP_WAIT)
        if run is None or run.get("final") is not None:
            return gr.skip()
        return stopped(run)[2] if run.get("ended") else message_html("Stopping at the end of this step", "stopped")

    def show_step(value, last_run, left=DEFAULT_VIEWS[0], right=DEFAULT_VIEWS[1]):
        """A kept step's two chosen views; the last position shows the final image on the left where it shows x0
        (a stopped run has none). Without a run, only the images' labels follow the choice."""
        labels = gr.update(label=_view_label(left)), gr.update(label=_view_label(right))
        if not last_run or not last_run[0]:
            return (*labels, gr.skip())
        frames, final = last_run
        s = min(frames, key=lambda f: abs(f.step - value))
        last = s is frames[-1] and final is not None
        shown_left = final if last and left == "x0" else view_array(s, left)
        return (gr.update(value=shown_left, label=labels[0]["label"]),
                gr.update(value=view_array(s, right), label=labels[1]["label"]),
                progress_html(s.step, s.total, s.timestep, s.elapsed, note="final image" if last else "scrubbed"))

    @friendly_errors
    def show_estimate(model_name, scheduler_name, steps_value, batch):
        """Before a run slower than the default starts: about how long it takes here (a short probe first,
        where this model and batch size have not run yet)."""
        if not isinstance(whole(steps_value), int) or whole(steps_value) <= DEFAULT_STEPS:
            yield gr.update(visible="hidden")
            return
        try:
            request = UnconditionalRequest(model=model_name or "", scheduler=scheduler_name,
                                           num_inference_steps=whole(steps_value), batch_size=whole(batch))
            found = estimate(request, probe=False)
            if found is None:
                yield gr.update(visible=True, value="Estimating the time: a few steps of this model on this device…")
                found = estimate(request)
        except WorkbenchError as exc:
            yield gr.update(visible=True, value=f"No time estimate: {exc}")
            return
        yield gr.update(visible=True, value=_estimate_text(scheduler_name, found)) if found else \
            gr.update(visible="hidden")

    def on_choice(model_name, scheduler_name, given=None):
        if given and (given.get("model"), given.get("scheduler")) == (model_name, scheduler_name) \
                and "num_inference_steps" in given:
            return gr.skip()  # filled in with its settings (History, PNG Info): their steps stay
        found = default_steps(model_name, scheduler_name)
        return gr.update(value=found) if found else gr.skip()

    def as_trained_choice(model_name):
        found = default_steps(model_name, "DDPM")
        return "DDPM", gr.update(value=found) if found else gr.skip()

    run_inputs = [model, scheduler, steps, seed, batch_size, batch_count, compile_unet, timestep_spacing]
    run_outputs = [image, xt, progress, timesteps, info, code, scrub, history]
    api_trigger = gr.Button(visible=False)  # the public /ddpm endpoint; the page's Generate runs ddpm_page
    api_trigger.click(ddpm, inputs=run_inputs, outputs=run_outputs, api_name="ddpm", concurrency_id=DEVICE_QUEUE,
                      concurrency_limit=1,
                      preprocess=False)  # values as sent: the engine's checks name the field and what it takes
    # As Text to image's: no Gradio progress overlay (its error badges covered the images, and the frames so far
    # went with them), the Export button in the run's last update, and Stop through the run's own token, so the
    # line can say where it stopped (a cancelled event cannot).
    event = generate.click(ddpm_page, inputs=run_inputs + views, outputs=run_outputs + exports, api_visibility="private",
                           concurrency_id=DEVICE_QUEUE, concurrency_limit=1, show_progress="hidden")
    stop.click(stop_page_run, None, progress, queue=False, api_visibility="private")  # the whole batch: one token
    reuse_seed.click(last_seed, info, seed, api_visibility="private")
    random_seed.click(lambda: -1, None, seed, api_visibility="private")
    gr.on([scrub.input, *(v.input for v in views)], show_step, [scrub, history, *views], [image, xt, progress],
          trigger_mode="always_last", show_progress="hidden", api_visibility="private")
    refresh.click(lambda: gr.update(choices=list_models()), None, model, api_visibility="private")
    fill_on_open(tab, lambda: gr.update(choices=list_models()), [model])
    # One listener on each dropdown's change: a second one (the estimate's) made Gradio send the change twice,
    # and the late one reset steps typed meanwhile. The estimate follows the steps, and the choice's update.
    estimate_inputs = [model, scheduler, steps, batch_size]
    estimate_args = dict(fn=show_estimate, inputs=estimate_inputs, outputs=estimate_line, show_progress="hidden",
                         api_visibility="private")
    filled = gr.State(None)  # the settings History or PNG Info filled in last, until a person picks
    gr.on([model.change, scheduler.change], on_choice, [model, scheduler, filled], steps,
          api_visibility="private").then(**estimate_args)
    gr.on([model.input, scheduler.input], lambda: None, None, filled, api_visibility="private")
    gr.on([steps.change, batch_size.change], trigger_mode="always_last", **estimate_args)
    event.then(**estimate_args)  # now from this run's own time a step
    as_trained.click(as_trained_choice, model, [scheduler, steps], api_visibility="private")
    model.change(lambda m: gr.update(value=_as_trained_label(default_steps(m, "DDPM"))), model, as_trained,
                 api_visibility="private")
    return {"model": model, "scheduler": scheduler, "num_inference_steps": steps, "seed": seed,
            "batch_size": batch_size, "batch_count": batch_count, FILLED: filled,
            "timestep_spacing": timestep_spacing}


STOP_WAIT = 1.0  # seconds Stop waits for the run to end before it answers "stopping"
PAGE_VIEWS = ("x0", "xt", "eps", "v")  # what a step of an unconditional run can show (no guidance, no prompt)


def _view_label(name: str) -> str:
    """An image's label for view ``name``."""
    return {"x0": "Predicted x0 → final image", "xt": "Noisy image after this step",
            "eps": "Predicted noise ε", "v": VIEWS["v"][0].upper() + VIEWS["v"][1:]}[name]


def _or_skip(array):
    """A view's image, or no change where the step carries none (a view the stream did not ask for)."""
    return gr.skip() if array is None else array


def _as_trained_label(train_steps: int | None) -> str:
    return f"DDPM as trained ({train_steps} steps)" if train_steps else "DDPM as trained"


def _scrubber(frames: tuple[Step, ...], total: int, stopped: bool = False):
    """The slider over the kept steps: their step numbers, every k-th, ending at the last; ``stopped``: the frames
    a stopped run streamed, at whatever steps they came."""
    if len(frames) < 2:
        return gr.update(visible=False)
    if stopped:
        return gr.update(visible=True, minimum=frames[0].step, maximum=frames[-1].step, step=1,
                         value=frames[-1].step, label=f"Scrub through the steps ({len(frames)} shown before Stop)")
    every = frames[1].step - frames[0].step
    kept = "every step" if every == 1 else f"{len(frames)} of {total} kept, one in {every}"
    return gr.update(visible=True, minimum=frames[0].step, maximum=frames[-1].step, step=every,
                     value=frames[-1].step, label=f"Scrub through the steps ({kept}; the last is the final image)")


def _estimate_text(scheduler: str, found: RunEstimate) -> str:
    seconds = round(found.seconds)
    minutes = f" ({seconds // 60} min {seconds % 60} s)" if seconds >= 90 else ""
    return (f"{scheduler}, {found.num_inference_steps} steps: **about {seconds} s**{minutes} on this device "
            f"({found.seconds_per_step:.3f} s a step, measured by {found.measured_by})")


def _timesteps_text(timesteps: tuple[int, ...]) -> str:
    """As the seed notes print ``scheduler.timesteps``: tensor([980, 960, ..., 0])."""
    return f"{len(timesteps)} steps: tensor([{', '.join(str(t) for t in timesteps)}])"
