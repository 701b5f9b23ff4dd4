"""Every tab as a newcomer meets it: no console errors, dark mode one click away, and a run that waits says why."""

import pytest

from tests.helpers import TAB_SHOWN, app_page, console_errors, in_viewport, open_tab, pick, wait_text, wait_until

pytestmark = pytest.mark.browser

TABS = ("Text to image", "Unconditional", "Noise", "Compare", "Training", "History", "PNG Info")


def test_every_tab_opens_without_console_errors(page):
    errors = console_errors(page)
    for name in TABS:
        open_tab(page, name)
        page.locator(TAB_SHOWN[name]).first.wait_for(state="visible")  # the tab's components mounted and drawn
        if name == "Noise":
            page.wait_for_selector("#noise-plot-3 svg g.mark-line path")  # and its plots, drawn after them
    open_tab(page, "Text to image")
    page.locator(TAB_SHOWN["Text to image"]).wait_for(state="visible")
    assert errors == []


def test_dark_mode_is_a_click_away(page):
    assert not page.evaluate("() => document.body.classList.contains('dark')")
    page.locator("#dark-mode").click()
    page.wait_for_function("() => document.body.classList.contains('dark')")
    page.locator("#dark-mode").click()
    page.wait_for_function("() => !document.body.classList.contains('dark')")
    # Issue 22 (8): a reload keeps the mode picked.
    page.locator("#dark-mode").click()
    page.wait_for_function("() => document.body.classList.contains('dark')")
    page.reload()
    page.wait_for_selector("#t2i-generate")
    page.wait_for_function("() => document.body.classList.contains('dark')")
    page.locator("#dark-mode").click()
    page.reload()
    page.wait_for_selector("#t2i-generate")
    assert not page.evaluate("() => document.body.classList.contains('dark')")


def test_a_run_behind_another_tabs_run_says_what_it_waits_for(page, running_app):
    from gradio_client import Client

    client = Client(running_app[0], verbose=False, download_files=False)
    job = client.submit(model="digits-ddpm", scheduler="DDPM", steps=1000, seed=1, batch_size=16, api_name="/ddpm")
    try:
        wait_until(lambda: any("Step" in str(o[2]) for o in job.outputs()), what="the /ddpm run's first step")
        page.locator("#t2i-generate").click()
        wait_text(page, "t2i-progress", "waiting for an unconditional run to finish")
    finally:
        job.cancel()
        client.close()
    wait_text(page, "t2i-progress", "done")


# Each tab that runs something: its run button and what the run shows (progress line, first previews).
RUN_AND_PREVIEWS = {
    "Text to image": ("#t2i-generate", "#t2i-stop", "#t2i-progress", "#t2i-image", "#t2i-xt"),
    "Unconditional": ("#ddpm-generate", "#ddpm-stop", "#ddpm-progress", "#ddpm-image", "#ddpm-xt"),
    "Noise": ("#i2i-run", "#i2i-stop", "#i2i-progress", "#i2i-image"),  # img2img, its section scrolled to
    "Compare": ("#cmp-run", "#cmp-stop", "#cmp-progress", "#cmp-image-0"),
    "Training": ("#train-start", "#train-stop", "#train-progress"),
}


@pytest.mark.parametrize("viewport", [{"width": 1400, "height": 1000}, {"width": 420, "height": 900}],
                         ids=["1400x1000", "420x900"])
def test_run_buttons_and_previews_are_on_screen_together(browser, running_app, viewport):
    """Issue 22 (2): in every tab that runs something, Generate (or its like), Stop and the previews are all on
    screen at once, wide and narrow: pressing Generate leaves the run in view."""
    with app_page(browser, running_app[0], viewport) as (page, _):
        for tab, selectors in RUN_AND_PREVIEWS.items():
            open_tab(page, tab)
            page.locator(selectors[0]).wait_for(state="visible")
            if tab == "Noise":
                page.evaluate("() => document.querySelector('#i2i-section').scrollIntoView()")
            else:
                page.evaluate("() => window.scrollTo(0, 0)")
            off = [s for s in selectors if not in_viewport(page, s)]
            assert not off, f"{tab} at {viewport['width']} px: {off} off screen"


def test_lists_are_filled_when_the_page_loads_and_a_tab_opens(page, running_app):
    """Issue 22 (4): a model (a training checkpoint) and a data folder made after the server built the page are in
    Unconditional's model list, the Noise tab's, and Training's Data and "Start from", with no Refresh pressed."""
    import shutil

    from PIL import Image

    from engine.testing.tiny import tiny_ddpm_pipeline

    model, data = running_app[2] / "models" / "fresh-ddpm", running_app[2] / "data" / "fresh-data"
    tiny_ddpm_pipeline(0, sample_size=8, num_train_timesteps=100).save_pretrained(model)
    data.mkdir()
    Image.new("RGB", (8, 8), "white").save(data / "a.png")
    try:
        page.reload()
        page.wait_for_selector("#t2i-generate")
        open_tab(page, "Unconditional")
        pick(page, "ddpm-model-row", "fresh-ddpm")
        open_tab(page, "Noise")
        pick(page, "noise-model", "fresh-ddpm")
        open_tab(page, "Training")
        pick(page, "train-data", "fresh-data")
        pick(page, "train-start-from", "fresh-ddpm")
    finally:
        shutil.rmtree(model)
        shutil.rmtree(data)
