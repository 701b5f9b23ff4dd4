"""/attention through gradio_client against a launched app: the same image as /txt2img, a map per token in the
.npz it names, previews streamed; a model without cross-attention is refused and the server keeps serving."""

import json
import re

import numpy as np
import pytest
from PIL import Image

ARGS = dict(model="digits-sd", prompt="a handwritten digit seven", negative_prompt="", steps=6,
            guidance_scale=7.5, scheduler="DPM++ 2M Karras", seed=4, width=40, height=32)


def pixels(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).astype(int)


def test_attention_gives_txt2imgs_image_and_a_map_per_token(client, running_app):
    job = client.submit(**ARGS, api_name="/attention")
    updates = list(job)
    image, gallery, info = job.outputs()[-1]
    info = info if isinstance(info, dict) else json.loads(info)
    assert any(u[0] for u in updates[:-1])  # a preview streamed before the end
    assert info["tokens"] == ["<|startoftext|>", "a</w>", "handwritten</w>", "digit</w>", "seven</w>",
                              "<|endoftext|>"]
    assert re.fullmatch(r"outputs/txt2img/.+\.attention\.npz", info["maps_file"]), info["maps_file"]
    saved = np.load(running_app[2] / info["maps_file"])
    assert saved["maps"].dtype == np.float32 and saved["maps"].shape == (6, 8, 10)  # 40x32 -> a 10x8 latent
    assert saved["per_step"].shape == (6, 6, 8, 10)
    np.testing.assert_allclose(saved["maps"], saved["per_step"].mean(axis=0), atol=1e-6)
    assert [g["caption"] for g in gallery] == [f"{i}: {t}" for i, t in enumerate(info["tokens"])]

    plain = client.predict(**ARGS, api_name="/txt2img")
    assert np.array_equal(pixels(image), pixels(plain[0]))  # the maps cost the image nothing


def test_a_model_without_cross_attention_is_refused_and_the_server_keeps_serving(client):
    with pytest.raises(Exception, match=re.escape(
            "'digits-ddpm' is an unconditional model: it has no cross-attention and takes no prompt, so no word has "
            "a map; pick a text-to-image model")):
        client.predict(**{**ARGS, "model": "digits-ddpm"}, api_name="/attention")
    image, gallery, info = client.predict(**{**ARGS, "steps": 2}, api_name="/attention")
    assert len(gallery) == 6
