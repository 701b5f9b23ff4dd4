"""Images of every kind PIL opens become the right 8-bit pixels: a 16-bit PNG is not turned white."""

import re
import struct

import numpy as np
import pytest
from PIL import Image

from engine.errors import InputError
from engine.images import open_rgb
from tests.crafted_png import black_png, chunk

from engine.forward.noise import load_image
from engine.training.data import to_mode


def sixteen_bit_png(path):
    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)  # black to white
    Image.fromarray(ramp).save(path)  # PIL writes mode I;16 as a 16-bit PNG
    return ramp


def test_a_16_bit_png_keeps_its_greys(tmp_path):
    ramp = sixteen_bit_png(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as image:
        assert image.mode.startswith("I")
        for converted in (to_mode(image, 1), to_mode(image, 3).convert("L"), load_image(image).convert("L")):
            pixels = np.asarray(converted, dtype=np.float64)
            np.testing.assert_allclose(pixels, ramp / 257.0, atol=1.0)
    assert abs(np.asarray(load_image(str(tmp_path / "deep.png"))).mean() - 127.5) < 2  # not almost all white


def test_an_rgb_png_by_path_is_read_before_its_file_closes(tmp_path):
    """load_image returned an RGB file's image unread, after its file had closed: the first crop failed with an
    AssertionError (an internal error on the Noise tab for any RGB PNG upload)."""
    pixels = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "rgb.png")
    image = load_image(str(tmp_path / "rgb.png"))
    assert np.array_equal(np.asarray(image.crop((0, 0, 30, 20))), pixels)


def test_an_uploaded_png_is_noised_through_the_api(client, tmp_path):
    from gradio_client import handle_file

    Image.fromarray(np.full((40, 40, 3), 200, np.uint8)).save(tmp_path / "grey.png")
    strip = client.predict(image=handle_file(str(tmp_path / "grey.png")), timesteps="0, 999",
                           beta_schedule="linear", num_train_timesteps=1000, seed=0, resolution=32,
                           api_name="/add_noise")[0]
    with Image.open(strip[0]["image"]) as first:  # t = 0: the upload itself, resized, a trace of noise on it
        assert np.abs(np.asarray(first.convert("RGB")).astype(int) - 200).mean() < 2  # not the sample image


def test_images_of_too_many_pixels_are_refused_before_decoding(tmp_path):
    """By the header: a PNG's IHDR read directly, any other format's through PIL's lazy open (a GIF saying 60000 x
    60000 made PIL raise DecompressionBombError, which no caller caught)."""
    (tmp_path / "big.png").write_bytes(black_png(12000, 12000))
    with pytest.raises(InputError, match=re.escape("image 'big.png' is 12000 x 12000 pixels (144000000); images of "
                                                   "at most 67108864 pixels (8192 x 8192) are read")):
        open_rgb(str(tmp_path / "big.png"))
    gif = b"GIF89a" + struct.pack("<HH", 60000, 60000) + b"\x00\x00\x00" + b",\x00\x00\x00\x00\x01\x00\x01\x00\x00" \
        + b"\x02\x02D\x01\x00;"
    (tmp_path / "bomb.gif").write_bytes(gif)
    with pytest.raises(InputError, match=re.escape("image 'bomb.gif' has more than 178956970 pixels by its header; "
                                                   "images of at most 67108864 pixels (8192 x 8192) are read")):
        open_rgb(str(tmp_path / "bomb.gif"))
    Image.new("RGB", (8192, 8192 // 64)).save(tmp_path / "wide.png")  # within the cap: read
    assert open_rgb(str(tmp_path / "wide.png")).size == (8192, 128)


def test_training_uploads_png_info_and_replay_refuse_them_too(tmp_path):
    from engine.errors import DataError
    from engine.records.pnginfo import png_info
    from engine.records.replay import read_bundle
    from engine.training.uploads import save_uploads

    (tmp_path / "big.png").write_bytes(black_png(12000, 12000))
    with pytest.raises(DataError, match=re.escape("files 'big.png' is 12000 x 12000 pixels (144000000); images of "
                                                  "at most 67108864 pixels (8192 x 8192) are read; nothing was saved")):
        save_uploads([tmp_path / "big.png"], tmp_path / "data", "huge")
    assert not (tmp_path / "data" / "huge").exists()
    with pytest.raises(InputError, match=re.escape("image 'big.png' is 12000 x 12000 pixels")):
        png_info(tmp_path / "big.png", verify=True)
    (tmp_path / "big-run.png").write_bytes(black_png(12000, 12000, chunk(b"tEXt", b'workbench\0{"format": 1}')))
    with pytest.raises(InputError, match=re.escape("run file 'big-run.png' is 12000 x 12000 pixels")):
        read_bundle(tmp_path / "big-run.png")
