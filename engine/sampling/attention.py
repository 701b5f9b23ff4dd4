"""Where each word of the prompt lands: per-token cross-attention maps, step by step (DAAM, Tang et al., ACL 2023).

:class:`CrossAttentionCollector` wraps the processor of every cross-attention layer (``attn2``) of a UNet, only
while a run asks for maps (:func:`collecting` puts the model's own processors back after). Each wrapped layer
computes its output with the processor it replaces (so the images are the ones the run makes without it), then
the attention probabilities softmax(QK^T / sqrt(d)) of the conditional half of the CFG batch (the prompt, not the
negative), every head. Each (layer, head) map is reshaped to its layer's grid, upsampled to the latent's size with
bicubic interpolation (``align_corners=False``), clamped at 0; a step's map is the mean over all (layer, head)
maps, a run's the mean of its steps' maps. Maps are kept for the prompt's own tokens (start and end included, no
padding), in the tokenizer's order.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from engine.errors import InputError
from engine.events import Done
from engine.models.registry import default_model

START_END = ("<|startoftext|>", "<|endoftext|>")


@dataclass(frozen=True)
class PromptTokens:
    """A prompt as the tokenizer splits it: its tokens (start and end included, no padding), the model's limit,
    and the words the limit cut off."""

    tokens: tuple[str, ...]
    limit: int  # the tokenizer's model_max_length (77 for SD): start and end count against it
    cut: tuple[str, ...] = ()  # the tokens past the limit, which the model never sees

    @property
    def words(self) -> tuple[tuple[int, ...], ...]:
        """The token indices of each word, in order: BPE pieces up to the one that ends a word (``</w>``) go
        together; the start and end tokens are words of their own."""
        groups, current = [], []
        for i, token in enumerate(self.tokens):
            if token in START_END:
                if current:
                    groups.append(tuple(current))
                    current = []
                groups.append((i,))
                continue
            current.append(i)
            if token.endswith("</w>"):
                groups.append(tuple(current))
                current = []
        if current:
            groups.append(tuple(current))
        return tuple(groups)

    def word_text(self, group: tuple[int, ...]) -> str:
        return "".join(self.tokens[i] for i in group).replace("</w>", "")

    def default_pick(self) -> tuple[int, ...]:
        """The last word of the prompt (its tokens), or the end token for an empty prompt."""
        inner = [g for g in self.words if self.tokens[g[0]] not in START_END]
        return inner[-1] if inner else (len(self.tokens) - 1,)

    def pick(self, text: str) -> tuple[int, ...]:
        """The token indices ``text`` names: indices ("4", "2,3" or "2 3"), or a word of the prompt (its tokens
        summed). An :class:`InputError` for an index or word not in the prompt."""
        text = (text or "").strip()
        if not text:
            return self.default_pick()
        parts = text.replace(",", " ").split()
        last = len(self.tokens) - 1
        if all(p.lstrip("-").isdigit() for p in parts):
            indices = tuple(int(p) for p in parts)
            wrong = [i for i in indices if not 0 <= i <= last]
            if wrong:
                raise InputError(f"token {wrong[0]} is not in the prompt: its tokens are 0 to {last}", field="tokens")
            return tuple(dict.fromkeys(indices))
        for group in self.words:
            if self.word_text(group).lower() == text.lower():
                return group
        words = ", ".join(repr(self.word_text(g)) for g in self.words if self.tokens[g[0]] not in START_END)
        raise InputError(f"{text!r} is not a word of the prompt; its words are {words or 'none'} "
                         f"(or give token indices, 0 to {last})", field="tokens")


def prompt_tokens(tokenizer, prompt: str) -> PromptTokens:
    """``prompt`` as ``tokenizer`` splits it for the text encoder (truncated at its ``model_max_length``)."""
    limit = tokenizer.model_max_length
    ids = tokenizer(prompt, truncation=False, verbose=False).input_ids  # every token, to say what the limit cuts
    tokens = tokenizer.convert_ids_to_tokens(ids)
    if len(tokens) <= limit:
        return PromptTokens(tuple(tokens), limit)
    kept = tuple(tokens[:limit - 1]) + (tokens[-1],)  # as truncation does: the end token stays
    return PromptTokens(kept, limit, tuple(tokens[limit - 1:-1]))


def token_count(tokenizer, prompt: str) -> int:
    """How many positions the prompt fills in the text encoder's input (start and end included)."""
    return len(tokenizer(prompt, truncation=True, max_length=tokenizer.model_max_length).input_ids)


def layer_grid(positions: int, latent_hw: tuple[int, int]) -> tuple[int, int]:
    """The (h, w) grid of a layer holding ``positions`` image positions, in a UNet whose latent is ``latent_hw``:
    each downsampling halves the sides, rounding up (a stride-2 convolution with padding 1)."""
    h, w = latent_hw
    while h * w > positions and (h > 1 or w > 1):
        h, w = math.ceil(h / 2), math.ceil(w / 2)
    if h * w != positions:
        raise ValueError(f"no grid of {positions} positions under a {latent_hw} latent")
    return h, w


def attention_probs(attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor) -> torch.Tensor:
    """softmax(QK^T / sqrt(d)) of a diffusers ``Attention`` layer, as its classic ``AttnProcessor`` computes it
    (``get_attention_scores``: the layer's scale, upcasting and all): (B * heads, queries, keys)."""
    query = attn.head_to_batch_dim(attn.to_q(hidden_states))
    if attn.norm_cross:
        encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
    key = attn.head_to_batch_dim(attn.to_k(encoder_hidden_states))
    return attn.get_attention_scores(query, key, None)


class CrossAttentionCollector:
    """A run's maps: the wrapped layers add into the current step; :meth:`end_step` closes it."""

    def __init__(self, latent_hw: tuple[int, int], positions: int, *, guided: bool, clamp: bool = True):
        self.latent_hw = latent_hw  # (h, w) of the latent: every layer's map is upsampled to it
        self.positions = positions  # token positions kept: the prompt's own (start and end), or all of them
        self.guided = guided  # the UNet's batch is [uncond, text]: the maps come from its second half
        self.clamp = clamp  # False only to check that the maps sum to 1 over every position
        self._sum: torch.Tensor | None = None  # (positions, h, w), float32
        self._count = 0  # (layer, head) maps added this step

    def add(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor) -> None:
        """One cross-attention layer's call: its probabilities of the prompt's half, every head, added in."""
        if self.guided:
            half = hidden_states.shape[0] // 2
            hidden_states, encoder_hidden_states = hidden_states[half:], encoder_hidden_states[half:]
        probs = attention_probs(attn, hidden_states, encoder_hidden_states)  # (B * heads, hw, seq)
        probs = probs[..., :self.positions].float()
        h, w = layer_grid(probs.shape[1], self.latent_hw)
        maps = probs.transpose(1, 2).reshape(probs.shape[0], self.positions, h, w)  # (heads, positions, h, w)
        maps = F.interpolate(maps, size=self.latent_hw, mode="bicubic", align_corners=False)
        if self.clamp:
            maps = maps.clamp(min=0)
        total = maps.sum(dim=0)  # (positions, H, W)
        self._sum = total if self._sum is None else self._sum + total
        self._count += maps.shape[0]

    def end_step(self) -> torch.Tensor:
        """The step's map, (positions, H, W) float32: the mean over every (layer, head) map since the last call."""
        if self._sum is None:
            raise RuntimeError("no cross-attention layer ran this step")
        mean, self._sum, self._count = self._sum / self._count, None, 0
        return mean


class CollectingProcessor:
    """The processor of one ``attn2`` layer while maps are collected: the output is the replaced processor's,
    the probabilities go to the collector."""

    def __init__(self, inner, collector: CrossAttentionCollector):
        self.inner = inner
        self.collector = collector

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 *args, **kwargs):
        out = self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        if encoder_hidden_states is not None:
            self.collector.add(attn, hidden_states, encoder_hidden_states)
        return out


def is_cross_attention(name: str) -> bool:
    """Whether a processor name of ``unet.attn_processors`` is a cross-attention layer's (``...attn2.processor``)."""
    return name.endswith("attn2.processor")


@contextlib.contextmanager
def collecting(unet, collector: CrossAttentionCollector | None):
    """Inside: ``unet``'s cross-attention layers feed ``collector`` (None: nothing changes). After: the model's own
    processors, the same objects, back in place."""
    if collector is None:
        yield
        return
    own = dict(unet.attn_processors)
    if not any(is_cross_attention(name) for name in own):
        raise InputError("this model has no cross-attention layers (attn2): no word of a prompt has a map",
                         field="model")
    unet.set_attn_processor({name: CollectingProcessor(p, collector) if is_cross_attention(name) else p
                             for name, p in own.items()})
    try:
        yield
    finally:
        unet.set_attn_processor(own)


def run_maps(per_step: np.ndarray) -> np.ndarray:
    """A run's map of each token, (n_tokens, h, w): the mean of its steps' maps (steps, n_tokens, h, w)."""
    return per_step.mean(axis=0).astype(np.float32)


def save_maps(path: str | Path, tokens: PromptTokens, per_step: np.ndarray) -> Path:
    """The run's maps as an ``.npz``: ``maps`` (n_tokens, h, w) and ``per_step`` (steps, n_tokens, h, w), float32,
    in the order of ``tokens`` (saved too, as ``tokens``). Written beside, then renamed into place."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        np.savez(f, maps=run_maps(per_step), per_step=per_step.astype(np.float32),
                 tokens=np.array(tokens.tokens))
    tmp.replace(path)
    return path


@dataclass(frozen=True, eq=False)
class AttentionDone:
    """After a run's ``Done``: its prompt's tokens and their maps (run and per step), and the ``.npz`` saved."""

    tokens: PromptTokens
    image: object  # the run's final image (PIL)
    per_step: np.ndarray  # (steps, n_tokens, h, w) float32
    maps_file: str  # the .npz (see save_maps)

    @property
    def maps(self) -> np.ndarray:
        return run_maps(self.per_step)

    def gallery(self) -> list[tuple[np.ndarray, str]]:
        """Every token's run map blended over the final image, captioned "index: token"."""
        from engine.sampling.views import attention_overlay

        image, maps = np.asarray(self.image.convert("RGB")), self.maps
        return [(attention_overlay(maps, (i,), image), f"{i}: {token}") for i, token in enumerate(self.tokens.tokens)]


def model_prompt_tokens(registry, tokenizers, model: str, prompt: str) -> PromptTokens:
    """``prompt`` as text-to-image ``model``'s tokenizer splits it (``tokenizers(model)``, see
    :class:`engine.models.tokenizers.Tokenizers`); an :class:`InputError` for a model with no cross-attention."""
    model = model or default_model("txt2img")
    if registry.kind_of(model) != "txt2img":
        raise InputError(f"{model!r} is an unconditional model: it has no cross-attention and takes no prompt, so "
                         "no word has a map; pick a text-to-image model", field="model")
    return prompt_tokens(tokenizers(model), prompt or "")


def iter_attention(request, registry, tokenizers, run, outputs_dir: str | Path, cancel=None):
    """``request`` run as Text to image runs it (``run``: the device's queue, :class:`engine.worker.runs.Runs`), every
    step carrying the cross-attention maps of its prompt's tokens (:func:`model_prompt_tokens`); after ``Done``, an
    :class:`AttentionDone` with the maps and their ``.npz``, saved beside the image (``<image>.attention.npz``)."""
    from engine.sampling.views import step_attention

    request = replace(request, model=request.model or default_model("txt2img"))
    tokens = model_prompt_tokens(registry, tokenizers, request.model, request.prompt)
    done = None
    for event in run("txt2img", request, cancel, "streamed", views=("attention",)):  # as /txt2img's
        if isinstance(event, Done):
            done = event
        yield event
    per_step = np.stack([step_attention(s) for s in done.steps]).astype(np.float32)
    image = Path(done.paths[0]) if done.paths else \
        Path(outputs_dir) / f"attention-{done.info['seed']}.png"  # a run saved nowhere
    path = save_maps(image.with_suffix(".attention.npz"), tokens, per_step)
    yield AttentionDone(tokens=tokens, image=done.images[0], per_step=per_step, maps_file=str(path))
