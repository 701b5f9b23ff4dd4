"""Every tab as a newcomer meets it: no console errors, dark mode one click away, and a run that waits says why."""

import time

import pytest

from tests.helpers import console_errors

pytestmark = pytest.mark.browser

TABS = ("Text to image", "Unconditional", "Noise", "Compare", "Training", "History", "PNG Info")


def test_every_tab_opens_without_console_errors(page):
    errors = console_errors(page)
    for name in TABS:
        page.get_by_role("tab", name=name, exact=True).click()
        time.sleep(1.5)  # let the tab's components mount and draw
    page.get_by_role("tab", name="Text to image", exact=True).click()
    time.sleep(0.5)
    assert errors == []


def test_dark_mode_is_a_click_away(page):
    assert not page.evaluate("() => document.body.classList.contains('dark')")
    page.locator("#dark-mode").click()
    page.wait_for_function("() => document.body.classList.contains('dark')")
    page.locator("#dark-mode").click()
    page.wait_for_function("() => !document.body.classList.contains('dark')")


def test_a_run_behind_another_tabs_run_says_what_it_waits_for(page, running_app):
    from gradio_client import Client

    client = Client(running_app[0], verbose=False, download_files=False)
    job = client.submit(model="digits-ddpm", scheduler="DDPM", steps=1000, seed=1, batch_size=16, api_name="/ddpm")
    try:
        deadline = time.time() + 60
        while not any("Step" in str(o[2]) for o in job.outputs()) and time.time() < deadline:
            time.sleep(0.05)
        page.locator("#t2i-generate").click()
        page.wait_for_function("() => document.querySelector('#t2i-progress').innerText"
                               ".includes('waiting for an unconditional run to finish')")
    finally:
        job.cancel()
        client.close()
    page.wait_for_function("() => document.querySelector('#t2i-progress').innerText.includes('done')")
