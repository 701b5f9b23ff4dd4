"""The Noise tab's way back keeps an uploaded image's shape: a person uploads a 64x48 photo, reads the size the run
will make, runs it at the image's own size and gets a 64x48 result; a width that is not a multiple of 8 is said
beside the field."""

import re

import pytest
from PIL import Image

from tests.helpers import console_errors, fill_and_enter, open_noise_tab, shown_image, wait_text

pytestmark = pytest.mark.browser


@pytest.fixture()
def photo_64x48(tmp_path):
    from sklearn.datasets import load_sample_image

    path = tmp_path / "photo-64x48.png"
    Image.fromarray(load_sample_image("china.jpg")).resize((64, 48), Image.LANCZOS).save(path)
    return path


def test_an_uploaded_non_square_image_comes_back_at_its_own_shape(page, photo_64x48):
    errors = console_errors(page)
    open_noise_tab(page)
    page.locator("#noise-image input[type=file]").set_input_files(str(photo_64x48))
    # Nothing typed: the image's 4:3 at about digits-sd's 32x32 pixels (36.9 x 27.7, to multiples of 8).
    wait_text(page, "i2i-size", "Runs at 40x24: the image's 64x48 aspect at about the model's 32x32 pixels; "
                                "the 64x48 image is stretched to it.")
    fill_and_enter(page.locator("#i2i-width input"), 64)
    fill_and_enter(page.locator("#i2i-height input"), 48)
    wait_text(page, "i2i-size", "Runs at 64x48: width and height as given; the image is at that size already, "
                                "so it goes in untouched.")
    page.locator("#i2i-run").click()
    wait_text(page, "i2i-progress", "done")
    assert shown_image(page, "i2i-image").size == (64, 48)
    info = page.locator("#i2i-info").inner_text()
    assert re.search(r'"width"\s*:\s*64\b', info) and re.search(r'"height"\s*:\s*48\b', info), info
    assert "done · 64x48" in page.locator("#i2i-progress").inner_text()
    assert errors == []


def test_a_width_not_a_multiple_of_8_is_said_beside_it(page):
    open_noise_tab(page)
    fill_and_enter(page.locator("#i2i-width input"), 60)
    message = "width must be a multiple of 8 (8 to 2048); got 60"
    wait_text(page, "i2i-size", message)  # the line under the fields answers before Run is clicked
    page.locator("#i2i-run").click()
    wait_text(page, "i2i-width", message)
    assert message not in page.locator("#i2i-height").inner_text()
    # corrected, the run goes through at that width
    fill_and_enter(page.locator("#i2i-width input"), 64)
    page.locator("#i2i-run").click()
    wait_text(page, "i2i-progress", "done · 64x")
    page.wait_for_function(f"() => !document.querySelector('#i2i-width').innerText.includes({message!r})")


def test_an_unconditional_model_says_it_runs_at_its_own_size(page):
    """SDEdit on digits-ddpm: the size fields are greyed out and the line says the model's fixed size."""
    open_noise_tab(page)
    fill_and_enter(page.locator("#i2i-width input"), 64)
    page.locator("#i2i-model-row input").click()
    page.get_by_role("option", name="digits-ddpm", exact=True).click()
    wait_text(page, "i2i-size", "Runs at 32x32: the unconditional model's fixed size (SDEdit takes no other); "
                                "the 640x427 image is stretched to it.")
    assert page.locator("#i2i-width input").is_disabled() and page.locator("#i2i-height input").is_disabled()
    assert page.locator("#i2i-width input").input_value() == "0"  # the width typed for the other model is let go
