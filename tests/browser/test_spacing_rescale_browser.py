"""Text to image's timestep spacing and guidance rescale, as a person sets them."""

import pytest
from playwright.sync_api import expect

from tests.helpers import fill_and_enter

pytestmark = pytest.mark.browser

WAIT_MS = 120_000  # a run of the built-in on a busy 2-core machine


def test_a_bad_guidance_rescale_is_said_beside_it_and_a_good_one_runs_with_trailing_spacing(page):
    fill_and_enter(page.locator("#t2i-steps input[type='number']"), 3)
    fill_and_enter(page.locator("#t2i-guidance-rescale input"), 1.5)
    page.locator("#t2i-generate").click()
    message = "guidance rescale must be a number from 0 to 1; got 1.5"
    expect(page.locator("#t2i-guidance-rescale")).to_contain_text(message, timeout=WAIT_MS)
    expect(page.locator("#t2i-progress")).to_contain_text(message, timeout=WAIT_MS)

    fill_and_enter(page.locator("#t2i-guidance-rescale input"), 0.7)
    page.locator("#t2i-spacing input").click()
    page.get_by_role("option", name="trailing", exact=True).click()
    page.locator("#t2i-generate").click()
    expect(page.locator("#t2i-code")).to_contain_text("guidance_rescale=0.7", timeout=WAIT_MS)
    expect(page.locator("#t2i-code")).to_contain_text("timestep_spacing='trailing'", timeout=WAIT_MS)
    expect(page.locator("#t2i-guidance-rescale")).not_to_contain_text(message)


def test_img2img_takes_spacing_and_rescale_from_the_page(page):
    """The Noise tab's way back: the spacing moves the start line (the t the strength reaches on the spaced
    schedule); a bad phi is said beside its field; good ones run and reach the code box."""
    page.get_by_role("tab", name="Noise", exact=True).click()
    fill_and_enter(page.locator("#i2i-steps input[type='number']"), 4)
    page.locator("#i2i-scheduler input").click()
    page.get_by_role("option", name="DDIM", exact=True).click()
    start = page.locator("#i2i-start")
    # digits-sd's own spacing is linspace: DDIM's 4 steps are 999, 666, 333, 0, and strength 0.6 runs the last 2
    expect(start).to_contain_text("t = 333 of 1000, then 2 of 4 steps", timeout=WAIT_MS)
    page.locator("#i2i-spacing input").click()
    page.get_by_role("option", name="trailing", exact=True).click()
    expect(start).to_contain_text("t = 499 of 1000, then 2 of 4 steps", timeout=WAIT_MS)  # 999, 749, 499, 249

    fill_and_enter(page.locator("#i2i-guidance-rescale input"), 1.5)
    page.locator("#i2i-run").click()
    message = "guidance rescale must be a number from 0 to 1; got 1.5"
    expect(page.locator("#i2i-guidance-rescale")).to_contain_text(message, timeout=WAIT_MS)
    fill_and_enter(page.locator("#i2i-guidance-rescale input"), 0.7)
    page.locator("#i2i-run").click()
    expect(page.locator("#i2i-code")).to_contain_text("guidance_rescale=0.7", timeout=WAIT_MS)
    expect(page.locator("#i2i-code")).to_contain_text("timestep_spacing='trailing'", timeout=WAIT_MS)
    expect(page.locator("#i2i-guidance-rescale")).not_to_contain_text(message)
