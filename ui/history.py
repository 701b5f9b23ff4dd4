"""The History tab: the outputs dir's images, newest first, a page at a time, filtered by tab and model and searched
by prompt. One picked shows large with its parameters; its settings (or only its seed) go back to the tab that made
it; its run can be exported as a replay file and replayed here; deleting moves it to the trash inside the outputs
dir. Below, a run file (or a PNG this workbench saved) is replayed: identical, within N/255, or not at all."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Callable

import gradio as gr

from engine.errors import WorkbenchError
from engine.events import Done, Started, Step
from engine.records.history import HistoryQuery
from engine.records.replay import IDENTICAL, WITHIN, ReplayReport
from ui.common import (DEVICE_QUEUE, SELECT_KIND_TAB_JS, TAB_LABELS, friendly_errors, message_html, page_error,
                       progress_html, settings_updates, stream_updates, whole, write_run_file)

KIND_CHOICES = [("Every tab", ""), ("Text to image", "txt2img"), ("Unconditional", "unconditional")]
EVERY_MODEL = ("Every model", "")
CAPTION_CHARS = 40  # of the prompt, under a thumbnail


def build(
    *,
    history_page: Callable,  # HistoryQuery -> HistoryPage
    history_image: Callable[[str], Path],  # history path -> its file (InputError if not one)
    history_thumbnail: Callable[[str], Path],  # history path -> what the grid shows
    read_png_info: Callable,  # a PNG's file -> PngInfo
    trash_image: Callable[[str], str],  # history path -> its path in the trash
    export_run: Callable[[str], dict],  # history path -> its replay bundle
    iter_replay: Callable,  # (run file, cancel=) -> events, then a ReplayReport
    list_models: Callable[[], list[str]],
    targets: dict[str, dict],  # tab kind -> {request field: widget}: where "use these settings" writes
    shown: Callable[[str], str] = lambda text: text,  # a path or message as people read it: the folders relative
    tab: gr.Tab | None = None,  # this tab: opening it shows the page anew
) -> None:
    """Lay out the tab inside the current ``gr.Blocks`` and wire its events."""
    # 1. Filters and paging.
    with gr.Row():
        kind_box = gr.Dropdown(KIND_CHOICES, value="", label="Tab", scale=1, elem_id="history-kind")
        model_box = gr.Dropdown([EVERY_MODEL, *((m, m) for m in list_models())], value="", label="Model", scale=2,
                            allow_custom_value=True, elem_id="history-model")
        search_box = gr.Textbox(value="", label="Search prompts (Enter)", placeholder="words the prompt holds", scale=3,
                            elem_id="history-search")
        refresh = gr.Button("↻ Refresh", scale=0, min_width=90, elem_id="history-refresh")
    with gr.Row():
        newer = gr.Button("◀ Newer", size="sm", scale=0, min_width=90, elem_id="history-newer")
        older = gr.Button("Older ▶", size="sm", scale=0, min_width=90, elem_id="history-older")
        page_box = gr.Number(value=1, label="Page (Enter)", minimum=1, scale=0, min_width=110,
                             elem_id="history-page")
        counts = gr.Markdown(elem_id="history-counts")
    # 2. The page of thumbnails, and the picked image with what can be done with it.
    with gr.Row():
        with gr.Column(scale=3):
            gallery = gr.Gallery(label="Outputs, newest first (click one)", columns=8, height=640,
                                 allow_preview=False, object_fit="contain", elem_id="history-gallery",
                                 elem_classes="wb-pixels")
        with gr.Column(scale=2):
            picked = gr.Image(label="Picked image", type="filepath", format="png", interactive=False, height=300,
                              elem_id="history-image", elem_classes="wb-pixels")
            status = gr.HTML(elem_id="history-status")
            with gr.Row():
                use = gr.Button("Use these settings", variant="primary", interactive=False, elem_id="history-use")
                use_seed = gr.Button("Use this seed", interactive=False, elem_id="history-use-seed")
            with gr.Row():
                export = gr.DownloadButton("Export run", visible=False, elem_id="history-export")
                replay = gr.Button("Replay", interactive=False, elem_id="history-replay")
                delete = gr.Button("Delete (to trash)", variant="stop", interactive=False, elem_id="history-delete")
            info = gr.JSON(label="Parameters", elem_id="history-info")
            # 3. Replays: of the picked image, or of a run file dropped below; the verdict here.
            replay_progress = gr.HTML(elem_id="replay-progress")
            with gr.Row():
                replay_image = gr.Image(label="Replayed image", type="filepath", format="png", interactive=False,
                                        height=200, elem_id="replay-image", elem_classes="wb-pixels")
                report = gr.JSON(label="Replay verdict", elem_id="replay-report")
            with gr.Accordion("Replay a run file", open=False, elem_id="replay-panel"):
                source = gr.File(label="A run file (from Export run), or a PNG this workbench saved",
                                 file_types=[".json", ".png"], elem_id="replay-file")
                replay_file = gr.Button("Replay this file", variant="primary", elem_id="replay-run")
    paths = gr.State([])  # the shown page's history paths, in the grid's order
    selected = gr.State(None)  # the picked image: {"path", "kind", "settings"}
    picked_kind = gr.Textbox(visible=False, elem_id="history-picked-kind")  # read by the tab switch in the browser
    listing = [gallery, paths, page_box, counts]
    detail = [selected, picked_kind, picked, status, info, use, use_seed, export, replay, delete]

    def query(kind_value, model_value, search_value, page_value) -> HistoryQuery:
        return HistoryQuery(kind=kind_value or "", model=model_value or "", search=search_value or "",
                            page=whole(page_value) or 1)

    def show_page(kind_value, model_value, search_value, page_value):
        """The page's thumbnails (captioned), their paths, the page shown and the counts."""
        try:
            result = history_page(query(kind_value, model_value, search_value, page_value))
        except WorkbenchError as exc:
            return gr.skip(), gr.skip(), gr.skip(), html.escape(str(exc))
        items = []
        for entry in result.entries:
            try:
                items.append((str(history_thumbnail(entry.path)), _caption(entry)))
            except (WorkbenchError, OSError):  # deleted since the listing
                continue
        filtered = f"{result.total} of {result.scanned} images match" if result.total != result.scanned else \
            f"{result.total} images"
        return items, [e.path for e in result.entries], result.page, \
            f"Page {result.page} of {result.pages} · {filtered}"

    @friendly_errors
    def history_api(kind="", model="", search="", page=1) -> dict:
        """/history: a page of the outputs dir's images, newest first, as JSON."""
        result = history_page(query(kind, model, search, page))
        return {"page": result.page, "pages": result.pages, "total": result.total, "scanned": result.scanned,
                "images": [{"file": e.path, "kind": e.kind, "prompt": e.prompt, "model": e.model, "seed": e.seed,
                            "modified": e.modified} for e in result.entries]}

    @friendly_errors
    def export_api(image: str) -> str:
        """/export_run: the replay file of a saved image (its path as /history lists it)."""
        return write_run_file(export_run(image), image)

    def show_image(path: str | None, note: str = "") -> dict:
        """The detail column for history image ``path``: large, its parameters, what can be done with it."""
        off = gr.update(interactive=False)
        if not path:
            return {selected: None, picked_kind: "", picked: None, status: note, info: None, use: off,
                    use_seed: off, export: gr.update(visible=False, value=None), replay: off, delete: off}
        try:
            file = history_image(path)
        except WorkbenchError as exc:
            return {**show_image(None), status: message_html(str(exc))}
        top = path.split("/", 1)[0]
        try:
            found = read_png_info(file)
        except WorkbenchError as exc:  # listed, but holds no parameters this workbench reads
            return {**show_image(None), selected: {"path": path, "kind": "", "settings": {}}, picked: str(file),
                    status: message_html(str(exc)), delete: gr.update(interactive=True)}
        kind_of = found.kind if found.record is not None or top not in TAB_LABELS else top
        shown = {**found.settings, "source": found.source, "file": path}
        if found.record is not None:
            shown["run"] = {k: found.record[k] for k in ("model", "environment", "noise_sha256", "images_sha256")
                            if k in found.record}
        if found.unused:
            shown["not used"] = list(found.unused)
        try:
            bundle = export_run(path)
            export_value = gr.update(visible=True, value=write_run_file(bundle, path))
        except WorkbenchError:
            bundle, export_value = None, gr.update(visible=False, value=None)
        text = note or (f"From {TAB_LABELS.get(kind_of, kind_of)} · {found.source}"
                        + ("" if bundle else " · no run record: it cannot be replayed"))
        return {selected: {"path": path, "kind": kind_of, "settings": found.settings}, picked_kind: kind_of,
                picked: str(file), status: message_html(text, "waiting"), info: shown,
                use: gr.update(interactive=True), use_seed: gr.update(interactive="seed" in found.settings),
                export: export_value, replay: gr.update(interactive=bundle is not None),
                delete: gr.update(interactive=True)}

    def pick(page_paths, evt: gr.SelectData):
        index = evt.index if isinstance(evt.index, int) else None
        return show_image(page_paths[index] if index is not None and index < len(page_paths) else None)

    def use_settings(chosen, seed_only: bool = False):
        if not chosen or not chosen["settings"]:
            return {}
        return settings_updates(targets, chosen["kind"], chosen["settings"], seed_only=seed_only)

    def delete_image(chosen, kind_value, model_value, search_value, page_value, shown_paths=()):
        """Move the picked image to the trash, say where it went, and show the page again with the image that took
        its place picked (the gallery highlights it: its details are shown beside it)."""
        if not chosen:
            return {}
        try:
            moved = trash_image(chosen["path"])
        except WorkbenchError as exc:
            return {status: message_html(str(exc))}
        gallery_value, page_paths, page_shown, counts_text = show_page(kind_value, model_value, search_value,
                                                                      page_value)
        place = list(shown_paths).index(chosen["path"]) if chosen["path"] in (shown_paths or ()) else 0
        after = page_paths[min(place, len(page_paths) - 1)] if isinstance(page_paths, list) and page_paths else None
        moved_note = message_html(f"Moved {chosen['path']} to {moved} (inside the outputs dir)", "stopped")
        return {**show_image(after), status: moved_note,
                gallery: gr.update(value=gallery_value, selected_index=page_paths.index(after)) if after
                else gallery_value, paths: page_paths, page_box: page_shown, counts: counts_text}

    def renderer() -> Callable:
        """A replay's render: the replay panel's (progress, verdict, image) for one event; the verdict's update
        carries the replayed image again (an API client keeps only the last)."""
        replayed = {"image": None}

        def render(event) -> tuple | None:
            if isinstance(event, Started):
                return (progress_html(0, event.total, note=f"replaying seed {event.info['seed']}"), None, None)
            if isinstance(event, Step):
                return (progress_html(event.step, event.total, event.timestep, event.elapsed, event.eta), gr.skip(),
                        gr.skip())
            if isinstance(event, Done):
                replayed["image"] = event.paths[0] if event.paths else None
                return (gr.skip(), gr.skip(), replayed["image"])
            if isinstance(event, ReplayReport):
                kind_of = "waiting" if event.outcome in (IDENTICAL, WITHIN) else "error"
                verdict = {**event.as_dict(), "message": shown(event.message),
                           "paths": [shown(p) for p in event.paths]}  # the replayed image itself is sent as it is
                saved = (f" · the replay is saved as {shown(replayed['image'])}, a new image in History"
                         if replayed["image"] else "")
                return (message_html(verdict["message"] + saved, kind_of), verdict, replayed["image"])
            return None
        return render

    @friendly_errors
    async def replay_api(run_file):
        """/replay: a run file (or a PNG this workbench saved) run again; the verdict as JSON, the image."""
        if not run_file:
            raise gr.Error("no run file given: send the JSON that Export run wrote, or a PNG this workbench saved")
        async for update in stream_updates(lambda cancel: iter_replay(run_file, cancel=cancel), renderer()):
            yield update

    async def replay_page(run_file_path):
        """The page: an error is said in the progress line."""
        try:
            if not run_file_path:
                yield (message_html("Drop a run file (from Export run) or a PNG this workbench saved first"),
                       gr.skip(), gr.skip())
                return
            async for update in stream_updates(lambda cancel: iter_replay(run_file_path, cancel=cancel),
                                               renderer()):
                yield update
        except Exception as exc:
            yield (message_html(page_error(exc)), gr.skip(), gr.skip())

    async def replay_picked(chosen):
        if not chosen:
            return
        try:
            file = str(history_image(chosen["path"]))
        except WorkbenchError as exc:
            yield (message_html(str(exc)), gr.skip(), gr.skip())
            return
        async for update in replay_page(file):
            yield update

    filters = [kind_box, model_box, search_box, page_box]
    replay_outputs = [replay_progress, report, replay_image]
    gr.on([refresh.click, kind_box.input, model_box.input, search_box.submit], lambda *v: show_page(*v[:3], 1), filters,
          listing, api_visibility="private")
    page_box.submit(show_page, filters, listing, api_visibility="private")
    newer.click(lambda *v: show_page(*v[:3], max(1, (whole(v[3]) or 1) - 1)), filters, listing,
                api_visibility="private")
    older.click(lambda *v: show_page(*v[:3], (whole(v[3]) or 1) + 1), filters, listing, api_visibility="private")
    refresh.click(lambda: gr.update(choices=[EVERY_MODEL, *((m, m) for m in list_models())]), None, model_box,
                  api_visibility="private")
    gallery.select(pick, paths, detail, api_visibility="private")
    every_field = [w for fields in targets.values() for w in fields.values()]
    use.click(use_settings, selected, every_field, api_visibility="private") \
        .then(None, picked_kind, None, js=SELECT_KIND_TAB_JS)
    use_seed.click(lambda chosen: use_settings(chosen, seed_only=True), selected, every_field,
                   api_visibility="private").then(None, picked_kind, None, js=SELECT_KIND_TAB_JS)
    delete.click(delete_image, [selected, *filters, paths], detail + listing, api_visibility="private")
    replay.click(replay_picked, selected, replay_outputs, api_visibility="private", concurrency_id=DEVICE_QUEUE,
                 concurrency_limit=1)
    replay_file.click(replay_page, source, replay_outputs, api_visibility="private", concurrency_id=DEVICE_QUEUE,
                      concurrency_limit=1)
    # The API: hidden triggers, so the page's own events stay private.
    api_history = gr.Button(visible=False)
    api_history.click(history_api, filters, gr.JSON(visible=False), api_name="history")
    api_export = gr.Button(visible=False)
    api_export.click(export_api, gr.Textbox(visible=False), gr.File(visible=False), api_name="export_run")
    api_replay = gr.Button(visible=False)
    api_replay.click(replay_api, source, replay_outputs, api_name="replay", concurrency_id=DEVICE_QUEUE,
                     concurrency_limit=1)
    if tab is not None:  # the listing is read when the tab is opened: new images since are there
        tab.select(lambda *v: show_page(*v), filters, listing, api_visibility="private")


def _caption(entry) -> str:
    """Under a thumbnail: the seed and the prompt's start (the model where there is no prompt)."""
    text = entry.prompt or entry.model or Path(entry.path).name
    text = text if len(text) <= CAPTION_CHARS else text[:CAPTION_CHARS - 1] + "…"
    return f"{entry.seed} · {text}" if entry.seed is not None else text
