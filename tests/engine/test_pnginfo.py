"""PNG info: this workbench's PNGs, A1111/Forge's ``parameters`` text and ComfyUI's graphs read into request fields;
what cannot be used said plainly; damaged files and PNGs without parameters refused with a clear message.

Every example file is written here by its format's rules (A1111: ``modules/infotext_utils.py``'s text; ComfyUI: its
default graph in API and editor form), never copied from elsewhere."""

import json
import re
import threading
import tracemalloc

import pytest
from PIL import Image, PngImagePlugin

from engine.records.runs import iter_saved
from engine.errors import InputError
from engine.records.pnginfo import png_info, read_png_text
from engine.sampling.txt2img import Txt2ImgRequest, iter_txt2img
from tests.crafted_png import chunk, crafted_png, deflated_zeros

A1111_TEXT = (
    "a photo of a handwritten digit seven, high contrast\n"
    "Negative prompt: blurry, lowres\n"
    'Steps: 30, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 1234567, Size: 64x48, '
    'Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Clip skip: 2, '
    'Lora hashes: "digits: 0a1b2c3d4e5f, strokes: 123456", Version: v1.10.1'
)


def write_png(path, size=(8, 8), **texts):
    """A small PNG with the given text chunks (tEXt, as A1111 and ComfyUI write them through PIL)."""
    meta = PngImagePlugin.PngInfo()
    for key, value in texts.items():
        meta.add_text(key, value)
    Image.new("RGB", size, (120, 30, 200)).save(path, format="PNG", pnginfo=meta)
    return path


def test_a1111_parameters_become_settings_and_the_rest_is_said(tmp_path):
    info = png_info(write_png(tmp_path / "a1111.png", parameters=A1111_TEXT))
    assert info.source == "A1111/Forge" and info.kind == "txt2img"
    assert info.settings == {
        "prompt": "a photo of a handwritten digit seven, high contrast", "negative_prompt": "blurry, lowres",
        "num_inference_steps": 30, "guidance_scale": 6.5, "seed": 1234567, "width": 64, "height": 48,
        "scheduler": "DPM++ 2M Karras", "model": "v1-5-pruned-emaonly",
    }
    assert info.unused == (
        "Model hash: 6ce0161689 — not used (the model is chosen by name here; its hash is not checked)",
        "Clip skip: 2 — not used (the text encoder's last layer is always used)",
        "Lora hashes: digits: 0a1b2c3d4e5f, strokes: 123456 — not used (LoRAs are not supported here)",
        "Version: v1.10.1 — not used (the version of the program that made it)",
    )
    assert info.text == {"parameters": A1111_TEXT}


@pytest.mark.parametrize("sampler, schedule, ours", [
    ("DPM++ 2M Karras", None, "DPM++ 2M Karras"),  # before A1111 1.9 the schedule is in the sampler's name
    ("DPM++ 2M", "Karras", "DPM++ 2M Karras"),
    ("DPM++ 2M", "Automatic", "DPM++ 2M"),
    ("Euler a", None, "Euler a"),
    ("Euler", "Normal", "Euler"),
    ("PLMS", None, "PNDM"),
    ("UniPC", None, "UniPC"),
    ("DPM++ 2M SDE", None, "DPM++ 2M SDE"),
    ("LMS", None, "LMS"),
    ("Heun", None, "Heun"),
    ("DDIM", None, "DDIM"),
])
def test_a1111_sampler_names_map_to_ours(tmp_path, sampler, schedule, ours):
    schedule_text = f", Schedule type: {schedule}" if schedule else ""
    text = f"a seven\nSteps: 20, Sampler: {sampler}{schedule_text}, CFG scale: 7, Seed: 1, Size: 512x512"
    assert png_info(write_png(tmp_path / "s.png", parameters=text)).settings["scheduler"] == ours


def test_a1111_sampler_without_equivalent_keeps_the_page_scheduler(tmp_path):
    text = "a seven\nSteps: 20, Sampler: DPM++ SDE, Schedule type: Karras, CFG scale: 7, Seed: 1, Size: 512x512"
    info = png_info(write_png(tmp_path / "s.png", parameters=text))
    assert "scheduler" not in info.settings
    assert info.unused == ("sampler DPM++ SDE, schedule type Karras has no equivalent here (these do: DDIM, DDPM, "
                           "PNDM, LMS, Euler, Euler a, Heun, DPM++ 2M, DPM++ 2M Karras, DPM++ 2M SDE, UniPC); the "
                           "page's scheduler is kept",)


def test_a1111_multiline_prompts_and_out_of_range_values(tmp_path):
    text = ("first line of the prompt\nsecond line\nNegative prompt: bad\nworse\n"
            "Steps: 400, Sampler: Euler, CFG scale: 30, Seed: 7, Size: 500x512, Batch size: 4")
    info = png_info(write_png(tmp_path / "m.png", parameters=text))
    assert info.settings == {"prompt": "first line of the prompt\nsecond line", "negative_prompt": "bad\nworse",
                             "seed": 7, "scheduler": "Euler"}
    assert info.unused == (
        "steps 400 is outside what this workbench allows (1 to 150); not used",
        "CFG scale 30 is outside this workbench's 1 to 20; not used",
        "size 500x512 is not a multiple of 8 from 8 to 2048; not used",
        "batch size — not used (Text to image makes one image a run; its batch count makes more)",
    )


# ComfyUI's default graph ("Load Default"), as its API format saves it in the 'prompt' chunk.
COMFY_PROMPT = {
    "3": {"class_type": "KSampler", "inputs": {
        "seed": 156680208700286, "steps": 20, "cfg": 8.0, "sampler_name": "dpmpp_2m", "scheduler": "karras",
        "denoise": 1.0, "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "v1-5-pruned-emaonly.safetensors"}},
    "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 768, "batch_size": 1}},
    "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "beautiful scenery nature glass bottle landscape",
                                                     "clip": ["4", 1]}},
    "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "text, watermark", "clip": ["4", 1]}},
    "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
    "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]}},
}
# The same graph as the editor saves it in the 'workflow' chunk: links are [id, from node, from slot, to node, to slot,
# type]; a KSampler's widgets are [seed, control after generate, steps, cfg, sampler, scheduler, denoise].
COMFY_WORKFLOW = {
    "last_node_id": 9, "last_link_id": 9, "version": 0.4,
    "nodes": [
        {"id": 3, "type": "KSampler", "inputs": [
            {"name": "model", "type": "MODEL", "link": 1}, {"name": "positive", "type": "CONDITIONING", "link": 4},
            {"name": "negative", "type": "CONDITIONING", "link": 6},
            {"name": "latent_image", "type": "LATENT", "link": 2}],
         "widgets_values": [156680208700286, "randomize", 20, 8, "euler_ancestral", "normal", 0.75]},
        {"id": 4, "type": "CheckpointLoaderSimple", "widgets_values": ["v1-5-pruned-emaonly.safetensors"]},
        {"id": 5, "type": "EmptyLatentImage", "widgets_values": [512, 512, 1]},
        {"id": 6, "type": "CLIPTextEncode", "widgets_values": ["beautiful scenery nature glass bottle landscape"]},
        {"id": 7, "type": "CLIPTextEncode", "widgets_values": ["text, watermark"]},
    ],
    "links": [[1, 4, 0, 3, 0, "MODEL"], [2, 5, 0, 3, 3, "LATENT"], [4, 6, 0, 3, 1, "CONDITIONING"],
              [6, 7, 0, 3, 2, "CONDITIONING"]],
}


def test_comfyui_prompt_graph_gives_the_sampler_settings(tmp_path):
    info = png_info(write_png(tmp_path / "comfy.png", prompt=json.dumps(COMFY_PROMPT),
                              workflow=json.dumps(COMFY_WORKFLOW)))
    assert info.source == "ComfyUI" and info.kind == "txt2img"
    assert info.settings == {
        "prompt": "beautiful scenery nature glass bottle landscape", "negative_prompt": "text, watermark",
        "num_inference_steps": 20, "guidance_scale": 8.0, "seed": 156680208700286, "width": 512, "height": 768,
        "scheduler": "DPM++ 2M Karras", "model": "v1-5-pruned-emaonly.safetensors",
    }
    assert info.unused == ()


def test_comfyui_workflow_alone_is_read_and_denoise_is_said(tmp_path):
    info = png_info(write_png(tmp_path / "workflow.png", workflow=json.dumps(COMFY_WORKFLOW)))
    assert info.settings == {
        "prompt": "beautiful scenery nature glass bottle landscape", "negative_prompt": "text, watermark",
        "num_inference_steps": 20, "guidance_scale": 8, "seed": 156680208700286, "width": 512, "height": 512,
        "scheduler": "Euler a", "model": "v1-5-pruned-emaonly.safetensors",
    }
    assert info.unused == ("denoise 0.75 — not used (there is no image-to-image here; Text to image starts from "
                           "pure noise)",)


def test_comfyui_sampler_without_equivalent(tmp_path):
    graph = json.loads(json.dumps(COMFY_PROMPT))
    graph["3"]["inputs"].update(sampler_name="dpmpp_sde", scheduler="exponential")
    info = png_info(write_png(tmp_path / "c.png", prompt=json.dumps(graph)))
    assert "scheduler" not in info.settings
    assert info.unused[0].startswith("sampler dpmpp_sde with scheduler exponential has no equivalent here")


def test_our_own_png_gives_the_exact_request(tmp_path, tiny_sd):
    request = Txt2ImgRequest(prompt="a seven", negative_prompt="blur", num_inference_steps=2, scheduler="Heun",
                             seed=42, model="tiny")
    done = list(iter_saved("txt2img", iter_txt2img(request, pipe=tiny_sd), pipe=tiny_sd, outputs_dir=tmp_path))[-1]
    info = png_info(done.paths[0], verify=True)
    assert info.source == "Diffusion Workbench" and info.kind == "txt2img"
    assert info.settings == {"model": "tiny", "prompt": "a seven", "negative_prompt": "blur",
                             "num_inference_steps": 2, "guidance_scale": 7.5, "scheduler": "Heun", "seed": 42,
                             "width": 64, "height": 64, "lora": "", "lora_scale": 1.0, "timestep_spacing": "",
                             "guidance_rescale": 0.0}
    assert info.record == done.record and set(info.text) == {"parameters", "workbench"}


def test_a_png_without_parameters_is_refused_by_name(tmp_path):
    with pytest.raises(InputError, match=re.escape(
            "plain.png holds no generation parameters; this page reads A1111/Forge's 'parameters', ComfyUI's "
            "'prompt' or 'workflow', and this workbench's own")):
        png_info(write_png(tmp_path / "plain.png"))
    with pytest.raises(InputError, match=re.escape("other.png holds no generation parameters (its text chunks: "
                                                   "Software)")):
        png_info(write_png(tmp_path / "other.png", Software="an editor"))


def test_non_png_and_truncated_files_are_refused(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "photo.png", format="JPEG")  # a JPEG under a PNG's name
    with pytest.raises(InputError, match=re.escape("photo.png is not a PNG file (it does not start with the PNG "
                                                   "signature)")):
        png_info(tmp_path / "photo.png")
    whole = write_png(tmp_path / "whole.png", size=(64, 64), parameters=A1111_TEXT).read_bytes()
    text_at = whole.index(b"tEXt")
    (tmp_path / "cut-text.png").write_bytes(whole[:text_at + 40])  # inside the parameters chunk
    with pytest.raises(InputError, match=re.escape("cut-text.png is a truncated PNG: it ends inside a text chunk")):
        png_info(tmp_path / "cut-text.png")
    (tmp_path / "cut-header.png").write_bytes(whole[:20])
    with pytest.raises(InputError, match=re.escape("cut-header.png is a truncated PNG: it ends before its image "
                                                   "data")):
        png_info(tmp_path / "cut-header.png")
    idat = whole.index(b"IDAT")
    (tmp_path / "cut-pixels.png").write_bytes(whole[:idat + 30])  # the text is whole, the pixels are not
    assert png_info(tmp_path / "cut-pixels.png").settings["seed"] == 1234567  # a listing reads the text only
    with pytest.raises(InputError, match=re.escape("cut-pixels.png is a truncated or damaged PNG: its image data "
                                                   "cannot be read")):
        png_info(tmp_path / "cut-pixels.png", verify=True)


def test_text_chunks_are_read_without_the_pixels_and_in_every_encoding(tmp_path):
    meta = PngImagePlugin.PngInfo()
    meta.add_text("parameters", "a seven\nSteps: 3, Sampler: Euler, Seed: 4", zip=True)  # zTXt
    meta.add_itxt("prompt", '{"note": "ünïcode"}', zip=True)  # compressed iTXt, UTF-8
    meta.add_itxt("workflow", "{}")
    Image.new("RGB", (4, 4)).save(tmp_path / "enc.png", format="PNG", pnginfo=meta)
    assert read_png_text(tmp_path / "enc.png") == {"parameters": "a seven\nSteps: 3, Sampler: Euler, Seed: 4",
                                                  "prompt": '{"note": "ünïcode"}', "workflow": "{}"}


# -- any chunk order, promptly; text inflated within Pillow's limits -----------------------------------------------
def within(seconds: float, fn):
    """``fn()`` in a thread; the test fails (instead of hanging the suite) if it has not returned by then.
    A guard against a loop that never ends, not a claim about speed."""
    outcome = {}

    def call():
        try:
            outcome["value"] = fn()
        except BaseException as exc:  # handed to the test below
            outcome["error"] = exc

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still reading after {seconds} s: the reader loops"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def test_a_short_private_chunk_after_ihdr_is_skipped_not_looped_on(tmp_path):
    """A 21-byte private chunk right after IHDR made the old reader seek back to that chunk for ever (its skip was
    taken relative to the re-read buffer, not the file): /png_info, /replay and every History listing hung."""
    path = tmp_path / "private.png"
    path.write_bytes(crafted_png(chunk(b"prVt", b"x" * 21), chunk(b"tEXt", b"Software\0an editor")))
    assert within(60, lambda: read_png_text(path)) == {"Software": "an editor"}
    with pytest.raises(InputError, match=re.escape("private.png holds no generation parameters (its text chunks: "
                                                   "Software)")):
        within(60, lambda: png_info(path, verify=True))


def test_a_history_listing_with_that_png_in_the_outputs_dir_returns(tmp_path):
    from engine.records.history import HistoryQuery, ImageHistory

    out = tmp_path / "outputs"
    (out / "txt2img").mkdir(parents=True)
    (out / "txt2img" / "private.png").write_bytes(crafted_png(chunk(b"prVt", b"x" * 21)))
    page = within(60, lambda: ImageHistory(out).page(HistoryQuery()))
    assert [(e.path, e.prompt) for e in page.entries] == [("txt2img/private.png", "")]


def test_an_a1111_png_saved_with_a_dpi_is_read(tmp_path):
    """Its pHYs chunk (before the text) made the old reader call the file truncated."""
    meta = PngImagePlugin.PngInfo()
    meta.add_text("parameters", A1111_TEXT)
    Image.new("RGB", (64, 48)).save(tmp_path / "dpi.png", format="PNG", pnginfo=meta, dpi=(300, 300))
    assert b"pHYs" in (tmp_path / "dpi.png").read_bytes()
    assert within(60, lambda: png_info(tmp_path / "dpi.png", verify=True)).settings["seed"] == 1234567


def test_an_animated_png_is_read(tmp_path):
    """APNG's acTL and fcTL chunks, between the text and the first frame, made the old reader call it truncated."""
    meta = PngImagePlugin.PngInfo()
    meta.add_text("parameters", A1111_TEXT)
    frames = [Image.new("RGB", (64, 48), (c, 0, 0)) for c in (0, 255)]
    frames[0].save(tmp_path / "anim.png", format="PNG", save_all=True, append_images=frames[1:], pnginfo=meta)
    data = (tmp_path / "anim.png").read_bytes()
    assert b"acTL" in data and b"fcTL" in data and b"fdAT" in data
    assert within(60, lambda: png_info(tmp_path / "anim.png", verify=True)).settings["seed"] == 1234567


def test_a_bad_crc_is_refused_as_damaged(tmp_path):
    good = crafted_png(chunk(b"tEXt", b"parameters\0" + A1111_TEXT.encode()))
    at = good.index(b"Negative")
    (tmp_path / "crc.png").write_bytes(good[:at] + b"n" + good[at + 1:])
    with pytest.raises(InputError, match=re.escape("crc.png is a damaged PNG: broken PNG file (bad header checksum "
                                                   "in b'tEXt')")):
        png_info(tmp_path / "crc.png")


def test_a_ztxt_bomb_is_refused_without_inflating_it(tmp_path):
    """A zTXt chunk of under 1 MiB that inflates to 1000 MiB: the old reader's 8 MiB cap counted compressed bytes,
    so it inflated all of it (about 2 GiB of server memory for a 1 MiB upload). Pillow's MAX_TEXT_CHUNK bounds it."""
    bomb = deflated_zeros(1000 * 2**20)
    assert len(bomb) < PngImagePlugin.MAX_TEXT_CHUNK
    (tmp_path / "bomb.png").write_bytes(crafted_png(chunk(b"zTXt", b"parameters\0\0" + bomb)))
    tracemalloc.start()
    try:
        with pytest.raises(InputError, match=re.escape(
                "bomb.png's zTXt chunk inflates to more than 1048576 bytes; a compressed text is read up to that "
                "(Pillow's MAX_TEXT_CHUNK)")):
            png_info(tmp_path / "bomb.png")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * 2**20  # the chunk and one mebibyte of its text, not the thousand


def test_a_text_chunk_stored_larger_than_the_limit_is_refused_unread(tmp_path):
    big = b"parameters\0" + b"x" * (2 * 2**20)
    (tmp_path / "big.png").write_bytes(crafted_png(chunk(b"tEXt", big)))
    with pytest.raises(InputError, match=re.escape(f"big.png has a tEXt chunk of {len(big)} bytes; a text chunk is "
                                                   "read up to 1048576 bytes (Pillow's MAX_TEXT_CHUNK)")):
        png_info(tmp_path / "big.png")


def test_a_seed_blend_runs_variation_seed_is_read_back_and_runs_the_same_image(tmp_path, tiny_sd):
    """A seed-blend run writes A1111's "Variation seed" and "Variation seed strength"; PNG info reads them back as
    seed_b and seed_blend, from its A1111 parameters alone as from its record, and they make the same image."""
    import numpy as np

    request = Txt2ImgRequest(prompt="a seven", num_inference_steps=2, scheduler="DDIM", seed=3, seed_b=8,
                             seed_blend=0.25, model="tiny")
    done = list(iter_saved("txt2img", iter_txt2img(request, pipe=tiny_sd), pipe=tiny_sd,
                           outputs_dir=tmp_path / "out"))[-1]
    parameters = read_png_text(done.paths[0])["parameters"]
    assert "Variation seed: 8, Variation seed strength: 0.25" in parameters
    ours = png_info(done.paths[0])
    a1111 = png_info(write_png(tmp_path / "a1111.png", parameters=parameters))
    assert (ours.settings["seed_b"], ours.settings["seed_blend"]) == (8, 0.25)
    assert (a1111.settings["seed_b"], a1111.settings["seed_blend"]) == (8, 0.25)
    assert not any(line.startswith("Variation seed") for line in a1111.unused), a1111.unused
    again = list(iter_txt2img(Txt2ImgRequest(**a1111.settings), pipe=tiny_sd))[-1]
    assert np.array_equal(np.asarray(again.images[0]), np.asarray(done.images[0]))


def test_a_variation_seed_without_a_usable_strength_is_said_not_used(tmp_path):
    text = "a seven\nSteps: 4, Seed: 1, Variation seed: 9, Variation seed strength: 1.5, Size: 64x64"
    info = png_info(write_png(tmp_path / "a.png", parameters=text))
    assert "seed_b" not in info.settings and "seed_blend" not in info.settings
    assert info.unused == ("Variation seed 9: not used (its strength '1.5' is not a number from 0 to 1)",)
