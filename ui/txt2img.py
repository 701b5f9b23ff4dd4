"""The Text to image tab: prompt in, every denoising step out (x0 and x_t), then the PNG."""

from __future__ import annotations

from typing import Callable

import gradio as gr

from engine.events import Done, Started, Step
from engine.sampling.txt2img import MAX_GUIDANCE, MAX_STEPS, Txt2ImgRequest
from ui.common import DEVICE_QUEUE, friendly_errors, model_dropdown, progress_html, stream_updates, whole


def build(
    *,
    iter_txt2img: Callable,  # (Txt2ImgRequest, cancel=) -> events
    list_models: Callable[[], list[str]],
    default_model: str,
    default_size: Callable[[str], tuple[int, int] | None],
    schedulers: list[str],
) -> None:
    """Lay out the tab inside the current ``gr.Blocks`` and wire its events."""
    size = default_size(default_model) or (512, 512)
    defaults = Txt2ImgRequest(prompt="")
    with gr.Row():
        with gr.Column(scale=2):
            with gr.Row():
                model = model_dropdown(list_models(), default_model)
                refresh = gr.Button("↻ Refresh", scale=1, min_width=60)
            prompt = gr.Textbox(label="Prompt", lines=2, placeholder="a handwritten digit seven", elem_id="t2i-prompt")
            negative_prompt = gr.Textbox(label="Negative prompt", lines=1)
            with gr.Row():
                steps = gr.Slider(1, MAX_STEPS, value=defaults.num_inference_steps, step=1, label="Steps")
                guidance_scale = gr.Slider(1, MAX_GUIDANCE, value=defaults.guidance_scale, step=0.5,
                                           label="Guidance scale (1 = no guidance)")
            with gr.Row():
                scheduler = gr.Dropdown(schedulers, value=defaults.scheduler, label="Scheduler")
                seed = gr.Number(value=-1, precision=0, label="Seed (-1 = random)")
            with gr.Row():
                width = gr.Number(value=size[0], precision=0, step=8, label="Width (multiple of 8)")
                height = gr.Number(value=size[1], precision=0, step=8, label="Height (multiple of 8)")
                vae_preview_every = gr.Number(value=0, precision=0, minimum=0, label="Full VAE preview every N steps (0 = off)")
            with gr.Row():
                generate = gr.Button("Generate", variant="primary", elem_id="t2i-generate")
                stop = gr.Button("Stop", variant="stop", elem_id="t2i-stop")
        with gr.Column(scale=3):
            progress = gr.HTML(progress_html(0, 1, note="idle"), elem_id="t2i-progress")
            with gr.Row():
                image = gr.Image(label="Predicted clean image x0 → final image", format="png", type="pil",
                                 interactive=False, height=360, elem_id="t2i-image", elem_classes="wb-pixels")
                xt = gr.Image(label="Noisy latent after this step (the next step's input)", format="png", interactive=False, height=360,
                              elem_id="t2i-xt", elem_classes="wb-pixels")
            scrub = gr.Slider(1, 2, value=1, step=1, label="Scrub through the steps", visible=False,
                              elem_id="t2i-scrub")
            info = gr.JSON(label="Parameters used", elem_id="t2i-info")
            code = gr.Code(label="diffusers code", language="python", elem_id="t2i-code")
    history = gr.State(None)

    def render(event) -> tuple | None:
        """The seven outputs for one event (image, x_t, progress, info, code, scrubber, history)."""
        if isinstance(event, Started):
            return (gr.skip(), gr.skip(), progress_html(0, event.total, note=f"seed {event.info['seed']}"),
                    event.info, gr.skip(), gr.update(visible=False), None)
        if isinstance(event, Step):
            return (event.preview_x0.array(), event.preview_xt.array(),
                    progress_html(event.step, event.total, event.timestep, event.elapsed, event.eta),
                    gr.skip(), gr.skip(), gr.skip(), gr.skip())
        if isinstance(event, Done):
            final = event.paths[0] if event.paths else event.images[0]  # the saved PNG, sent as it is
            info_out = dict(event.info)
            info_out["file"] = event.paths[0] if event.paths else None
            n = len(event.steps)
            return (final, event.steps[-1].preview_xt.array() if n else None,
                    progress_html(n, n, elapsed=event.info.get("elapsed", 0.0), note="done"),
                    info_out, event.code,
                    gr.update(visible=n > 1, minimum=1, maximum=max(n, 2), value=n), event.steps)
        return None

    @friendly_errors
    async def txt2img(model, prompt, negative_prompt, steps, guidance_scale, scheduler, seed, width, height,
                      vae_preview_every=0):
        request = Txt2ImgRequest(
            model=model, prompt=prompt or "", negative_prompt=negative_prompt or "",
            num_inference_steps=whole(steps), guidance_scale=guidance_scale, scheduler=scheduler,
            seed=whole(seed), width=whole(width), height=whole(height),
            vae_preview_every=whole(vae_preview_every) or 0,
        )
        async for update in stream_updates(lambda cancel: iter_txt2img(request, cancel=cancel), render):
            yield update

    def show_step(index, steps):
        if not steps:
            return gr.skip(), gr.skip(), gr.skip()
        s = steps[min(max(int(index), 1), len(steps)) - 1]
        return s.preview_x0.array(), s.preview_xt.array(), progress_html(s.step, s.total, s.timestep, s.elapsed)

    def on_model_change(name):
        found = default_size(name)
        return (gr.update(value=found[0]), gr.update(value=found[1])) if found else (gr.skip(), gr.skip())

    event = generate.click(
        txt2img,
        inputs=[model, prompt, negative_prompt, steps, guidance_scale, scheduler, seed, width, height,
                vae_preview_every],
        outputs=[image, xt, progress, info, code, scrub, history],
        api_name="txt2img", concurrency_id=DEVICE_QUEUE, concurrency_limit=1,
    )
    stop.click(None, None, None, cancels=[event], api_visibility="private")
    scrub.release(show_step, [scrub, history], [image, xt, progress], api_visibility="private")
    refresh.click(lambda: gr.update(choices=list_models()), None, model, api_visibility="private")
    model.change(on_model_change, model, [width, height], api_visibility="private")
