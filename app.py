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
.wb-caption { font-family: ui-monospace, monospace; font-size: 0.8em; text-align: center; }
"""
# Ctrl+Enter (Cmd+Enter) runs the visible tab's Generate; the header's button switches dark mode.
JS = """
() => {
  document.addEventListener('keydown', (e) => {
    if (e.key !== 'Enter' || !(e.ctrlKey || e.metaKey)) return;
    const visible = [...document.querySelectorAll('.wb-generate')].find(b => b.offsetParent !== null);
    if (visible) { e.preventDefault(); visible.click(); }
  });
}
"""
CACHE_CLEANING = (600, 3600)  # (every N seconds, delete cached files older than M seconds)
CACHE_FILES = 500  # files the page's outputs keep in the cache, newest first: a streamed run leaves about 15
CACHE_PRUNE_EVERY = 5.0  # seconds between the cache's count checks (--cache-files)
DARK_MODE_JS = "() => { document.body.classList.toggle('dark'); }"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Diffusion Workbench: watch diffusion models denoise, step by step.")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--models-dir", type=Path, default=Path("models"), help="your models and training checkpoints (default ./models)")
    p.add_argument("--data-dir", type=Path, default=Path("data"), help="image folders for training (default ./data)")
    p.add_argument("--outputs-dir", type=Path, default=Path("outputs"), help="generated PNGs (default ./outputs)")
    p.add_argument("--device", choices=DEVICE_CHOICES, default="auto", help="auto = cuda, then mps, then cpu")
    p.add_argument("--auth", metavar="USER:PASSWORD", help="ask for this user name and password")
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
    args = p.parse_args(argv)
    if args.auth is not None and ":" not in args.auth:
        p.error("--auth takes user:password")
    return args


def build_app(args: argparse.Namespace):
    """The engine and the page; nothing is launched."""
    import gradio as gr

    from engine.workbench import Folders, UploadLimits, Workbench
    from ui import compare as compare_tab, img2img as img2img_tab, noise as noise_tab, train as train_tab
    from ui import txt2img as txt2img_tab, unconditional as unconditional_tab
    from ui import history as history_tab, pnginfo as pnginfo_tab
    from ui.common import cache_images_atomically, name_file_inputs

    bench = Workbench(Folders(args.models_dir, args.data_dir, args.outputs_dir), device=args.device,
                      torch_threads=args.torch_threads,
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
            )
        with gr.Tab("Unconditional", id="unconditional") as unconditional_page:
            unconditional_fields = unconditional_tab.build(
                iter_unconditional=bench.iter_unconditional,
                final_image=bench.final_image,
                default_steps=bench.default_steps,
                estimate=bench.estimate_unconditional,
                list_models=lambda: bench.list_models("unconditional"),
                default_model=bench.default_model("unconditional"),
                schedulers=list(bench.schedulers("unconditional")),
                shown=bench.shown,
                export_run=bench.export_run,
            )
        with gr.Tab("Noise", id="noise") as noise_page:
            noise = noise_tab.build(
                add_noise=bench.add_noise,
                schedule_arrays=bench.schedule_arrays,
                visited_timesteps=bench.visited_timesteps,
                schedule_of_model=bench.schedule_of_model,
                list_models=bench.list_schedule_models,
                schedulers=list(bench.schedulers("txt2img")),
                schedule_facts=bench.schedule_facts,
            )
            img2img_tab.build(
                noise=noise,
                iter_img2img=bench.iter_img2img,
                iter_strength_strip=bench.iter_strength_strip,
                check_img2img=bench.check_img2img,
                img2img_start=bench.img2img_start,
                model_kind=bench.model_kind,
                sample_image=bench.sample_image,
                list_models=lambda: bench.list_models("txt2img") + bench.list_models("unconditional"),
                schedule_models=bench.list_schedule_models,
                default_model=bench.default_model("txt2img"),
                schedulers=bench.schedulers,
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
    name_file_inputs(demo)
    cache_images_atomically()
    demo.queue(default_concurrency_limit=1, max_size=64)
    return demo, bench


class RequireLogin:
    """With --auth, routes Gradio leaves open answer 401 until the caller has logged in. Gradio 6.31's
    ``POST /gradio_api/cancel`` checks no login: anyone with a session hash and an event id could stop
    another user's run."""

    OPEN_ROUTES = ("/gradio_api/cancel",)

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        server = scope.get("app")
        if (scope["type"] == "http" and scope["path"].rstrip("/") in self.OPEN_ROUTES
                and getattr(server, "auth", None) is not None and not _logged_in(scope, server)):
            await send({"type": "http.response.start", "status": 401,
                        "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": b'{"detail":"Not authenticated"}'})
            return
        await self.app(scope, receive, send)


def _logged_in(scope, server) -> bool:
    from http.cookies import SimpleCookie

    cookies = SimpleCookie()
    for name, value in scope.get("headers", []):
        if name == b"cookie":
            cookies.load(value.decode("latin-1"))
    for name in (f"access-token-{server.cookie_id}", f"access-token-unsecure-{server.cookie_id}"):
        if name in cookies and server.tokens.get(cookies[name].value) is not None:
            return True
    return False


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

    auth = tuple(args.auth.split(":", 1)) if args.auth else None
    return demo.launch(
        server_name=args.host, server_port=args.port, share=args.share, auth=auth,
        css=CSS, js=JS, footer_links=["api"], show_error=True,
        app_kwargs={"middleware": [Middleware(RequireLogin)], "lifespan": bounded_cache(demo, args.cache_files)},
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
