"""The Unconditional tab shows a step's predicted noise ε and velocity v, as Text to image does, whatever the
model predicts: the images a person sees are the engine's views of the same run."""

import io

import numpy as np
import pytest
from PIL import Image

from engine.events import Done
from engine.sampling.unconditional import UnconditionalRequest
from tests.browser.test_unconditional_browser import tab  # noqa: F401  (the tab, its console errors checked)
from tests.helpers import fill_and_enter, image_src, pick, save_screenshot, wait_text

pytestmark = pytest.mark.browser

STEPS, SEED = 4, 11


def pixels(page, elem_id) -> np.ndarray:
    with Image.open(io.BytesIO(page.request.get(image_src(page, elem_id)).body())) as im:
        return np.asarray(im.convert("RGB")).astype(int)


def test_the_left_and_right_images_show_eps_and_v_of_the_step(tab, running_app):  # noqa: F811
    page = tab
    fill_and_enter(page.locator("#ddpm-steps input"), STEPS)
    fill_and_enter(page.locator("#ddpm-seed input"), SEED)
    pick(page, "ddpm-view-left", "Predicted noise ε")
    pick(page, "ddpm-view-right", "Predicted velocity v = √ᾱ ε − √(1 − ᾱ) x0")
    wait_text(page, "ddpm-image", "Predicted noise ε")  # the labels follow the choice
    wait_text(page, "ddpm-xt", "Predicted velocity v")
    page.locator("#ddpm-generate").click()
    wait_text(page, "ddpm-progress", "done", timeout=120_000)
    page.wait_for_function("() => ['ddpm-image', 'ddpm-xt'].every(id => {"
                           " const i = document.querySelector(`#${id} img`); return i && i.complete; })")

    # the same run through the engine: its last step's eps and v
    done = [e for e in running_app[1].iter_unconditional(UnconditionalRequest(num_inference_steps=STEPS, seed=SEED))
            if isinstance(e, Done)][-1]
    last = done.steps[-1]
    eps, v = last.views["eps"].array().astype(int), last.views["v"].array().astype(int)
    assert np.array_equal(pixels(page, "ddpm-image"), eps)
    assert np.array_equal(pixels(page, "ddpm-xt"), v)
    assert not np.array_equal(eps, v)
    save_screenshot(page, "unconditional-views", page.locator(".wb-previews:visible"))
