"""A person samples from a DDPM model and watches it denoise; then watches an image drown in noise."""

import pytest

from tests.helpers import image_src, open_tab, pick, set_number, wait_until, watch_images

pytestmark = pytest.mark.browser


def test_generate_shows_previews_then_the_grid(page):
    open_tab(page, "Unconditional")
    pick(page, "ddpm-model-row", "digits-ddpm")
    page.wait_for_function("() => document.querySelector('#ddpm-steps input').value === '50'")  # DDIM: 50
    pick(page, "ddpm-scheduler", "DDPM")
    page.wait_for_function("() => document.querySelector('#ddpm-steps input').value === '1000'")  # DDPM: T
    pick(page, "ddpm-scheduler", "DDIM")
    page.wait_for_function("() => document.querySelector('#ddpm-steps input').value === '50'")
    set_number(page, "ddpm-steps", 60)
    set_number(page, "ddpm-seed", 5)
    set_number(page, "ddpm-batch", 4)
    page.locator("#ddpm-generate").click()
    seen = watch_images(page, "ddpm-image", "ddpm-progress")
    assert "done" in page.locator("#ddpm-progress").inner_text()
    assert len(seen) >= 2, "the preview never changed before the final image"
    assert image_src(page, "ddpm-xt"), "no x_t preview"
    # "done" can reach the page before the final PNG has loaded: wait for the image a person would see.
    page.wait_for_function("() => { const i = document.querySelector('#ddpm-image img');"
                           " return i && i.complete && i.naturalWidth > 0; }")
    size = page.evaluate("() => { const i = document.querySelector('#ddpm-image img');"
                         " return [i.naturalWidth, i.naturalHeight]; }")
    assert size == [66, 66]  # four 32 px images as a 2x2 grid, 2 px between them
    assert "tensor([" in page.locator("#ddpm-timesteps textarea").input_value()
    assert "Step 60/60" in page.locator("#ddpm-progress").inner_text()
    page.screenshot(path="/tmp/wb-unconditional.png")


def strip_sources(page):
    return [img.get_attribute("src") for img in page.locator("#noise-strip img").all()]


def plot_picture(page, index):
    return page.locator(f"#noise-plot-{index}").screenshot()


def steady_plot_picture(page, index):
    """Plot ``index`` as it looks once drawn: the first of two pictures in a row that are the same."""
    return wait_until(lambda: (first := plot_picture(page, index)) == plot_picture(page, index) and first,
                      what=f"plot {index} drawn")


def test_changing_the_schedule_changes_the_strip_and_the_plots(page):
    open_tab(page, "Noise")
    page.locator("#noise-show").click()
    page.wait_for_function("() => document.querySelectorAll('#noise-strip img').length >= 8")
    page.wait_for_selector("#noise-plot-1 svg g.mark-line path")
    before_strip, before_plot = strip_sources(page), steady_plot_picture(page, 1)
    pick(page, "noise-beta-schedule", "squaredcos_cap_v2")
    after_strip = wait_until(lambda: (found := strip_sources(page))[:8] != before_strip[:8] and found,
                             what="the strip redrawn for the new schedule")
    assert len(after_strip) >= 8
    wait_until(lambda: steady_plot_picture(page, 1) != before_plot, what="the alpha_bar plot redrawn")
    page.screenshot(path="/tmp/wb-noise.png", full_page=True)
