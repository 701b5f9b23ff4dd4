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
