"""A person types a prompt, clicks Generate, watches the steps, and stops a second run."""

import re
import time

import pytest

from tests.helpers import fill_and_enter, watch_images

pytestmark = pytest.mark.browser


def set_number(page, label, value):
    fill_and_enter(page.get_by_label(label, exact=True).first, value)


def progress_text(page):
    return page.locator("#t2i-progress").inner_text()


def test_generate_shows_previews_then_final_image(page):
    page.locator("#t2i-prompt textarea").fill("a handwritten digit three")
    set_number(page, "Seed (-1 = random)", 5)
    steps = page.locator("input[aria-label='number input for Steps']")
    steps.fill("80")  # long enough to watch a few frames
    steps.press("Enter")
    page.locator("#t2i-generate").click()
    seen = watch_images(page, "t2i-image", "t2i-progress")
    assert "done" in progress_text(page)
    assert len(seen) >= 2, "the preview never changed before the final image"
    assert page.locator("#t2i-image img").first.is_visible()
    assert re.search(r'"seed"\s*:\s*5\b', page.locator("#t2i-info").inner_text()), "the seed used is not shown"
    assert "StableDiffusionPipeline" in page.locator("#t2i-code").inner_text()
    page.screenshot(path="/tmp/wb-txt2img.png")


def test_stop_ends_a_run(page):
    page.locator("#t2i-prompt textarea").fill("a long run")
    steps = page.locator("input[aria-label='number input for Steps']")
    steps.fill("150")
    steps.press("Enter")
    set_number(page, "Width (multiple of 8)", 128)
    set_number(page, "Height (multiple of 8)", 128)
    page.locator("#t2i-generate").click()
    page.wait_for_function(
        "() => /Step [1-9]\\d*\\/150/.test(document.querySelector('#t2i-progress').innerText)")
    page.locator("#t2i-stop").click()
    time.sleep(2.0)
    first = progress_text(page)
    time.sleep(1.5)
    assert progress_text(page) == first, "the run went on after Stop"
    step = int(re.search(r"Step (\d+)/150", first).group(1))
    assert step < 150 and "done" not in first
    # the next run starts normally
    steps.fill("3")
    steps.press("Enter")
    page.locator("#t2i-generate").click()
    page.wait_for_function("() => document.querySelector('#t2i-progress').innerText.includes('done')")
