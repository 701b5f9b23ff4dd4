"""The Unconditional tab: a DDPM-layout model denoises pure noise; every step's x_t and x0, then the grid."""

from __future__ import annotations

from typing import Callable

import gradio as gr

from engine.events import Done, Started, Step
from engine.sampling.unconditional import MAX_BATCH, UnconditionalRequest
from ui.common import DEVICE_QUEUE, friendly_errors, model_dropdown, progress_html, stream_updates, whole


def build(
    *,
    iter_unconditional: Callable,  # (UnconditionalRequest, cancel=) -> events
    final_image: Callable,  # Done -> the image, or the batch's grid, with its PNG parameters
    default_steps: Callable[[str, str], int | None],  # (model, scheduler) -> steps, None if unknown
    list_models: Callable[[], list[str]],
    default_model: str,
    schedulers: list[str],
) -> gr.Dropdown:
    """Lay out the tab inside the current ``gr.Blocks`` and wire its events; returns the model box
    (the Training tab keeps its list up to date)."""
    defaults = UnconditionalRequest()
    with gr.Row():
        with gr.Column(scale=2):
            with gr.Row(elem_id="ddpm-model-row"):
                model = model_dropdown(list_models(), default_model)
                refresh = gr.Button("↻ Refresh", scale=1, min_width=60, elem_id="ddpm-refresh")
            with gr.Row():
                scheduler = gr.Dropdown(schedulers, value=defaults.scheduler, label="Scheduler",
                                        info="DDPM samples as the model was trained", elem_id="ddpm-scheduler")
                steps = gr.Number(value=default_steps(default_model, defaults.scheduler) or 50, precision=0,
                                  label="Steps", elem_id="ddpm-steps",
                                  info="default: the model's training timesteps for DDPM, 50 for the others")
            with gr.Row():
                seed = gr.Number(value=defaults.seed, precision=0, label="Seed (-1 = random)", elem_id="ddpm-seed")
                batch_size = gr.Number(value=defaults.batch_size, precision=0, label=f"Batch size (1 to {MAX_BATCH})",
                                       elem_id="ddpm-batch")
            with gr.Row():
                generate = gr.Button("Generate", variant="primary", elem_id="ddpm-generate")
                stop = gr.Button("Stop", variant="stop", elem_id="ddpm-stop")
            timesteps = gr.Textbox(label="Timesteps the loop visits (scheduler.timesteps)", lines=3, max_lines=6,
                                   interactive=False, elem_id="ddpm-timesteps")
        with gr.Column(scale=3):
            progress = gr.HTML(progress_html(0, 1, note="idle"), elem_id="ddpm-progress")
            with gr.Row():
                image = gr.Image(label="Predicted clean image x0 → final image (a grid for a batch)", format="png",
                                 type="pil", interactive=False, height=360, elem_id="ddpm-image",
                                 elem_classes="wb-pixels")
                xt = gr.Image(label="Noisy image after this step (the next step's input)", format="png", interactive=False, height=360,
                              elem_id="ddpm-xt", elem_classes="wb-pixels")
            info = gr.JSON(label="Parameters used", elem_id="ddpm-info")
            code = gr.Code(label="The same loop in plain diffusers", language="python", elem_id="ddpm-code")

    def render(event) -> tuple | None:
        """The six outputs for one event (image, x_t, progress, timesteps, info, code)."""
        if isinstance(event, Started):
            return (gr.skip(), gr.skip(), progress_html(0, event.total, note=f"seed {event.info['seed']}"),
                    _timesteps_text(event.timesteps), event.info, gr.skip())
        if isinstance(event, Step):
            return (event.preview_x0.array(), event.preview_xt.array(),
                    progress_html(event.step, event.total, event.timestep, event.elapsed, event.eta),
                    gr.skip(), gr.skip(), gr.skip())
        if isinstance(event, Done):
            info_out = dict(event.info)
            info_out["files"] = list(event.paths)
            n = len(event.steps)
            return (final_image(event), gr.skip(),
                    progress_html(n, n, elapsed=event.info.get("elapsed", 0.0), note="done"),
                    gr.skip(), info_out, event.code)
        return None

    @friendly_errors
    async def ddpm(model, scheduler, steps, seed, batch_size):
        request = UnconditionalRequest(model=model or "", scheduler=scheduler,
                                       num_inference_steps=whole(steps), seed=whole(seed),
                                       batch_size=whole(batch_size))
        async for update in stream_updates(lambda cancel: iter_unconditional(request, cancel=cancel), render):
            yield update

    def on_choice(model_name, scheduler_name):
        found = default_steps(model_name, scheduler_name)
        return gr.update(value=found) if found else gr.skip()

    event = generate.click(
        ddpm, inputs=[model, scheduler, steps, seed, batch_size],
        outputs=[image, xt, progress, timesteps, info, code],
        api_name="ddpm", concurrency_id=DEVICE_QUEUE, concurrency_limit=1,
    )
    stop.click(None, None, None, cancels=[event], api_visibility="private")
    refresh.click(lambda: gr.update(choices=list_models()), None, model, api_visibility="private")
    gr.on([model.change, scheduler.change], on_choice, [model, scheduler], steps, api_visibility="private")
    return model


def _timesteps_text(timesteps: tuple[int, ...]) -> str:
    """As the seed notes print ``scheduler.timesteps``: tensor([980, 960, ..., 0])."""
    return f"{len(timesteps)} steps: tensor([{', '.join(str(t) for t in timesteps)}])"
