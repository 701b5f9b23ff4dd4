"""A seed blend, as a person compares it: the grid fills in from seed to second seed, and the norm chart shows
why a lerp midpoint washes out."""

import pytest
from playwright.sync_api import expect

from engine.models.configs import latent_shape
from engine.models.registry import BUILTIN_DIR
from engine.sampling.blend import noise_norms
from tests.helpers import fill_and_enter, save_screenshot

pytestmark = pytest.mark.browser

WAIT_MS = 180_000  # three runs of the built-in on a busy 2-core machine


def test_a_seed_blend_compare_fills_its_grid_and_draws_the_norm_chart(page):
    page.get_by_role("tab", name="Compare", exact=True).click()
    page.locator("#cmp-axis").get_by_label("seed blend", exact=True).check()
    for value in ("0", "0.5", "1"):  # the axis's own values, offered when it is picked
        expect(page.locator("#cmp-values")).to_contain_text(value, timeout=WAIT_MS)
    fill_and_enter(page.locator("#cmp-steps input[type='number']"), 4)
    fill_and_enter(page.locator("#cmp-seed-b input"), 12)
    page.locator("#cmp-run").click()
    expect(page.locator("#cmp-progress")).to_contain_text("done", timeout=WAIT_MS)
    for i in range(3):
        expect(page.locator(f"#cmp-image-{i} img")).to_have_count(1, timeout=WAIT_MS)
    chart = page.locator("#cmp-norms")
    expect(chart).to_contain_text("||noise|| / √d along the blend t", timeout=WAIT_MS)
    expect(chart.locator("polyline[data-series='lerp']")).to_have_count(1, timeout=WAIT_MS)
    expect(chart.locator("polyline[data-series='slerp']")).to_have_count(1, timeout=WAIT_MS)
    # The figures of the run's own noise: digits-sd at its 32 px, a (1, 4, 8, 8) latent, so 256 numbers a seed.
    norms = noise_norms(7, 12, latent_shape(BUILTIN_DIR / "digits-sd", 32, 32), [0.5])
    expect(chart).to_contain_text(f"At t = 0.5: lerp {norms['lerp'][0]:.3f}, slerp {norms['slerp'][0]:.3f}.",
                                  timeout=WAIT_MS)
    save_screenshot(page, "seed-blend", page.locator(".wb-previews:visible"))



def test_a_blend_value_outside_0_to_1_is_said_beside_the_values(page):
    page.get_by_role("tab", name="Compare", exact=True).click()
    page.locator("#cmp-axis").get_by_label("seed blend", exact=True).check()
    expect(page.locator("#cmp-values")).to_contain_text("0.5", timeout=WAIT_MS)
    box = page.locator("#cmp-values input")
    box.fill("1.5")
    box.press("Enter")
    page.locator("#cmp-run").click()
    message = "seed blend value 1.5 is not one this axis takes: seed blend must be a number from 0 to 1; got 1.5"
    expect(page.locator("#cmp-values")).to_contain_text(message, timeout=WAIT_MS)
    expect(page.locator("#cmp-progress")).to_contain_text(message, timeout=WAIT_MS)


def test_a_seed_blend_of_an_unconditional_model_is_said_beside_the_model(page):
    page.get_by_role("tab", name="Compare", exact=True).click()
    page.locator("#cmp-model input").click()
    page.get_by_role("option", name="digits-ddpm", exact=True).click()
    page.locator("#cmp-axis").get_by_label("seed blend", exact=True).check()
    expect(page.locator("#cmp-values")).to_contain_text("0.5", timeout=WAIT_MS)
    page.locator("#cmp-run").click()
    message = ("seed blend takes a text-to-image model: an unconditional run's noise is a batch of images, "
               "not blended here")
    expect(page.locator("#cmp-model")).to_contain_text(message, timeout=WAIT_MS)
    expect(page.locator("#cmp-progress")).to_contain_text(message, timeout=WAIT_MS)
