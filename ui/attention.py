"""Where each word lands, in the Text to image tab: the prompt's tokens as chips under it (a click picks the
token, or the word, the attention view shows), the view's frames, and the ``/attention`` endpoint."""

from __future__ import annotations

import html
from typing import Callable

import gradio as gr
import numpy as np
from PIL import Image

from engine.errors import InputError, WorkbenchError
from engine.events import Done, Started, Step
from engine.sampling.attention import START_END, AttentionDone, PromptTokens
from engine.sampling.views import attention_overlay, run_attention, view_array
from ui.common import DEVICE_QUEUE, friendly_errors, stream_updates

PICK_LABEL = "Attention view shows: click a chip, or type token indices (2, 3) or a word of the prompt"
# A chip click writes its token indices into the pick box, as typing them would.
CHIPS_JS = """
element.addEventListener('click', (event) => {
  const chip = event.target.closest('[data-pick]');
  if (!chip) return;
  const box = document.querySelector('#t2i-attn-pick textarea, #t2i-attn-pick input');
  box.value = chip.dataset.pick;
  box.dispatchEvent(new Event('input', {bubbles: true}));  // the box's own change event follows its new value
});
"""
CHIPS_CSS = """
.wb-chips { display: flex; flex-wrap: wrap; gap: 4px; align-items: center; font-size: 0.85em; }
.wb-chip { border: 1px solid var(--border-color-primary); border-radius: 10px; padding: 1px 7px;
  cursor: pointer; user-select: none; }
.wb-chip small { opacity: 0.6; margin-right: 3px; }
.wb-chip-special { opacity: 0.6; font-style: italic; }
.wb-chip-picked { background: #f58518; color: #000; border-color: #f58518; }
.wb-chip-cut { text-decoration: line-through; opacity: 0.5; cursor: default; }
.wb-error { color: var(--error-text-color, #c00); }
"""


def chips_html(tokens: PromptTokens | None, picked: tuple[int, ...] = (), error: str = "") -> str:
    """One chip per token with its index (a word's chips pick the whole word), the count against the model's
    limit, the tokens past it struck out; ``error``: what is wrong with the pick (or the model), said beside it."""
    parts = []
    if tokens is not None:
        word_of = {i: group for group in tokens.words for i in group}
        for i, token in enumerate(tokens.tokens):
            classes = ["wb-chip"] + (["wb-chip-special"] if token in START_END else []) \
                + (["wb-chip-picked"] if i in picked else [])
            pick = ",".join(str(k) for k in word_of[i])
            text = html.escape(token.replace("</w>", ""))
            parts.append(f'<span class="{" ".join(classes)}" data-pick="{pick}" data-index="{i}" '
                         f'title="token {i}"><small>{i}</small>{text}</span>')
        for token in tokens.cut:
            parts.append(f'<span class="wb-chip wb-chip-cut" title="past the limit: cut">'
                         f'{html.escape(token.replace("</w>", ""))}</span>')
        count = len(tokens.tokens) + len(tokens.cut)
        cut = f", {len(tokens.cut)} cut" if tokens.cut else ""
        parts.append(f'<span class="wb-count">{count} / {tokens.limit} tokens{cut}</span>')
    if error:
        parts.append(f'<span class="wb-error">{html.escape(error)}</span>')
    return f'<div class="wb-chips">{"".join(parts)}</div>'


def build_chips(model: gr.components.Component, prompt: gr.components.Component, *,
                prompt_tokens: Callable[[str, str], PromptTokens], default_model: str, default_prompt: str):
    """The chips under the prompt and the pick box, laid out here and kept up to date; returns (chips, pick)."""
    chips = gr.HTML(show(prompt_tokens, default_model, default_prompt, ""), elem_id="t2i-chips",
                    js_on_load=CHIPS_JS, css_template=CHIPS_CSS, padding=False)
    pick = gr.Textbox(value="", label=PICK_LABEL, max_lines=1, elem_id="t2i-attn-pick")
    gr.on([prompt.change, model.change, pick.change], lambda m, p, k: show(prompt_tokens, m or default_model, p, k),
          [model, prompt, pick], chips, queue=False, show_progress="hidden", api_visibility="private")
    return chips, pick


def show(prompt_tokens: Callable, model: str, prompt: str, pick: str) -> str:
    """The chips of ``prompt`` on ``model``, ``pick``'s highlighted, or what is wrong with either."""
    try:
        tokens = prompt_tokens(model, prompt or "")
    except WorkbenchError as exc:
        return chips_html(None, error=str(exc))
    try:
        return chips_html(tokens, tokens.pick(pick))
    except InputError as exc:
        return chips_html(tokens, error=str(exc))


def picked(tokens: PromptTokens | None, pick: str) -> tuple[int, ...] | None:
    """The token indices a page run's attention view shows (None: the view's default); a bad pick shows the
    default, and the chips say what is wrong with it."""
    if tokens is None:
        return None
    try:
        return tokens.pick(pick)
    except InputError:
        return None


def final_frame(steps, name: str, final, pick) -> np.ndarray | None:
    """View ``name`` at the end of a run: the attention view is the run's map (the mean of its steps') over the
    final image; the others, the last step's."""
    if name != "attention":
        return view_array(steps[-1], name, pick)
    maps = run_attention(steps)
    if maps is None or final is None:
        return None
    if isinstance(final, str):  # the saved PNG
        with Image.open(final) as image:
            return attention_overlay(maps, pick, np.asarray(image.convert("RGB")))
    return attention_overlay(maps, pick, np.asarray(final.convert("RGB")))


def add_api(*, iter_attention: Callable, make_request: Callable, inputs: list, shown: Callable[[str], str]) -> None:
    """The public ``/attention`` endpoint: ``/txt2img``'s request, the final image, a gallery of every token's run
    map over it, and ``{"tokens", "maps_file"}`` with the rest of the run's parameters."""
    with gr.Column(visible=False):
        image = gr.Image(format="png", type="pil", interactive=False)
        gallery = gr.Gallery(format="png")
        info = gr.JSON()
        trigger = gr.Button()

    @friendly_errors
    async def attention(model, prompt, negative_prompt, steps, guidance_scale, scheduler, seed, width, height):
        request = make_request(model, prompt, negative_prompt, steps, guidance_scale, scheduler, seed, width, height)
        done = {}

        def render(event):  # previews stream as /txt2img's; the maps come after the final image
            if isinstance(event, Step):
                return view_array(event, "x0"), gr.skip(), gr.skip()
            if isinstance(event, Started):
                return gr.skip(), gr.skip(), event.info
            if isinstance(event, Done):
                done["info"] = dict(event.info, file=shown(event.paths[0]) if event.paths else None)
                return event.images[0], gr.skip(), gr.skip()
            if isinstance(event, AttentionDone):
                return (event.image, event.gallery(), {**done["info"], "tokens": list(event.tokens.tokens),
                                                       "maps_file": shown(event.maps_file)})
            return None

        async for update in stream_updates(lambda cancel: iter_attention(request, cancel=cancel), render):
            yield update

    trigger.click(attention, inputs=inputs, outputs=[image, gallery, info], api_name="attention", preprocess=False,
                  concurrency_id=DEVICE_QUEUE, concurrency_limit=1)


def pick_events(pick) -> list:
    """The events of the pick box that redraw the frame shown (none where the tab has no chips)."""
    return [pick.change] if isinstance(pick, gr.Textbox) else []
