"""PNG info: the settings an image was made with, read from its text chunks, in this workbench's terms.

Three writers are understood:

- this workbench: the ``workbench`` chunk, a run's record as JSON (:mod:`engine.records.runrecord`), exact;
- A1111 and Forge: the ``parameters`` chunk, documented text (``modules/infotext_utils.py``)::

      a photo of a cat
      Negative prompt: blurry
      Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1234, Size: 512x512, Model: v1-5

  (older versions name the schedule in the sampler: ``Sampler: DPM++ 2M Karras``; values holding commas are
  quoted);
- ComfyUI: the ``prompt`` chunk (the API-format graph: ``{node id: {"class_type", "inputs"}}``, a link being
  ``[node id, output index]``) and the ``workflow`` chunk (the editor's graph: ``nodes`` with
  ``widgets_values`` and ``links`` ``[id, from node, from slot, to node, to slot, type]``), read for the
  first ``KSampler`` and what feeds it.

What a reader finds becomes request fields (``prompt``, ``negative_prompt``, ``num_inference_steps``,
``guidance_scale``, ``scheduler``, ``seed``, ``width``, ``height``, ``model``, ``batch_size``) and
sentences saying plainly what cannot be used here and why.

PNG text chunks are read from the file's chunk list by Pillow's chunk reader, with its limits on text (no pixels
decoded), so a listing of thousands of images reads only their first kilobytes.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, PngImagePlugin, UnidentifiedImageError

from engine.errors import InputError
from engine.images import check_pixels
from engine.records.outputs import RECORD_CHUNK
from engine.sampling.schedulers import SCHEDULERS, TIMESTEP_SPACINGS
from engine.sampling.txt2img import MAX_GUIDANCE, MAX_STEPS
from engine.validation import MAX_SIDE

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TEXT_CHUNKS = (b"tEXt", b"zTXt", b"iTXt")

# A1111's sampler names (with its schedule type, where it has one) -> this workbench's scheduler names.
# The diffusers docs' table of A1111 equivalents; names with no equivalent here are said so.
A1111_SCHEDULERS = {
    "Euler a": "Euler a", "Euler": "Euler", "LMS": "LMS", "Heun": "Heun", "DDIM": "DDIM", "DDPM": "DDPM",
    "PLMS": "PNDM", "PNDM": "PNDM", "UniPC": "UniPC",
    "DPM++ 2M": "DPM++ 2M", "DPM++ 2M Karras": "DPM++ 2M Karras", "DPM++ 2M SDE": "DPM++ 2M SDE",
}
# A1111 1.9+ writes "Sampler: DPM++ 2M, Schedule type: Karras"; these schedule types add nothing to the name.
DEFAULT_SCHEDULE_TYPES = ("", "Automatic", "Uniform", "Normal")
# ComfyUI's sampler_name (with scheduler "karras" where it matters) -> this workbench's scheduler names.
COMFY_SAMPLERS = {
    "euler": "Euler", "euler_ancestral": "Euler a", "heun": "Heun", "lms": "LMS", "ddim": "DDIM",
    "ddpm": "DDPM", "uni_pc": "UniPC", "uni_pc_bh2": "UniPC", "dpmpp_2m": "DPM++ 2M",
    "dpmpp_2m_sde": "DPM++ 2M SDE",
}
COMFY_SAMPLER_NODES = ("KSampler", "KSamplerAdvanced")
# The request fields a PNG can give, in the order the page shows them.
SETTINGS = ("model", "prompt", "negative_prompt", "num_inference_steps", "guidance_scale", "scheduler", "seed",
            "width", "height", "lora", "lora_scale", "batch_size",
            "timestep_spacing", "guidance_rescale")  # and "batch_count", for a batch count's grid


@dataclass(frozen=True)
class PngInfo:
    """What a PNG says about how it was made."""

    source: str  # "Diffusion Workbench", "A1111/Forge" or "ComfyUI"
    kind: str  # the tab its settings go to: "txt2img" or "unconditional"
    settings: dict  # request field -> value, only what this workbench can use
    unused: tuple[str, ...] = ()  # what was found but cannot be used here, one plain sentence each
    text: dict = field(default_factory=dict)  # the PNG's text chunks as found
    record: dict | None = None  # this workbench's run record, where the PNG has one


# -- reading the chunks ---------------------------------------------------------------------------------------
def read_png_text(path: str | Path) -> dict[str, str]:
    """The PNG's text chunks (tEXt, zTXt, iTXt) before its first image data, as {keyword: text}.

    The chunks are read by Pillow's own PNG chunk reader (``PngImagePlugin.PngStream``, as ``Image.open`` reads
    them, without its check of the pixel count): any chunk order, each chunk's CRC checked, chunks Pillow does not
    know (private ones) skipped by their length. Its limits hold: a compressed text inflates to at most
    ``PngImagePlugin.MAX_TEXT_CHUNK`` bytes, all text to ``MAX_TEXT_MEMORY``; a text chunk stored larger than
    ``MAX_TEXT_CHUNK`` is refused before it is read.

    Raises :class:`InputError` for a file that is not a PNG, ends inside its chunk list, or breaks those limits.
    """
    name = Path(path).name
    with open(path, "rb") as f:
        if f.read(len(PNG_SIGNATURE)) != PNG_SIGNATURE:
            raise InputError(f"{name} is not a PNG file (it does not start with the PNG signature)", field="image")
        stream = PngImagePlugin.PngStream(f)
        try:
            while True:
                kind = b""  # until the next chunk's header is read whole
                kind, position, length = stream.read()
                if kind in TEXT_CHUNKS and length > PngImagePlugin.MAX_TEXT_CHUNK:
                    raise InputError(f"{name} has a {kind.decode()} chunk of {length} bytes; a text chunk is read "
                                     f"up to {PngImagePlugin.MAX_TEXT_CHUNK} bytes (Pillow's MAX_TEXT_CHUNK)",
                                     field="image")
                try:
                    data = stream.call(kind, position, length)
                except EOFError:  # IDAT, fdAT or IEND: the text a listing reads is all before the image
                    return {key: str(text) for key, text in stream.im_text.items()}
                except AttributeError:  # a chunk Pillow has no reader for (a private one): skipped, CRC and all
                    f.seek(position + length + 4)
                    continue
                stream.crc(kind, data)
        except (OSError, SyntaxError, struct.error) as exc:
            where = "inside a text chunk" if kind in TEXT_CHUNKS else "before its image data"
            if isinstance(exc, OSError) or not kind or "incomplete" in str(exc):  # a read came back short
                raise InputError(f"{name} is a truncated PNG: it ends {where}", field="image") from None
            raise InputError(f"{name} is a damaged PNG: {exc}", field="image") from None
        except ValueError as exc:  # Pillow's text limits, or a chunk too short for what it must hold
            if "MAX_TEXT_CHUNK" in str(exc):
                raise InputError(f"{name}'s {kind.decode()} chunk inflates to more than "
                                 f"{PngImagePlugin.MAX_TEXT_CHUNK} bytes; a compressed text is read up to that "
                                 "(Pillow's MAX_TEXT_CHUNK)", field="image") from None
            raise InputError(f"{name} is a damaged PNG: {exc}", field="image") from None


def verify_png(path: str | Path) -> None:
    """:class:`InputError` unless the PNG's pixels decode whole; one of more than :data:`MAX_PIXELS` is refused by
    its header, before its pixels are decoded."""
    check_pixels(path)
    try:
        with Image.open(path) as im:
            im.load()
    except (OSError, SyntaxError, ValueError, UnidentifiedImageError):
        raise InputError(f"{Path(path).name} is a truncated or damaged PNG: its image data cannot be read",
                         field="image") from None


def read_record(path: str | Path) -> dict | None:
    """This workbench's run record saved in the PNG, or None where it has none (or not readable as one)."""
    text = read_png_text(path).get(RECORD_CHUNK)
    return _json(text) if text else None


# -- reading the settings -------------------------------------------------------------------------------------
def png_info(path: str | Path, *, verify: bool = False) -> PngInfo:
    """What the PNG says about how it was made; :class:`InputError` where it says nothing this workbench reads.
    ``verify``: decode the pixels too, refusing a PNG cut short after its text (a listing reads the text only)."""
    text = read_png_text(path)
    if verify:
        verify_png(path)
    record = _json(text[RECORD_CHUNK]) if RECORD_CHUNK in text else None
    if isinstance(record, dict) and isinstance(record.get("request"), dict):
        return _from_record(record, text)
    if "parameters" in text:
        source, (settings, unused) = "A1111/Forge", parse_a1111(text["parameters"])
    elif "prompt" in text or "workflow" in text:
        source, (settings, unused) = "ComfyUI", parse_comfyui(_json(text.get("prompt")), _json(text.get("workflow")))
    else:
        found = f" (its text chunks: {', '.join(sorted(text))})" if text else ""
        raise InputError(f"{Path(path).name} holds no generation parameters{found}; this page reads A1111/Forge's "
                         "'parameters', ComfyUI's 'prompt' or 'workflow', and this workbench's own", field="image")
    if not settings:
        raise InputError(f"{Path(path).name}'s {source} text holds no settings this workbench can read: "
                         f"{'; '.join(unused)}", field="image")
    # Unconditional images (this workbench's, before its runs were recorded) have no prompt and a batch size.
    kind = "unconditional" if not settings.get("prompt") and "batch_size" in settings else "txt2img"
    if kind == "txt2img" and settings.pop("batch_size", 1) > 1:
        unused.append("batch size — not used (Text to image makes one image a run; its batch count makes more)")
    return PngInfo(source, kind, settings, tuple(unused), text)


def _from_record(record: dict, text: dict) -> PngInfo:
    request = record["request"]
    kind = record.get("kind") if record.get("kind") in ("txt2img", "unconditional") else "txt2img"
    settings = {k: request[k] for k in SETTINGS if k in request}
    if request.get("seed_blend"):  # a seed-blend run: its second seed and how far toward it
        settings.update(seed_b=request.get("seed_b"), seed_blend=request["seed_blend"])
    if isinstance(record.get("batch_count"), int):  # a batch count's grid: its first run, and the count
        settings["batch_count"] = record["batch_count"]
    return PngInfo("Diffusion Workbench", kind, settings, (), text, record)


def _json(text: str | None):
    try:
        return json.loads(text) if text else None
    except (ValueError, RecursionError):  # not JSON, or nested deeper than the parser goes: not a record
        return None


# A1111's own pattern for "Key: value" pairs, a value quoted where it holds commas (modules/infotext_utils.py).
A1111_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
A1111_SIZE = re.compile(r"^(\d+)x(\d+)$")


def parse_a1111(parameters: str) -> tuple[dict, list[str]]:
    """(settings, what cannot be used) from A1111/Forge's ``parameters`` text."""
    # 1. Split as A1111 does: the last line holds the key-value pairs if it has at least three of them.
    *lines, last = parameters.strip().split("\n")
    if len(A1111_PARAM.findall(last)) < 3:
        lines.append(last)
        last = ""
    prompt, negative, in_negative = [], [], False
    for line in lines:
        if line.startswith("Negative prompt:"):
            in_negative, line = True, line[len("Negative prompt:"):].strip()
        (negative if in_negative else prompt).append(line)
    pairs = {k.strip(): _unquote(v.strip()) for k, v in A1111_PARAM.findall(last)}

    # 2. The fields this workbench has, each checked against what its requests allow.
    settings: dict = {"prompt": "\n".join(prompt).strip(), "negative_prompt": "\n".join(negative).strip()}
    unused: list[str] = []
    if not settings["prompt"] and not pairs:
        return {}, ["no prompt and no settings in the 'parameters' text"]
    _whole(pairs.pop("Steps", None), "num_inference_steps", "steps", 1, MAX_STEPS, settings, unused)
    _number(pairs.pop("CFG scale", None), settings, unused)
    _whole(pairs.pop("Seed", None), "seed", "seed", 0, 2**63 - 1, settings, unused)
    _rescale_and_spacing(pairs.pop("CFG rescale", None), pairs.pop("Timestep spacing", None), settings, unused)
    _variation(pairs, settings, unused)
    _size(pairs.pop("Size", None), settings, unused)
    _scheduler(pairs.pop("Sampler", None), pairs.pop("Schedule type", ""), settings, unused)
    if "Model" in pairs:
        settings["model"] = pairs.pop("Model")
    _whole(pairs.pop("Batch size", None), "batch_size", "batch size", 1, 10_000, settings, unused)
    pairs.pop("Batch count", None)  # how many runs, not how each was made

    # 3. Everything else, said once each.
    for key, value in pairs.items():
        unused.append(_a1111_unused(key, value))
    return settings, unused


def _a1111_unused(key: str, value: str) -> str:
    why = {
        "Model hash": "the model is chosen by name here; its hash is not checked",
        "VAE": "the model's own VAE is used", "VAE hash": "the model's own VAE is used",
        "Clip skip": "the text encoder's last layer is always used",
        "Denoising strength": "there is no image-to-image or hires fix here",
        "Resize mode": "there is no image-to-image or hires fix here",
        "Hires upscale": "there is no hires fix here", "Hires steps": "there is no hires fix here",
        "Hires upscaler": "there is no hires fix here",
        "Lora hashes": "LoRAs are not supported here",
        "Variation seed strength": "it blends toward a variation seed, and none is given",
        "ENSD": "A1111's eta noise seed delta has no equivalent here",
        "Version": "the version of the program that made it",
    }.get(key, "this workbench has no such setting")
    return f"{key}: {value} — not used ({why})"


def _variation(pairs: dict, settings: dict, unused: list[str]) -> None:
    """A1111's "Variation seed" and "Variation seed strength" (a slerp of the two seeds' noise, as this workbench's
    seed blend: engine/sampling/blend.py) -> ``seed_b`` and ``seed_blend``; both are needed, else said."""
    if "Variation seed" not in pairs:
        return  # a strength alone is said with the rest
    seed_b, strength = pairs.pop("Variation seed"), pairs.pop("Variation seed strength", None)
    found: dict = {}
    _whole(seed_b, "seed_b", "variation seed", 0, 2**63 - 1, found, unused)
    try:
        t = float(str(strength).strip()) if strength is not None else None
    except ValueError:
        t = None
    if t is None or not 0 <= t <= 1:
        unused.append(f"Variation seed {seed_b}: not used (its strength {strength!r} is not a number from 0 to 1)"
                      if strength is not None else f"Variation seed {seed_b}: not used (no strength given)")
        return
    if "seed_b" in found:
        settings.update(seed_b=found["seed_b"], seed_blend=t)


def _unquote(value: str) -> str:
    """A1111 quotes a value holding commas as a JSON string."""
    if len(value) >= 2 and value[0] == value[-1] == '"':
        try:
            return str(json.loads(value))
        except ValueError:
            return value[1:-1]
    return value


def _whole(value, key: str, label: str, lo: int, hi: int, settings: dict, unused: list[str]) -> None:
    if value is None:
        return
    try:
        number = int(str(value).strip())
    except ValueError:
        unused.append(f"{label} {value!r} is not a whole number; not used")
        return
    if not lo <= number <= hi:
        unused.append(f"{label} {number} is outside what this workbench allows ({lo} to {hi}); not used")
        return
    settings[key] = number


def _number(value, settings: dict, unused: list[str]) -> None:
    if value is None:
        return
    try:
        scale = float(str(value).strip())
    except ValueError:
        unused.append(f"CFG scale {value!r} is not a number; not used")
        return
    if not 1 <= scale <= MAX_GUIDANCE:
        unused.append(f"CFG scale {scale:g} is outside this workbench's 1 to {MAX_GUIDANCE:g}; not used")
        return
    settings["guidance_scale"] = scale


def _rescale_and_spacing(rescale, spacing, settings: dict, unused: list[str]) -> None:
    """This workbench's "CFG rescale" (phi, 0 to 1) and "Timestep spacing" (leading, linspace, trailing)."""
    if rescale is not None:
        try:
            phi = float(str(rescale).strip())
        except ValueError:
            phi = None
        if phi is None or not 0 <= phi <= 1:
            unused.append(f"CFG rescale {rescale!r} is not a number from 0 to 1; not used")
        else:
            settings["guidance_rescale"] = phi
    if spacing is not None:
        if spacing.strip() in TIMESTEP_SPACINGS:
            settings["timestep_spacing"] = spacing.strip()
        else:
            unused.append(f"timestep spacing {spacing!r} is not one of {', '.join(TIMESTEP_SPACINGS)}; not used")


def _size(value, settings: dict, unused: list[str]) -> None:
    if value is None:
        return
    match = A1111_SIZE.match(str(value).strip())
    if not match:
        unused.append(f"size {value!r} is not WIDTHxHEIGHT; not used")
        return
    width, height = int(match.group(1)), int(match.group(2))
    if width % 8 or height % 8 or not (8 <= width <= MAX_SIDE and 8 <= height <= MAX_SIDE):
        unused.append(f"size {width}x{height} is not a multiple of 8 from 8 to {MAX_SIDE}; not used")
        return
    settings["width"], settings["height"] = width, height


def _scheduler(sampler, schedule_type: str, settings: dict, unused: list[str]) -> None:
    """A1111's sampler (and schedule type) as one of this workbench's schedulers."""
    if sampler is None:
        return
    name = sampler if schedule_type in DEFAULT_SCHEDULE_TYPES else f"{sampler} {schedule_type}"
    if name in A1111_SCHEDULERS:
        settings["scheduler"] = A1111_SCHEDULERS[name]
        return
    shown = f"{sampler}, schedule type {schedule_type}" if name != sampler else sampler
    unused.append(f"sampler {shown} has no equivalent here (these do: {', '.join(SCHEDULERS)}); "
                  "the page's scheduler is kept")


def parse_comfyui(prompt: dict | None, workflow: dict | None) -> tuple[dict, list[str]]:
    """(settings, what cannot be used) from ComfyUI's ``prompt`` graph, else its ``workflow``."""
    if isinstance(prompt, dict) and prompt:
        return _comfy_prompt(prompt)
    if isinstance(workflow, dict) and isinstance(workflow.get("nodes"), list):
        return _comfy_workflow(workflow)
    return {}, ["the ComfyUI graph in this PNG could not be read"]


def _comfy_prompt(graph: dict) -> tuple[dict, list[str]]:
    """The API-format graph: nodes by id, each input a value or a link ``[node id, output index]``."""
    samplers = sorted((k for k, v in graph.items() if isinstance(v, dict) and v.get("class_type") in
                       COMFY_SAMPLER_NODES), key=_node_order)
    if not samplers:
        return {}, ["the ComfyUI graph has no KSampler node: nothing to read its settings from"]
    node = graph[samplers[0]]
    inputs = node.get("inputs", {})

    def linked(name: str) -> dict:
        link = inputs.get(name)
        return graph.get(str(link[0]), {}) if isinstance(link, list) and link else {}

    values = {
        "seed": inputs.get("seed", inputs.get("noise_seed")), "steps": inputs.get("steps"), "cfg": inputs.get("cfg"),
        "sampler_name": inputs.get("sampler_name"), "scheduler": inputs.get("scheduler"),
        "denoise": inputs.get("denoise", 1.0),
        "positive": _comfy_text(graph, linked("positive")), "negative": _comfy_text(graph, linked("negative")),
        "latent": linked("latent_image"), "checkpoint": _comfy_checkpoint(graph, linked("model")),
    }
    latent = values["latent"]
    values["width"], values["height"] = (latent.get("inputs", {}).get("width"), latent.get("inputs", {}).get("height")) \
        if latent.get("class_type") == "EmptyLatentImage" else (None, None)
    settings, unused = _comfy_settings(values, node.get("class_type"))
    if len(samplers) > 1:
        unused.append(f"the graph has {len(samplers)} samplers; the first (node {samplers[0]}) was read")
    return settings, unused


def _comfy_text(graph: dict, node: dict, depth: int = 0):
    """The prompt text a conditioning node holds, following a few links back; None if not found."""
    inputs = node.get("inputs", {}) if isinstance(node, dict) else {}
    if isinstance(inputs.get("text"), str):
        return inputs["text"]
    for value in inputs.values():
        if depth < 4 and isinstance(value, list) and value and str(value[0]) in graph:
            found = _comfy_text(graph, graph[str(value[0])], depth + 1)
            if found is not None:
                return found
    return None


def _comfy_checkpoint(graph: dict, node: dict, depth: int = 0):
    inputs = node.get("inputs", {}) if isinstance(node, dict) else {}
    if isinstance(inputs.get("ckpt_name"), str):
        return inputs["ckpt_name"]
    link = inputs.get("model")
    if depth < 4 and isinstance(link, list) and link and str(link[0]) in graph:
        return _comfy_checkpoint(graph, graph[str(link[0])], depth + 1)
    return None


def _comfy_workflow(workflow: dict) -> tuple[dict, list[str]]:
    """The editor's graph: KSampler's widgets are [seed, after-generate, steps, cfg, sampler, scheduler, denoise]."""
    nodes = {n.get("id"): n for n in workflow["nodes"] if isinstance(n, dict)}
    links = {link[0]: link for link in workflow.get("links", []) if isinstance(link, list) and len(link) >= 5}
    samplers = sorted((i for i, n in nodes.items() if n.get("type") == "KSampler"), key=_node_order)
    if not samplers:
        return {}, ["the ComfyUI workflow has no KSampler node: nothing to read its settings from"]
    node = nodes[samplers[0]]
    widgets = node.get("widgets_values") or []

    def source(name: str, target: dict | None = None) -> dict:
        for slot in (target or node).get("inputs", []):
            if isinstance(slot, dict) and slot.get("name") == name and slot.get("link") in links:
                return nodes.get(links[slot["link"]][1], {})
        return {}

    def text(of: dict) -> str | None:
        return of.get("widgets_values", [None])[0] if of.get("type") == "CLIPTextEncode" else None

    latent = source("latent_image")
    checkpoint = source("model")
    sizes = latent.get("widgets_values", [None, None]) if latent.get("type") == "EmptyLatentImage" else [None, None]
    values = {
        "seed": _at(widgets, 0), "steps": _at(widgets, 2), "cfg": _at(widgets, 3), "sampler_name": _at(widgets, 4),
        "scheduler": _at(widgets, 5), "denoise": _at(widgets, 6, 1.0),
        "positive": text(source("positive")), "negative": text(source("negative")),
        "width": _at(sizes, 0), "height": _at(sizes, 1),
        "checkpoint": _at(checkpoint.get("widgets_values") or [], 0)
        if checkpoint.get("type") == "CheckpointLoaderSimple" else None,
    }
    settings, unused = _comfy_settings(values, "KSampler")
    if len(samplers) > 1:
        unused.append(f"the workflow has {len(samplers)} samplers; the first (node {samplers[0]}) was read")
    return settings, unused


def _comfy_settings(values: dict, node_class: str | None) -> tuple[dict, list[str]]:
    settings: dict = {}
    unused: list[str] = []
    if values["positive"] is not None:
        settings["prompt"] = values["positive"]
    if values["negative"] is not None:
        settings["negative_prompt"] = values["negative"]
    _whole(values["steps"], "num_inference_steps", "steps", 1, MAX_STEPS, settings, unused)
    _number(values["cfg"], settings, unused)
    _whole(values["seed"], "seed", "seed", 0, 2**63 - 1, settings, unused)
    if values["width"] is not None and values["height"] is not None:
        _size(f"{values['width']}x{values['height']}", settings, unused)
    sampler, schedule = values["sampler_name"], values["scheduler"]
    if sampler is not None:
        name = COMFY_SAMPLERS.get(sampler)
        if name is not None and schedule == "karras":
            name = f"{name} Karras" if f"{name} Karras" in SCHEDULERS else None
        if name is None:
            unused.append(f"sampler {sampler} with scheduler {schedule} has no equivalent here (these do: "
                          f"{', '.join(SCHEDULERS)}); the page's scheduler is kept")
        else:
            settings["scheduler"] = name
            if schedule not in ("normal", "karras", None):
                unused.append(f"ComfyUI's '{schedule}' timestep spacing is not used; {name} spaces timesteps as "
                              "the model's scheduler config says")
    if values["checkpoint"]:
        settings["model"] = values["checkpoint"]
    denoise = values.get("denoise")
    if isinstance(denoise, (int, float)) and denoise < 1:
        unused.append(f"denoise {denoise:g} — not used (there is no image-to-image here; Text to image starts "
                      "from pure noise)")
    if node_class == "KSamplerAdvanced":
        unused.append("KSamplerAdvanced's start and end steps are not used; the whole schedule runs")
    return settings, unused


def _at(values: list, index: int, default=None):
    return values[index] if isinstance(values, list) and len(values) > index else default


def _node_order(node_id) -> tuple:
    text = str(node_id)
    return (0, int(text), "") if text.isdigit() else (1, 0, text)
