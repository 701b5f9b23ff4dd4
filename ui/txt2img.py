"""The Text to image tab: prompt in, every denoising step out (x0 and x_t), then the PNG."""

from __future__ import annotations

import html
import math
from typing import Callable

import gradio as gr

from engine.errors import Cancelled, InputError, ModelLoadError
from engine.events import BatchDone, Done, Loading, Started, Step, StepsDrawn
from engine.models.loras import MAX_LORA_SCALE
from engine.sampling.txt2img import MAX_GUIDANCE, MAX_STEPS, PREVIEWS, Txt2ImgRequest
from engine.sampling.views import DEFAULT_VIEWS, VIEWS, step_measures, view_array
from engine.validation import check_batch_count
from ui import attention as attention_ui
from ui.charts import line_chart_html
from ui.common import (COMPILE_INFO, DEVICE_QUEUE, FILLED, SessionRuns, batch_done_html, batch_note, done_note,
                       export_update, field_messages, friendly_errors, last_seed, message_html, model_dropdown,
                       page_error, progress_html, schedule_fields, seed_buttons, stream_updates, whole)

DEFAULT_PROMPT = "a handwritten digit seven"  # a prompt the built-in model knows, there as a value to edit
# The engine's field names (as its messages say them) -> the position of their input below.
FIELDS = {"model": 0, "prompt": 1, "steps": 3, "guidance scale": 4, "scheduler": 5, "seed": 6, "width": 7,
          "height": 8, "VAE preview interval": 9, "preview": 10, "lora": 11, "LoRA scale": 12, "batch count": 13,
          "compile": 14, "timestep spacing": 15, "guidance rescale": 16}
NO_LORA = ("none", "")  # the LoRA box's first choice: (label, value)
SCRUB_LABEL = "Scrub through the steps (the last is the final image)"
SCRUB_FREED = ("this run's steps were let go to bound the server's memory (newer runs in other tabs); run it again to "
               "scrub")
SCRUB_DRAWING = "· drawing the previews of the steps the stream skipped…"
FAR_FROM_NATIVE = 2.0  # a size this many times larger or smaller than the model's own gets a warning


def build(
    *,
    iter_txt2img: Callable,  # (Txt2ImgRequest, cancel=) -> events
    check_model: Callable[[str, str], None],  # (model, kind) -> None, or the error its run would end with
    activity: Callable[[], str | None],  # what holds the device now, in words
    list_models: Callable[[], list[str]],
    default_model: str,
    default_size: Callable[[str], tuple[int, int] | None],
    schedulers: list[str],
    shown: Callable[[str], str],  # a path or a code snippet as people read it: the app's folders relative
    list_loras: Callable[[str], list[str]] = lambda model: [],  # LoRAs under <models-dir>/loras/ that fit a model
    check_lora: Callable[[str, str], None] = lambda model, lora: None,  # (model, lora) -> None, or its error
    export_run: Callable[[str], dict] | None = None,  # a saved image -> its run's replay bundle
    prompt_tokens: Callable | None = None,  # (model, prompt) -> PromptTokens: the chips and the attention view
    iter_attention: Callable | None = None,  # (Txt2ImgRequest, cancel=) -> events, then AttentionDone: /attention
) -> dict:
    """Lay out the tab inside the current ``gr.Blocks`` and wire its events; returns its settings' widgets by
    request field name (History and PNG Info fill them)."""
    size = default_size(default_model) or (512, 512)
    defaults = Txt2ImgRequest(prompt="")
    # Number boxes keep what was typed (no precision=0, which rounds 8.5 to 8): the engine refuses what is not whole.
    with gr.Row(elem_classes="wb-run-layout"):
        with gr.Column(scale=2):
            with gr.Row():
                model = model_dropdown(list_models(), default_model)
                refresh = gr.Button("↻ Refresh", scale=1, min_width=60)
            prompt = gr.Textbox(value=DEFAULT_PROMPT, label="Prompt (Ctrl+Enter generates)", lines=2,
                                elem_id="t2i-prompt")
            if prompt_tokens is not None:  # the prompt as the model sees it; a chip picks the attention view's word
                _, pick = attention_ui.build_chips(model, prompt, prompt_tokens=prompt_tokens,
                                                   default_model=default_model, default_prompt=DEFAULT_PROMPT)
            else:
                pick = gr.State("")
            negative_prompt = gr.Textbox(value="", label="Negative prompt", lines=1, elem_id="t2i-negative")
            with gr.Row(elem_classes="wb-run-buttons"):
                generate = gr.Button("Generate", variant="primary", elem_id="t2i-generate",
                                     elem_classes="wb-generate")
                stop = gr.Button("Stop", variant="stop", elem_id="t2i-stop")
            with gr.Row():
                # From 0: a 0 typed reaches the engine, which refuses it beside the field (from 1, the page ran 1)
                steps = gr.Slider(0, MAX_STEPS, value=defaults.num_inference_steps, step=1, label="Steps",
                                  elem_id="t2i-steps")
                guidance_scale = gr.Slider(1, MAX_GUIDANCE, value=defaults.guidance_scale, step=0.5,
                                           label="Guidance scale (1 = no guidance)", elem_id="t2i-guidance")
            with gr.Row():
                scheduler = gr.Dropdown(schedulers, value=defaults.scheduler, label="Scheduler",
                                        elem_id="t2i-scheduler")
                seed = gr.Number(value=-1, label="Seed (-1 = random)", elem_id="t2i-seed")
                reuse_seed, random_seed = seed_buttons("t2i")
            with gr.Row():
                width = gr.Number(value=size[0], step=8, label="Width (multiple of 8)",
                                  elem_id="t2i-width")
                height = gr.Number(value=size[1], step=8, label="Height (multiple of 8)",
                                   elem_id="t2i-height")
                batch_count = gr.Number(value=1, label="Batch count (runs: seeds s, s+1, ...)",
                                        elem_id="t2i-batch-count")
            with gr.Row():
                preview = gr.Radio(list(PREVIEWS), value=defaults.preview, label="x0 preview",
                                   info="auto: a VAE decode where it is cheap on this device, else latent-to-RGB",
                                   elem_id="t2i-preview")
                vae_preview_every = gr.Number(value=0, minimum=0, elem_id="t2i-vae-every",
                                              label="VAE decode every N steps (0 = as the preview says)")
            with gr.Row():  # inside a step: which two views the page streams (x0 and x_t cost nothing extra)
                views = [gr.Dropdown([(text, name) for name, text in VIEWS.items()], value=DEFAULT_VIEWS[k],
                                     label=f"{side} image shows", elem_id=f"t2i-view-{side.lower()}")
                         for k, side in enumerate(("Left", "Right"))]
            with gr.Row():
                lora = gr.Dropdown([NO_LORA, *list_loras(default_model)], value="", label="LoRA",
                                   allow_custom_value=True,  # a LoRA published since the page was built
                                   info="from <models-dir>/loras/, the ones that fit this model", elem_id="t2i-lora")
                lora_scale = gr.Slider(0, MAX_LORA_SCALE, value=defaults.lora_scale, step=0.05,
                                       label="LoRA scale (0 = the model alone)", elem_id="t2i-lora-scale")
            compile_unet = gr.Checkbox(value=defaults.compile, label="Compile for speed", elem_id="t2i-compile",
                                       info=COMPILE_INFO)
            timestep_spacing, guidance_rescale = schedule_fields("t2i", defaults, rescale=True)
        with gr.Column(scale=3, elem_classes="wb-previews"):
            progress = gr.HTML(progress_html(0, 1, note="idle"), elem_id="t2i-progress", elem_classes="wb-live")
            with gr.Row(elem_classes="wb-live"):
                image = gr.Image(label="Predicted clean image x0 → final image", format="png", type="pil",
                                 interactive=False, height=360, elem_id="t2i-image", elem_classes="wb-pixels")
                xt = gr.Image(label="Noisy latent after this step (the next step's input)", format="png",
                              interactive=False, height=360, elem_id="t2i-xt", elem_classes="wb-pixels")
            scrub = gr.Slider(1, 2, value=1, step=1, label=SCRUB_LABEL,
                              visible=False, elem_id="t2i-scrub")
            with gr.Row():
                charts = [gr.HTML(_chart(title, names, []), elem_id=f"t2i-chart-{k}")
                          for k, (title, names) in enumerate(CHARTS.items())]
            info = gr.JSON(label="Parameters used", elem_id="t2i-info")
            export = gr.DownloadButton("Export run (replay file)", visible=False, size="sm", elem_id="t2i-export")
            code = gr.Code(label="diffusers code", language="python", wrap_lines=True, elem_id="t2i-code")
    history = gr.State(None)  # which run the scrubber goes through: SessionRuns.keep_history's answer (no steps)
    exports = [export] if export_run is not None else []  # the page run's last output: the Export button
    no_export = (gr.skip(),) * len(exports)
    hide_export = (gr.update(visible=False, value=None),) * len(exports)
    runs = SessionRuns()
    inputs = [model, prompt, negative_prompt, steps, guidance_scale, scheduler, seed, width, height,
              vae_preview_every, preview, lora, lora_scale, batch_count, compile_unet, timestep_spacing,
              guidance_rescale]
    outputs = [image, xt, progress, info, code, scrub, history]

    def make_request(model, prompt, negative_prompt, steps, guidance_scale, scheduler, seed, width, height,
                     vae_preview_every=0, preview="auto", lora="", lora_scale=1.0, batch_count=1,
                     compile=False, timestep_spacing="", guidance_rescale=0.0) -> Txt2ImgRequest:
        """The page's values, by keyword, as the engine's request (the batch count goes beside it)."""
        return Txt2ImgRequest(
            model=model, prompt=prompt or "", negative_prompt=negative_prompt or "",
            num_inference_steps=whole(steps), guidance_scale=guidance_scale, scheduler=scheduler,
            seed=whole(seed), width=whole(width), height=whole(height),
            vae_preview_every=whole(vae_preview_every) or 0, preview=preview, lora=lora or "",
            lora_scale=lora_scale, compile=compile, timestep_spacing=timestep_spacing or "",
            guidance_rescale=guidance_rescale,
        )

    def render(event, run: dict | None = None) -> tuple | None:
        """The seven outputs for one event; ``run`` (the page's) keeps what Stop will show."""
        run = run if run is not None else {"steps": [], "note": ""}
        left, right = run.get("views", DEFAULT_VIEWS)
        if isinstance(event, Loading):  # the model's first run: what is loading, not "Step 0/1 · idle"
            return (gr.skip(), gr.skip(), progress_html(event.index - 1, event.total, elapsed=event.elapsed,
                                                        note=event.message, unit="Component"),
                    gr.skip(), gr.skip(), gr.skip(), gr.skip())
        if isinstance(event, Started):
            run.update(started=event, steps=[], final=None)  # a batch's next run starts afresh
            run.pop("scrub", None)  # and the last run's history is let go
            run["note"] = " · ".join(filter(None, [batch_note(event.info), _run_note(event, run.get("warning", ""))]))
            how = event.info.get("preview", "").split(":")[0]
            guided = event.info.get("guidance_scale", 0) > 1
            return (gr.update(label=_view_label(left, how, guided)), gr.update(label=_view_label(right, how, guided)),
                    progress_html(0, event.total, note=" · ".join(filter(None, [f"seed {event.info['seed']}",
                                                                                 run["note"],
                                                                                 event.info.get("compiling")]))),
                    event.info, shown(event.code), gr.update(visible=False), None)
        if isinstance(event, Step):
            run["steps"].append(event)
            pick = run.get("pick")  # the attention view's token(s)
            return (_or_skip(view_array(event, left, pick)), _or_skip(view_array(event, right, pick)),
                    progress_html(event.step, event.total, event.timestep, event.elapsed, event.eta,
                                  note=run["note"]),
                    gr.skip(), gr.skip(), gr.skip(), gr.skip())
        if isinstance(event, Done):
            final = event.paths[0] if event.paths else event.images[0]  # the saved PNG, sent as it is
            info_out = dict(event.info)
            info_out["file"] = shown(event.paths[0]) if event.paths else None  # the image itself is sent as it is
            run["shown"] = info_out
            n = len(event.steps)
            run["final"] = final
            pick = run.get("pick")
            shown_left = final if left == "x0" or not n else attention_ui.final_frame(event.steps, left, final, pick)
            shown_right = attention_ui.final_frame(event.steps, right, final, pick) if n else None
            kept = runs.keep_history(run, event.steps, final)
            return (shown_left, shown_right,
                    progress_html(n, n, elapsed=event.info.get("elapsed", 0.0), note=done_note(event.info)),
                    info_out, shown(event.code), _scrubber(kept, drawing=run.get("history") == "after"), kept)
        if isinstance(event, StepsDrawn):  # the frames the stream skipped, drawn after the final image went out
            kept = runs.keep_history(run, event.steps, run.get("final"))
            return (gr.skip(),) * 5 + (_scrubber(kept), kept)
        if isinstance(event, BatchDone):  # the batch's grid, its runs' files listed
            run["shown"] = {**event.info, "files": [shown(p) for p in event.paths],
                            "grid": shown(event.grid) if event.grid else None}
            return (event.grid or event.image, gr.skip(),
                    batch_done_html(event.seeds),
                    run["shown"], gr.skip(), gr.update(visible=False), None)
        return None

    @friendly_errors
    async def txt2img(model, prompt, negative_prompt, steps, guidance_scale, scheduler, seed, width, height,
                      vae_preview_every=0, preview="auto", lora="", lora_scale=1.0, batch_count=1, compile=False,
                      timestep_spacing="", guidance_rescale=0.0):
        """The API: errors are raised, as gradio_client expects."""
        request = make_request(model, prompt, negative_prompt, steps, guidance_scale, scheduler, seed, width,
                               height, vae_preview_every, preview, lora, lora_scale, compile=compile,
                               timestep_spacing=timestep_spacing, guidance_rescale=guidance_rescale)
        # An API client gets no history (a gr.State): nothing is drawn for it after the loop.
        async for update in stream_updates(lambda cancel: iter_txt2img(request, cancel=cancel, history="streamed",
                                                                       batch_count=whole(batch_count)), render):
            yield update

    async def txt2img_page(model, prompt, negative_prompt, steps, guidance_scale, scheduler, seed, width, height,
                           vae_preview_every, preview, lora, lora_scale, batch_count, compile, timestep_spacing,
                           guidance_rescale, view_left, view_right, pick_text, session: gr.Request):
        """The page: the last result stays; an error is said in the progress line and a toast."""
        run = runs.begin(session.session_hash)
        run["views"] = (view_left, view_right)
        try:
            request = make_request(model, prompt, negative_prompt, steps, guidance_scale, scheduler, seed, width,
                                   height, vae_preview_every, preview, lora, lora_scale, compile=compile,
                                   timestep_spacing=timestep_spacing, guidance_rescale=guidance_rescale)
            if "attention" in run["views"] and prompt_tokens is not None:  # the run's tokens, for its frames
                run["tokens"] = prompt_tokens(request.model or default_model, request.prompt)
                run["pick"] = attention_ui.picked(run["tokens"], pick_text)
            run["warning"] = _far_from_native(request, default_size(request.model or default_model))
            if run["warning"]:
                gr.Warning(html.escape(run["warning"]))
            run["history"] = "after"
            one_run = whole(batch_count) == 1

            def page_update(event):  # in stream_updates' thread
                update = _with_charts(render(event, run), event, run)
                code = update[4] if update is not None else None
                if isinstance(code, str):  # the code is sent again only when it changed (a redraw in the page)
                    update = update if code != run.get("code_sent") else update[:4] + (gr.skip(),) + update[5:]
                    run["code_sent"] = code
                # The run's last update (its previews' history; a batch's grid) carries the Export button.
                last = isinstance(event, BatchDone) or (isinstance(event, StepsDrawn) and one_run)
                if update is not None and last:
                    return update + tuple(export_update(export_run, run.get("shown")) for _ in exports)
                return None if update is None else update + no_export

            async for update in stream_updates(
                    lambda cancel: iter_txt2img(request, cancel=cancel, history="after", views=run["views"],
                                                batch_count=whole(batch_count)), page_update, cancel=run["cancel"]):
                yield update
        except Cancelled:  # the page's Stop (after the final image, only its previews' history was still coming)
            if run.get("final") is None:
                yield stopped(run) + (gr.skip(),) * len(charts) + hide_export
        except Exception as exc:
            message = page_error(exc)
            gr.Warning(html.escape(message))
            yield (gr.skip(), gr.skip(), message_html(message), gr.skip(), gr.skip(), gr.skip(), gr.skip(),
                   *(gr.skip(),) * len(charts), *no_export)
        finally:
            runs.end(run)

    def problem(*values) -> InputError | ModelLoadError | None:
        """What is wrong with the page's values, found without running anything."""
        try:
            values = values[:len(inputs)]  # the page's views are no part of the request
            request = make_request(*values)
            check_batch_count(whole(values[FIELDS["batch count"]]), max(request.seed, 0))
            check_model(request.model or default_model, "txt2img")
            check_lora(request.model or default_model, request.lora)
        except (InputError, ModelLoadError) as exc:
            return exc
        return None

    def validate(*values):
        """Each bad value shown beside its field before anything runs; the last result stays."""
        exc = problem(*values)
        return field_messages(exc, FIELDS, len(values)) if exc else [gr.validate(True, "")] * len(values)

    def before_run(*values):
        """At the click, in the progress line: what is wrong, or what the run waits for."""
        exc = problem(*values)
        if exc is not None:
            return message_html(str(exc))
        busy = activity()
        return message_html(f"waiting for {busy} to finish", "waiting") if busy else gr.skip()

    def stopped(run: dict, keep: bool = True) -> tuple:
        """After Stop: where the run stopped; its frames so far (kept for the scrubber where ``keep``), its parameters
        and its code stay."""
        started = run["started"]
        frames = run["steps"] or (run.get("scrub") or {}).get("steps", ())
        if started is None:
            return (gr.skip(), gr.skip(), message_html("Stopped before the first step", "stopped"), gr.skip(),
                    gr.skip(), gr.skip(), gr.skip())
        at = frames[-1].step if frames else 0
        info_out = {**started.info, "stopped_at_step": at}
        batch = f" ({batch_note(started.info)})" if batch_note(started.info) else ""
        kept = runs.keep_history(run, frames, None) if keep else None
        return (gr.skip(), gr.skip(), message_html(f"Stopped at step {at} of {started.total}{batch}", "stopped"),
                info_out, shown(started.code), _scrubber(kept), kept)

    def stop_page_run(session: gr.Request):
        """Stop's own answer in the progress line. Once the run has stopped it says what the run's last update
        says (where it stopped), so the line ends the same whichever of the two the page gets last; on slow
        steps, that it is stopping (the run's update comes a second or more after this)."""
        run = runs.stop(session.session_hash, wait=STOP_WAIT)
        if run is None or run.get("final") is not None:  # no run, or it had ended with its final image
            return gr.skip()
        return stopped(run, keep=False)[2] if run.get("ended") else message_html("Stopping at the end of this step",
                                                                                  "stopped")

    def show_step(index, kept, left=DEFAULT_VIEWS[0], right=DEFAULT_VIEWS[1], pick_text="",
                  session: gr.Request = None):
        """A kept step's two chosen views (any view of a kept step: the history keeps them all); the attention view
        shows the picked token(s) of the run's prompt."""
        labels = gr.update(label=_view_label(left)), gr.update(label=_view_label(right))
        steps = runs.history(session.session_hash, kept) if session is not None else None
        if not steps or not steps["steps"]:
            return (*labels, message_html(SCRUB_FREED, "stopped") if kept else gr.skip())
        frames = steps["steps"]
        chosen = attention_ui.picked(steps.get("tokens"), pick_text)
        s = min(frames, key=lambda f: abs(f.step - int(index)))
        if s is frames[-1] and steps["final"] is not None:
            return (gr.update(value=steps["final"] if left == "x0" else
                              attention_ui.final_frame(frames, left, steps["final"], chosen), label=labels[0]["label"]),
                    gr.update(value=attention_ui.final_frame(frames, right, steps["final"], chosen),
                              label=labels[1]["label"]),
                    progress_html(s.step, s.total, elapsed=s.elapsed, note="final image"))
        return (gr.update(value=view_array(s, left, chosen), label=labels[0]["label"]),
                gr.update(value=view_array(s, right, chosen), label=labels[1]["label"]),
                progress_html(s.step, s.total, s.timestep, s.elapsed))

    def on_model_change(name, given=None):
        if given and given.get("model") == name and "width" in given:
            return gr.skip(), gr.skip()  # filled in with its settings (History, PNG Info): their size stays
        found = default_size(name)
        return (gr.update(value=found[0]), gr.update(value=found[1])) if found else (gr.skip(), gr.skip())

    def lora_choices(name, current):  # the LoRAs that fit the model; one that does not is unpicked
        fits = list_loras(name or default_model)
        return gr.update(choices=[NO_LORA, *fits], value=current if current in fits else "")

    api_trigger = gr.Button(visible=False)  # the public /txt2img endpoint; the page's button below validates
    # The API takes values as sent (preprocess=False): the engine checks each, and its message names the field and
    # what it takes, where Gradio's own checks (a slider's bounds, a dropdown's choices) name neither.
    api_trigger.click(txt2img, inputs=inputs, outputs=outputs, api_name="txt2img", preprocess=False,
                      concurrency_id=DEVICE_QUEUE, concurrency_limit=1)
    # The check at the click runs beside the run, not before it: the page submits a click's listeners one after
    # another, so a listener of Generate's own would hold the run back until it answered (about 70 ms on the
    # 2-core machine, bench/page.py). Generate's first listener clicks this hidden button instead, a click of its own.
    # It goes first: Gradio clears its inputs' field messages on an event's first answer, so a check clicked after
    # the run's queue join (20 ms sooner) erased the message the run's validator had just put beside a bad field.
    check = gr.Button(visible="hidden", elem_id="t2i-check")
    check.click(before_run, inputs, progress, queue=False, api_visibility="private", show_progress="hidden")
    generate.click(None, js="() => { document.querySelector('#t2i-check')?.click(); }")
    # A click while the last run is still ending (its history's previews being drawn after the final image went
    # out) queues one more run rather than being dropped (Gradio's default "once" ignores it).
    # No Gradio progress overlay on the outputs: the progress line says it, and the overlay's animation kept the
    # browser's compositor busy (about 0.4 CPU-s a run in a Chromium trace) on the cores the loop runs on. The
    # Export button comes with the run's last update, not in an event of its own after it.
    generate.click(txt2img_page, inputs=inputs + views + [pick], outputs=outputs + charts + exports,
                   validator=validate, trigger_mode="always_last", api_visibility="private",
                   concurrency_id=DEVICE_QUEUE, concurrency_limit=1, show_progress="hidden")
    reuse_seed.click(last_seed, info, seed, api_visibility="private")
    random_seed.click(lambda: -1, None, seed, api_visibility="private")
    # The page's run ends through its own token, so it can say where it stopped (a cancelled event cannot).
    stop.click(stop_page_run, None, progress, queue=False, api_visibility="private")
    gr.on([scrub.release, scrub.input, *(v.input for v in views), *attention_ui.pick_events(pick)], show_step,
          [scrub, history, *views, pick], [image, xt, progress], api_visibility="private",
          trigger_mode="always_last")  # a chip picked while a frame is drawn is drawn after it, not dropped
    if iter_attention is not None:
        attention_ui.add_api(iter_attention=iter_attention, make_request=make_request, inputs=inputs[:9], shown=shown)
    refresh.click(lambda: gr.update(choices=list_models()), None, model, api_visibility="private")
    filled = gr.State(None)  # the settings History or PNG Info filled in last, until a person picks a model
    model.change(on_model_change, [model, filled], [width, height], api_visibility="private")
    model.input(lambda: None, None, filled, api_visibility="private")
    # A LoRA published by a training run since the page loaded is there when the box is opened.
    gr.on([model.change, refresh.click, lora.focus], lora_choices, [model, lora], lora,
          api_visibility="private", queue=False)
    return {"model": model, "prompt": prompt, "negative_prompt": negative_prompt, "num_inference_steps": steps,
            "guidance_scale": guidance_scale, "scheduler": scheduler, "seed": seed, "width": width, "height": height,
            "lora": lora, "lora_scale": lora_scale, "batch_count": batch_count, FILLED: filled,
            "timestep_spacing": timestep_spacing, "guidance_rescale": guidance_rescale}


NO_GUIDANCE = "none at guidance 1 (no unconditional pass: ε_text is used alone)"
STOP_WAIT = 1.0  # seconds Stop waits for the run to end before it answers "stopping"

CHARTS = {  # chart title -> its series: inside a step, each step's numbers (engine.sampling.views.MEASURES)
    "Guidance: rms of ε_text − ε_uncond": ("guidance rms",),
    "Noise level σ and the latent's std": ("sigma", "latent std"),
}
CHART_COLORS = ("#4c78a8", "#f58518")  # tableau10's first two


def _chart(title: str, names, measures: list[dict]) -> str:
    """The chart of series ``names`` over each step's measures (NaN values, no guidance, left out)."""
    unguided = "guidance rms" in names and measures and all(math.isnan(m["guidance rms"]) for m in measures)
    return line_chart_html(title, {name: [(m["step"], m[name]) for m in measures] for name in names},
                           dict(zip(names, CHART_COLORS)), empty=NO_GUIDANCE if unguided else "no steps yet")


def _with_charts(update: tuple | None, event, run: dict) -> tuple | None:
    """The page's outputs for an event: ``update`` and the two charts of each step's numbers (live, then whole)."""
    if update is None:
        return None
    if isinstance(event, Step) and (found := step_measures(event)) is not None:
        run.setdefault("measures", []).append(found)
    elif isinstance(event, Done):
        run["measures"] = [m for s in event.steps if (m := step_measures(s)) is not None]
        if run.get("history") == "after":  # the whole run's rows go with the StepsDrawn just after: the final
            return update + (gr.skip(),) * len(CHARTS)  # image's update stays small
    elif isinstance(event, (StepsDrawn, BatchDone)):
        pass  # the whole run's (see Done); a batch's last run's
    else:  # a run's start: the last run's charts stay until this one's first step
        if isinstance(event, Started):
            run["measures"] = []
        return update + (gr.skip(),) * len(CHARTS)
    if not run.get("measures"):
        return update + (gr.skip(),) * len(CHARTS)
    return update + tuple(_chart(title, names, run["measures"]) for title, names in CHARTS.items())


def _view_label(name: str, how: str = "", guided: bool = True) -> str:
    """An image's label for view ``name``; x0 says how it is drawn, and that the final image ends it; the guidance
    view of a run without guidance says why it stays empty."""
    if name == "guidance" and not guided:
        return f"{VIEWS[name][0].upper()}{VIEWS[name][1:]}: {NO_GUIDANCE}"
    if name == "x0":
        return f"Predicted clean image x0{f' ({how})' if how else ''} → final image"
    return VIEWS[name][0].upper() + VIEWS[name][1:]


def _or_skip(array):
    """A view's image, or no change where the step carries none (a view the stream did not ask for)."""
    return gr.skip() if array is None else array


def _scrubber(kept: dict | None, drawing: bool = False):
    """The scrub slider over the steps a run's history kept (``SessionRuns.keep_history``'s answer: every k-th,
    the last always), saying which; ``drawing``: the previews the stream skipped are still coming."""
    if not kept or kept["kept"] < 2:
        return gr.update(visible=False)
    every = kept["every"]
    label = SCRUB_LABEL if every == 1 else (f"Scrub through the steps ({kept['kept']} of {kept['of']} kept, one in "
                                            f"{every}, to bound the server's memory; the last is the final image)")
    return gr.update(visible=True, minimum=kept["first"], maximum=kept["last"], step=every, value=kept["last"],
                     label=label + (f" {SCRUB_DRAWING}" if drawing else ""))


def _run_note(started: Started, warning: str = "") -> str:
    """What a person may wonder about during the run: evaluations that are not steps, an empty prompt, the size."""
    notes = [warning] if warning else []
    if started.total != started.info["steps"]:
        notes.append(f"{started.total} model evaluations for {started.info['steps']} steps "
                     f"({started.info['scheduler']} evaluates the model more than once a step)")
    if not started.info["prompt"].strip():
        notes.append("empty prompt: nothing to guide towards, the image is the model's unconditional guess")
    return " · ".join(notes)


def _far_from_native(request: Txt2ImgRequest, native: tuple[int, int] | None) -> str:
    """A warning when the size is far from the one the model was trained at, else ""."""
    if native is None or request.width is None or request.height is None:
        return ""
    ratio = max(request.width / native[0], native[0] / request.width, request.height / native[1],
                native[1] / request.height)
    if ratio < FAR_FROM_NATIVE:
        return ""
    cost = request.width * request.height / (native[0] * native[1])
    return (f"{request.width}x{request.height} is far from this model's {native[0]}x{native[1]}: expect noise "
            f"rather than a picture, at about {cost:.3g}x the time")
