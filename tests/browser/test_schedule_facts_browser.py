"""The Noise tab's readouts of what the schedule leaves at T follow the schedule a person picks."""

import pytest
from playwright.sync_api import expect

from tests.helpers import save_screenshot

pytestmark = pytest.mark.browser

WAIT_MS = 60_000  # each change also redraws the strip and the plots in the tab's one queue: slow on a busy CPU


def test_the_readouts_change_with_the_schedule(page):
    page.get_by_role("tab", name="Noise", exact=True).click()
    facts = page.locator("#noise-facts")
    # DDPM's linear schedule, as the tab opens: Table 1's row beside the schedule's own figures.
    expect(facts).to_contain_text("√ᾱ_T = 0.00635282", timeout=WAIT_MS)
    expect(facts).to_contain_text("Lin et al. 2023, Table 1 (DDPM linear): √ᾱ_T = 0.006353 · SNR(T) = 0.000040",
                                  timeout=WAIT_MS)
    expect(facts).to_contain_text("leading (used)", timeout=WAIT_MS)

    # Zero terminal SNR: nothing of the image is left at T.
    page.locator("#noise-rescale input").check()
    expect(facts).to_contain_text("√ᾱ_T = 0 · √(1 - ᾱ_T) = 1 · SNR(T) = 0", timeout=WAIT_MS)
    expect(facts).not_to_contain_text("Table 1", timeout=WAIT_MS)
    page.locator("#noise-rescale input").uncheck()

    # Stable Diffusion's schedule: its Table 1 row.
    page.locator("#noise-beta-schedule input").click()
    page.get_by_role("option", name="scaled_linear", exact=True).click()
    for elem_id, value in (("noise-beta-start", "0.00085"), ("noise-beta-end", "0.012")):
        box = page.locator(f"#{elem_id} input")
        box.fill(value)
        box.press("Enter")
    expect(facts).to_contain_text(
        "Lin et al. 2023, Table 1 (Stable Diffusion): √ᾱ_T = 0.068265 · SNR(T) = 0.004682", timeout=WAIT_MS)

    # Another spacing is marked as the one used, and trailing starts at T - 1.
    page.locator("#noise-facts-spacing input").click()
    page.get_by_role("option", name="trailing", exact=True).click()
    expect(facts).to_contain_text("trailing (used)", timeout=WAIT_MS)
    expect(facts.locator("tr", has_text="trailing")).to_contain_text("999, 899", timeout=WAIT_MS)
    expect(facts.locator("tr", has_text="trailing")).to_contain_text("starts at T - 1", timeout=WAIT_MS)
    save_screenshot(page, "schedule-facts", facts)
