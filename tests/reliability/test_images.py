"""Images of every kind PIL opens become the right 8-bit pixels: a 16-bit PNG is not turned white."""

import numpy as np
from PIL import Image

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
