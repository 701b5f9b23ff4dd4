"""A person types a prompt, sees its tokens as chips, clicks one, runs with the attention view, and scrubs: the map
follows the step and the chip picked; a word not in the prompt is said beside the pick box."""

import numpy as np
import pytest

from tests.helpers import console_errors, fill_and_enter, image_src, save_screenshot, shown_pixels, wait_text

pytestmark = pytest.mark.browser

ATTENTION = "attention: where the picked word lands (heat map over x0)"


def scrub_to(page, step, total):
    fill_and_enter(page.locator("#t2i-scrub input[type='number']"), step)
    wait_text(page, "t2i-progress", f"Step {step}/{total}")


def test_chips_pick_a_word_and_its_map_follows_the_steps(page):
    errors = console_errors(page)
    prompt = page.locator("#t2i-prompt textarea")
    prompt.fill("a handwritten digit three")
    wait_text(page, "t2i-chips", "three")
    wait_text(page, "t2i-chips", "6 / 16 tokens")
    pick_box = page.locator("#t2i-attn-pick input, #t2i-attn-pick textarea").first
    pick_box.fill("zebra")
    pick_box.press("Enter")
    wait_text(page, "t2i-chips", "'zebra' is not a word of the prompt; its words are 'a', 'handwritten', 'digit', "
                                 "'three' (or give token indices, 0 to 5)")
    page.locator("#t2i-chips [data-index='4']").click()  # the chip of "three"
    page.wait_for_function("() => document.querySelector('#t2i-chips [data-index=\"4\"]')"
                           ".classList.contains('wb-chip-picked')")
    assert pick_box.input_value() == "4"

    page.locator("#t2i-view-right input").click()
    page.locator("#t2i-view-right").get_by_role("option", name=ATTENTION, exact=True).click()
    steps = page.locator("input[aria-label='number input for Steps']")
    steps.fill("12")
    steps.press("Enter")
    page.locator("#t2i-seed input").fill("3")
    page.locator("#t2i-generate").click()
    wait_text(page, "t2i-progress", "done")
    assert "Attention: where the picked word lands" in page.locator("#t2i-xt").inner_text()

    before = image_src(page, "t2i-xt")
    scrub_to(page, 2, 12)
    early = shown_pixels(page, "t2i-xt", other_than=before)
    before = image_src(page, "t2i-xt")
    scrub_to(page, 11, 12)
    late = shown_pixels(page, "t2i-xt", other_than=before)
    before = image_src(page, "t2i-xt")
    assert np.abs(early - late).max() > 30  # the map (and the x0 under it) moved with the step
    assert ((late[..., 0] - late[..., 2]) > 60).any()  # inferno's warm end: a heat map, not a grey preview
    save_screenshot(page, "attention")
    page.locator("#t2i-chips [data-index='1']").click()  # "a": another word's map at the same step
    other = shown_pixels(page, "t2i-xt", other_than=before)
    assert "Step 11/12" in page.locator("#t2i-progress").inner_text()
    assert np.abs(other - late).max() > 30
    assert errors == []
