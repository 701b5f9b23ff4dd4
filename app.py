"""Diffusion Workbench: parse the command line, build the engine and the tabs, launch."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
from pathlib import Path

from engine.models.devices import DEVICE_CHOICES

log = logging.getLogger("workbench")

CSS = """
.wb-progress-text { font-family: ui-monospace, monospace; font-size: 0.9em; }
.wb-error .wb-progress-text { color: var(--error-text-color, #b91c1c); }
.wb-stopped .wb-progress-text, .wb-waiting .wb-progress-text { font-weight: 600; }
.wb-pixels img { image-rendering: pixelated; width: 100%; height: 100%; object-fit: contain; }
.wb-pixels .image-frame { padding-top: 28px; box-sizing: border-box; }  /* below the label and buttons */
.wb-vega .vega-embed { width: 100%; }  /* Gradio centres the chart: a "container" width would measure 0 */
.wb-chart { font-size: 0.8em; }
.wb-chart-title { font-weight: 600; }
.wb-chart-legend { display: flex; gap: 0.8em; margin: 0.2em 0; }
.wb-chart-key i { display: inline-block; width: 0.8em; height: 0.8em; margin-right: 0.3em; vertical-align: -0.05em; }
.wb-chart svg { width: 100%; height: auto; max-height: 200px; fill: currentColor; }
.wb-chart svg text { font-size: 11px; }
.wb-chart-axis { stroke: currentColor; stroke-opacity: 0.4; }
.wb-chart-empty { opacity: 0.6; padding: 2em 0; text-align: center; }
/* Narrow windows (the columns stack): what a run shows (.wb-live), then its Generate and Stop, then the rest. */
@media (max-width: 720px) {
  .wb-run-layout { flex-direction: column; flex-wrap: nowrap; }
  .wb-run-layout > .column { display: contents; }
  .wb-run-layout .wb-live { order: -2; }
  .wb-run-layout .wb-run-buttons { order: -1; }
  .wb-run-layout #train-grid { order: -1; }  /* Training's tall sample grid after Start and Stop: both stay in reach */
}
.wb-caption { font-family: ui-monospace, monospace; font-size: 0.8em; text-align: center; }
/* The Noise tab's strips: a caption ("t = 400, √ᾱ = 0.44") wraps under a narrow thumbnail rather than being cut */
#noise-strip .caption-label, #i2i-strip .caption-label { white-space: normal; overflow: visible; text-overflow: clip; }
/* History's "Page 1 of 3 · 43 images" on a line of its own in a narrow window, not squeezed to a letter's width
   (Gradio's Markdown block sets its min-width to 0 in its style attribute, whatever min_width says) */
#history-counts { min-width: min(16em, 100%) !important; }
/* History's captions (seed · prompt) wrap over their thumbnail rather than being cut to one line with an ellipsis. */
#history-gallery .caption-label { white-space: normal; max-width: calc(100% - 2 * var(--block-label-margin)); }
"""
# Ctrl+Enter (Cmd+Enter) runs the visible tab's Generate; Enter in a slider's number box commits it as Tab does
# (Gradio's slider says "release", what the app's sliders act on, only when the box loses focus); the header's button
# switches dark mode, which a reload keeps. A tab's widgets are built only when it first opens, so the images they
# start with (the Noise strip's) are fetched as the page loads and kept: the tab shows them in its first frame.
JS = """
() => {
  if (localStorage.getItem('wb-dark') === '1') document.body.classList.add('dark');
  const urls = new Set(), collect = (v) => {
    if (Array.isArray(v)) v.forEach(collect);
    else if (v && typeof v === 'object') Object.entries(v).forEach(([k, x]) =>
      k === 'url' && typeof x === 'string' && /[.](png|jpe?g|webp)$/i.test(x) ? urls.add(x) : collect(x));
  };
  (window.gradio_config?.components || []).forEach(c => collect(c.props?.value));
  window.wbPreloaded = [...urls].map(u => Object.assign(new Image(), {src: u}));
  document.addEventListener('keydown', (e) => {
    if (e.key !== 'Enter') return;
    if (!(e.ctrlKey || e.metaKey)) {
      if (e.target.matches?.("input[data-testid='number-input']") &&
          e.target.closest('.wrap')?.querySelector("input[type='range']")) e.target.blur();
      return;
    }
    const visible = [...document.querySelectorAll('.wb-generate')].find(b => b.offsetParent !== null);
    if (visible) { e.preventDefault(); visible.click(); }
  });
}
"""
CACHE_CLEANING = (600, 3600)  # (every N seconds, delete cached files older than M seconds)
CACHE_FILES = 500  # files the page's outputs keep in the cache, newest first: a streamed run leaves about 15
CACHE_PRUNE_EVERY = 5.0  # seconds between the cache's count checks (--cache-files)
DARK_MODE_JS = ("() => { localStorage.setItem('wb-dark', document.body.classList.toggle('dark') ? '1' : '0'); }")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Diffusion Workbench: watch diffusion models denoise, step by step.")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--models-dir", type=Path, default=Path("models"), help="your models and training checkpoints (default ./models)")
    p.add_argument("--data-dir", type=Path, default=Path("data"), help="image folders for training (default ./data)")
    p.add_argument("--outputs-dir", type=Path, default=Path("outputs"), help="generated PNGs (default ./outputs)")
    p.add_argument("--device", choices=DEVICE_CHOICES, default="auto", help="auto = cuda, then mps, then cpu")
    p.add_argument("--auth", metavar="USER:PASSWORD", help="ask for this user name and password")
    p.add_argument("--no-a1111-api", action="store_true",
                   help="turn off AUTOMATIC1111's HTTP API (/sdapi/v1/...; on by default, covered by --auth)")
    p.add_argument("--share", action="store_true", help="make a public gradio.live link (off unless given)")
    p.add_argument("--temp-dir", type=Path, default=None,
                   help="where the page's files (previews, uploads) are cached; the app's own, cleaned hourly "
                        "(default: $GRADIO_TEMP_DIR if set, else ./.cache/gradio)")
    p.add_argument("--cache-files", type=int, default=CACHE_FILES, metavar="N",
                   help="files the page's outputs (previews, final images) keep in that cache, newest first; older "
                        f"ones are deleted within seconds (default {CACHE_FILES})")
    p.add_argument("--max-upload-mb", type=int, default=512, metavar="MB",
                   help="largest upload for training data, unpacked (default 512)")
    p.add_argument("--max-data-mb", type=int, default=8192, metavar="MB",
                   help="the data dir may hold at most this much after an upload (default 8192)")
    p.add_argument("--torch-threads", type=int, default=None, metavar="N",
                   help="torch threads for sampling (default: all cores but one on a CPU, torch's own elsewhere)")
    p.add_argument("--model-cache-gb", type=float, default=None, metavar="GB",
                   help="loaded models kept for the next run, in GB; the least recently used go first (default: "
                        "40%% of the memory the models live in: RAM on a CPU, the GPU's on CUDA)")
    args = p.parse_args(argv)
    if args.auth is not None and ":" not in args.auth:
        p.error("--auth takes user:password")
    if args.model_cache_gb is not None and not args.model_cache_gb >= 0:
        p.error(f"--model-cache-gb takes a size in GB, 0 or more; got {args.model_cache_gb}")
    return args


def build_app(args: argparse.Namespace):
    """The engine and the page; nothing is launched."""
    import gradio as gr

    from engine.workbench import Folders, UploadLimits, Workbench
    from ui import compare as compare_tab, img2img as img2img_tab, noise as noise_tab, train as train_tab
    from ui import txt2img as txt2img_tab, unconditional as unconditional_tab
    from ui import a1111_api, history as history_tab, pnginfo as pnginfo_tab
    from ui.common import name_file_inputs
    from ui.gradio_compat import cache_images_atomically

    bench = Workbench(Folders(args.models_dir, args.data_dir, args.outputs_dir), device=args.device,
                      torch_threads=args.torch_threads, model_cache_gb=args.model_cache_gb,
                      upload_limits=UploadLimits(upload_bytes=args.max_upload_mb * 1024**2,
                                                 data_dir_bytes=args.max_data_mb * 1024**2))
    bench.start()  # the sampling worker imports torch while the page loads
    # The app's own cache folder (never Gradio's default, which every Gradio app of the user shares and serves):
    # a streamed run leaves about 15 preview files, so files older than an hour go, checked every 10 minutes.
    temp_dir = args.temp_dir or Path(os.environ.get("GRADIO_TEMP_DIR") or Path(".cache") / "gradio")
    temp_dir.mkdir(parents=True, exist_ok=True)
    os.environ["GRADIO_TEMP_DIR"] = str(temp_dir.resolve())
    with gr.Blocks(title="Diffusion Workbench", delete_cache=CACHE_CLEANING) as demo:
        with gr.Row():
            gr.Markdown("# Diffusion Workbench\nEvery denoising step, visible.")
            dark = gr.Button("◐ Dark mode", size="sm", scale=0, min_width=120, elem_id="dark-mode")
        dark.click(None, js=DARK_MODE_JS)
        with gr.Tab("Text to image", id="txt2img") as txt2img_page:
            txt2img_fields = txt2img_tab.build(
                iter_txt2img=bench.iter_txt2img,
                check_model=bench.check_model,
                activity=bench.activity,
                list_models=lambda: bench.list_models("txt2img"),
                default_model=bench.default_model("txt2img"),
                default_size=bench.default_size,
                schedulers=list(bench.schedulers("txt2img")),
                shown=bench.shown,
                list_loras=bench.list_loras,
                check_lora=bench.check_lora,
                export_run=bench.export_run,
                prompt_tokens=bench.prompt_tokens,
                iter_attention=bench.iter_attention,
            )
        with gr.Tab("Unconditional", id="unconditional") as unconditional_page:
            unconditional_fields = unconditional_tab.build(
                iter_unconditional=bench.iter_unconditional,
                iter_unconditional_views=bench.iter_unconditional_views,
                final_image=bench.final_image,
                default_steps=bench.default_steps,
                estimate=bench.estimate_unconditional,
                list_models=lambda: bench.list_models("unconditional"),
                default_model=bench.default_model("unconditional"),
                schedulers=list(bench.schedulers("unconditional")),
                shown=bench.shown,
                export_run=bench.export_run,
                tab=unconditional_page,
            )
        with gr.Tab("Noise", id="noise") as noise_page:
            noise = noise_tab.build(
                add_noise=bench.add_noise,
                schedule_arrays=bench.schedule_arrays,
                visited_timesteps=bench.visited_timesteps,
                schedule_of_model=bench.schedule_of_model,
                list_models=bench.list_schedule_models,
                schedulers=list(bench.schedulers("txt2img")),
                tab=noise_page,
                schedule_facts=bench.schedule_facts,
            )
            img2img_tab.build(
                noise=noise,
                iter_img2img=bench.iter_img2img,
                iter_strength_strip=bench.iter_strength_strip,
                check_img2img=bench.check_img2img,
                img2img_size=bench.img2img_size,
                img2img_start=bench.img2img_start,
                model_kind=bench.model_kind,
                sample_image=bench.sample_image,
                list_models=lambda: bench.list_models("txt2img") + bench.list_models("unconditional"),
                schedule_models=bench.list_schedule_models,
                default_model=bench.default_model("txt2img"),
                schedulers=bench.schedulers,
                shown=bench.shown,
            )
        with gr.Tab("Compare", id="compare") as compare_page:
            compare_tab.build(
                iter_compare=bench.iter_compare,
                compare_columns=bench.compare_columns,
                model_kind=bench.model_kind,
                list_models=lambda: bench.list_models("txt2img") + bench.list_models("unconditional"),
                default_model=bench.default_model("txt2img"),
                default_size=bench.default_size,
                schedulers=bench.schedulers,
                shown=bench.shown,
            )
        with gr.Tab("Training", id="train") as train_page:
            poll_timer = train_tab.build(
                start_training=bench.start_training,
                resume_training=bench.resume_training,
                run_settings=bench.run_settings,
                stop_training=bench.stop_training,
                training_status=bench.training.status,
                list_data=bench.list_training_data,
                save_upload=bench.save_training_upload,
                list_runs=bench.list_runs,
                list_unconditional_models=lambda: bench.list_models("unconditional"),
                shown=bench.shown,
                unconditional_model=unconditional_fields["model"],
                list_txt2img_models=lambda: bench.list_models("txt2img"),
                base_resolution=bench.training_base_size,
                check_training=bench.check_training,
                tab=train_page,
            )
        targets = {"txt2img": txt2img_fields, "unconditional": unconditional_fields}  # where past settings go back
        with gr.Tab("History", id="history") as history:
            history_tab.build(
                history_page=bench.history_page,
                history_image=bench.history_image,
                history_thumbnail=bench.history_thumbnail,
                read_png_info=bench.read_png_info,
                trash_image=bench.trash_image,
                export_run=bench.export_run,
                iter_replay=bench.iter_replay,
                list_models=lambda: bench.list_models("txt2img") + bench.list_models("unconditional"),
                targets=targets,
                shown=bench.shown,
                tab=history,
            )
        with gr.Tab("PNG Info", id="pnginfo") as pnginfo_page:
            pnginfo_tab.build(read_png_info=bench.read_png_info, targets=targets)
        train_tab.stop_polling_elsewhere(poll_timer, [txt2img_page, unconditional_page, noise_page, compare_page,
                                                      history, pnginfo_page])
        # -- more tabs are added here --
        if not args.no_a1111_api:  # A1111's /sdapi/v1 routes: their runs join the page's device queue
            api = a1111_api.build(
                iter_txt2img=bench.iter_txt2img,
                iter_img2img=bench.iter_img2img,
                check_model=bench.check_model,
                check_lora=bench.check_lora,
                list_models=lambda: bench.list_models("txt2img"),
                list_loras=bench.list_loras,
                default_model=bench.default_model("txt2img"),
                samplers=bench.schedulers("txt2img"),
                interrupt=bench.interrupt,
                shown=bench.shown,
                auth=tuple(args.auth.split(":", 1)) if args.auth else None,
            )
            demo.extra_routes = api.routes  # mounted by launch(), before Gradio's own
    name_file_inputs(demo, bench.check_image)
    cache_images_atomically()
    demo.queue(default_concurrency_limit=1, max_size=64)
    return demo, bench


def bounded_cache(demo, keep: int):
    """The server's lifespan: every ``CACHE_PRUNE_EVERY`` seconds, the cache keeps the ``keep`` newest files of the
    page's outputs (``ui.common.prune_cache``), so it does not grow with the requests between Gradio's hourly
    cleanings."""
    from ui.common import prune_cache

    async def prune_forever():
        while True:
            await asyncio.sleep(CACHE_PRUNE_EVERY)
            try:
                await asyncio.to_thread(prune_cache, demo, keep)
            except Exception:  # a full disk, a folder gone: the next round tries again
                log.exception("pruning the page's cache failed")

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        task = asyncio.create_task(prune_forever())
        try:
            yield
        finally:
            task.cancel()

    return lifespan


def launch(demo, args: argparse.Namespace, **kwargs):
    from starlette.middleware import Middleware

    from ui.cancels import EarlyCancels
    from ui.a1111_api import PREFIX as A1111_PREFIX
    from ui.gradio_compat import RequireLogin

    auth = tuple(args.auth.split(":", 1)) if args.auth else None
    return demo.launch(
        server_name=args.host, server_port=args.port, share=args.share, auth=auth,
        css=CSS, js=JS, footer_links=["api"], show_error=True,
        app_kwargs={"middleware": [Middleware(RequireLogin, own_login=(A1111_PREFIX + "/",)), Middleware(EarlyCancels)],
                    "lifespan": bounded_cache(demo, args.cache_files),
                    "routes": list(getattr(demo, "extra_routes", []))},
        **kwargs,
    )


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # gradio's own start-up checks, one line each
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    args = parse_args(argv)
    demo, _ = build_app(args)
    # Everything imported and built so far lives as long as the server: keep it out of the collector's
    # full passes, which otherwise stall every request for a tenth of a second or more now and then.
    gc.freeze()
    launch(demo, args)


if __name__ == "__main__":
    main()
