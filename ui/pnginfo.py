"""The PNG Info tab: drop a PNG (this workbench's, A1111/Forge's, ComfyUI's) and see what it says about how it was
made, in this workbench's terms; what cannot be used is said plainly, and the rest goes to Text to image (or to
Unconditional, for this workbench's unconditional images) in one click."""

from __future__ import annotations

from typing import Callable

import gradio as gr

from engine.errors import WorkbenchError
from ui.common import SELECT_KIND_TAB_JS, TAB_LABELS, friendly_errors, message_html, settings_updates

SEND_LABEL = "Send to {}"


def build(
    *,
    read_png_info: Callable,  # a PNG's file -> PngInfo (InputError for no parameters, a damaged or other file)
    targets: dict[str, dict],  # tab kind -> {request field: widget}: where "send" writes
) -> None:
    """Lay out the tab inside the current ``gr.Blocks`` and wire its events."""
    with gr.Row():
        with gr.Column():
            dropped = gr.File(label="Drop a PNG: this workbench's, A1111/Forge's or ComfyUI's", file_types=[".png"],
                              elem_id="pnginfo-file")
            shown = gr.Image(label="The image", type="filepath", format="png", interactive=False, height=300,
                             elem_id="pnginfo-image", elem_classes="wb-pixels")
        with gr.Column():
            status = gr.HTML(elem_id="pnginfo-status")
            send = gr.Button(SEND_LABEL.format(TAB_LABELS["txt2img"]), variant="primary", interactive=False,
                             elem_id="pnginfo-send")
            unused = gr.Markdown(elem_id="pnginfo-unused")
            found = gr.JSON(label="Settings found (the request's field names)", elem_id="pnginfo-info")
            text = gr.JSON(label="The PNG's text, as found", elem_id="pnginfo-text")
    chosen = gr.State(None)  # {"kind", "settings"} of the PNG read
    kind = gr.Textbox(visible=False, elem_id="pnginfo-kind")  # read by the tab switch in the browser

    @friendly_errors
    def png_info_api(image) -> dict:
        """/png_info: what the PNG says, as JSON: source, the tab it belongs to, usable settings, what is not."""
        if not image:
            raise gr.Error("no PNG given")
        info = read_png_info(image)
        return {"source": info.source, "kind": info.kind, "settings": info.settings, "unused": list(info.unused),
                "text": info.text}

    def read(path):
        """The page: what was found, or why nothing was, beside the drop area."""
        off = gr.update(interactive=False, value=SEND_LABEL.format(TAB_LABELS["txt2img"]))
        if not path:
            return None, "", off, "", None, None, None, ""
        try:
            info = read_png_info(path)
        except WorkbenchError as exc:
            return None, message_html(str(exc)), off, "", None, None, None, ""
        notes = "\n".join(f"- {line}" for line in info.unused)
        return (path, message_html(f"{info.source}: {len(info.settings)} settings this workbench can use", "waiting"),
                gr.update(interactive=True, value=SEND_LABEL.format(TAB_LABELS[info.kind])),
                f"**Not used:**\n{notes}" if notes else "Everything found can be used.", info.settings, info.text,
                {"kind": info.kind, "settings": info.settings}, info.kind)

    def send_settings(picked):
        return settings_updates(targets, picked["kind"], picked["settings"]) if picked else {}

    dropped.change(read, dropped, [shown, status, send, unused, found, text, chosen, kind], api_visibility="private")
    every_field = [w for fields in targets.values() for w in fields.values()]
    send.click(send_settings, chosen, every_field, api_visibility="private") \
        .then(None, kind, None, js=SELECT_KIND_TAB_JS)
    api_trigger = gr.Button(visible=False)
    api_trigger.click(png_info_api, dropped, gr.JSON(visible=False), api_name="png_info")
