"""A person samples in the Unconditional tab: a fast default, DDPM as trained one click away with its time
told first, a grid with gaps that the label leaves alone and that is saved, a scrubber back through the steps;
and the browser logs no error meanwhile."""

import re

import numpy as np
import pytest
from PIL import Image

from engine.sampling.unconditional import UnconditionalRequest
from tests.helpers import (app_page, fetched_pixels, field_value, image_src, in_viewport, pick, save_screenshot,
                           set_number, wait_image, wait_text)

pytestmark = pytest.mark.browser

GAP, GAP_GREY = 2, 128  # the grid's gap between tiles: 2 px of mid-grey


@pytest.fixture()
def tab(browser, running_app):
    """The Unconditional tab, with every console error and uncaught page error collected from the first load."""
    with app_page(browser, running_app[0]) as (page, errors):
        page.get_by_role("tab", name="Unconditional", exact=True).click()
        page.wait_for_selector("#ddpm-generate", state="visible")
        yield page
    assert errors == [], "the browser logged errors while the tab was used"


def wait_value(page, elem_id, expected):
    page.wait_for_function(f"() => document.querySelector('#{elem_id} input').value === {expected!r}")


def test_defaults_are_fast_and_ddpm_as_trained_is_one_click_with_its_time(tab, running_app):
    page = tab
    assert (field_value(page, "ddpm-scheduler"), field_value(page, "ddpm-steps")) == ("DDIM", "50")
    assert not page.locator("#ddpm-estimate").is_visible()  # a fast run needs no warning
    page.get_by_role("button", name="DDPM as trained (1000 steps)").click()
    wait_value(page, "ddpm-steps", "1000")
    assert field_value(page, "ddpm-scheduler") == "DDPM"
    # before it starts, the page says how long it will take here: measured seconds a step times 1000
    estimate = page.locator("#ddpm-estimate")
    page.wait_for_function("() => /about \\d+ s/.test(document.querySelector('#ddpm-estimate')?.innerText)")
    text = estimate.inner_text()
    measured = running_app[1].estimate_unconditional(UnconditionalRequest(model="digits-ddpm", scheduler="DDPM"),
                                                     probe=False)
    assert "DDPM, 1000 steps" in text and f"about {round(measured.seconds)} s" in text, text
    assert measured.num_inference_steps == 1000 and measured.measured_by in text
    # back to the fast sampler: its steps come back and the warning goes
    page.locator("#ddpm-scheduler input").click()
    page.get_by_role("option", name="DDIM", exact=True).click()
    wait_value(page, "ddpm-steps", "50")
    estimate.wait_for(state="hidden")


def rendered_box(page, elem_id) -> dict:
    """Where #elem_id's image is drawn (object-fit: contain), its label and its buttons, in page pixels."""
    return page.evaluate(f"""() => {{
        const root = document.querySelector('#{elem_id}'), img = root.querySelector('img');
        const r = img.getBoundingClientRect();
        const scale = Math.min(r.width / img.naturalWidth, r.height / img.naturalHeight);
        const w = img.naturalWidth * scale, h = img.naturalHeight * scale;
        const label = root.querySelector('[data-testid=block-label]').getBoundingClientRect();
        const buttons = root.querySelector('.icon-button-wrapper').getBoundingClientRect();
        return {{top: r.top + (r.height - h) / 2, left: r.left + (r.width - w) / 2, label_bottom: label.bottom,
                 label_right: label.right, buttons_bottom: buttons.bottom, buttons_left: buttons.left}};
    }}""")


def test_grid_with_gaps_is_saved_and_the_scrubber_goes_back_through_the_steps(tab, running_app):
    page = tab
    set_number(page, "ddpm-steps", 120)
    set_number(page, "ddpm-seed", 5)
    set_number(page, "ddpm-batch", 4)
    page.locator("#ddpm-generate").click()
    page.wait_for_function("() => document.querySelector('#ddpm-progress').innerText.includes('done')")
    page.wait_for_function("() => { const i = document.querySelector('#ddpm-image img');"
                           " return i && i.complete && i.naturalWidth === 66; }")  # 2x2 tiles of 32 px, 2 px gaps
    final_src = image_src(page, "ddpm-image")
    final = fetched_pixels(page, final_src)
    # the gaps between the tiles are the gap's grey, and the label and buttons leave the top row alone
    assert (final[32:32 + GAP] == GAP_GREY).all() and (final[:, 32:32 + GAP] == GAP_GREY).all()
    assert final[:32, :32].std() > 0 and final[34:, 34:].std() > 0
    for elem_id in ("ddpm-image", "ddpm-xt"):
        box = rendered_box(page, elem_id)
        assert box["label_bottom"] <= box["top"] + 0.5 and box["buttons_bottom"] <= box["top"] + 0.5, box
        assert box["label_right"] <= box["buttons_left"], "the label runs under the buttons"
    # the grid is saved beside its tiles, and the info lists it, relative to the server's folders
    info = page.locator("#ddpm-info").inner_text()
    grid_path = running_app[2] / re.search(r'"grid"\s*:\s*"(outputs/unconditional/[^"]+)"', info).group(1)
    tiles = re.findall(r'"([^"]+-5\.png)"', info)
    assert grid_path.name.endswith("-5-grid.png") and len(tiles) == 4
    assert all((running_app[2] / t).parent == grid_path.parent for t in tiles)
    with Image.open(grid_path) as saved:
        assert np.array_equal(np.asarray(saved.convert("RGB")).astype(int), final)

    # the scrubber: 60 of the 120 steps (one in two), from step 2 to the last
    scrub = page.locator("#ddpm-scrub")
    assert scrub.is_visible() and "60 of 120 kept, one in 2" in scrub.inner_text()
    slider = scrub.locator("input[type=range]")
    slider.focus()
    slider.press("Home")
    first_src = wait_image(page, "ddpm-image", final_src)
    page.wait_for_function("() => document.querySelector('#ddpm-progress').innerText.includes('Step 2/120')")
    early = fetched_pixels(page, first_src)
    assert early.shape != final.shape or np.abs(early - final).max() > 0
    first_xt = image_src(page, "ddpm-xt")
    slider.press("ArrowRight")
    page.wait_for_function("() => document.querySelector('#ddpm-progress').innerText.includes('Step 4/120')")
    second_src = wait_image(page, "ddpm-image", first_src)
    assert image_src(page, "ddpm-xt") != first_xt and not np.array_equal(fetched_pixels(page, second_src), early)
    # the last position is the final image again
    slider.press("End")
    page.wait_for_function("() => /Step 120\\/120.*final image/.test("
                           "document.querySelector('#ddpm-progress').innerText)")
    last_src = wait_image(page, "ddpm-image", second_src)
    assert np.array_equal(fetched_pixels(page, last_src), final)
    save_screenshot(page, "unconditional")


def test_a_model_picked_as_the_training_tab_hands_one_over_keeps_the_fast_default(tab, running_app):
    """The Training tab's "Sample from this checkpoint" picks the checkpoint in the model box: it opens with DDIM
    at 50 steps too, and the DDPM button offers that model's own training timesteps."""
    import shutil

    from engine.testing.tiny import tiny_ddpm_pipeline

    page, folder = tab, running_app[2] / "models" / "tiny-t100"
    tiny_ddpm_pipeline(0, sample_size=8, num_train_timesteps=100).save_pretrained(folder)
    try:
        page.locator("#ddpm-refresh").click()
        page.locator("#ddpm-model-row input").click()
        page.get_by_role("option", name="tiny-t100", exact=True).click()
        as_trained = page.get_by_role("button", name="DDPM as trained (100 steps)")
        as_trained.wait_for()
        assert (field_value(page, "ddpm-scheduler"), field_value(page, "ddpm-steps")) == ("DDIM", "50")
        as_trained.click()
        wait_value(page, "ddpm-steps", "100")
        assert field_value(page, "ddpm-scheduler") == "DDPM"
        page.wait_for_function("() => /DDPM, 100 steps: about \\d+ s/.test("
                               "document.querySelector('#ddpm-estimate')?.innerText)")
    finally:
        shutil.rmtree(folder)


def test_stop_says_where_it_stopped_keeps_the_frames_and_the_run_stays_in_view(tab):
    """Issue 22 (1, 2): Stop on a DDPM 1000-step run says "Stopped at step N of 1000" (no Error badges, the frames
    so far scrubbable); Generate, Stop and the previews are all on screen while it streams, unscrolled."""
    page = tab
    pick(page, "ddpm-scheduler", "DDPM")
    set_number(page, "ddpm-steps", 1000)
    set_number(page, "ddpm-seed", 7)
    page.locator("#ddpm-generate").click()
    page.wait_for_function("() => /Step ([3-9]|\\d\\d+)\\/1000/.test("
                           "document.querySelector('#ddpm-progress').innerText)")
    assert page.evaluate("window.scrollY") == 0
    for selector in ("#ddpm-generate", "#ddpm-stop", "#ddpm-image img", "#ddpm-xt img", "#ddpm-progress"):
        assert in_viewport(page, selector), f"{selector} is off screen while the run streams"
    page.locator("#ddpm-stop").click()
    text = wait_text(page, "ddpm-progress", "Stopped at step", timeout=20_000)
    step = int(re.search(r"Stopped at step (\d+) of 1000", text).group(1))
    assert 2 < step < 1000
    assert page.locator(".error").count() == 0, "an Error badge covers the page"
    assert re.search(rf'"stopped_at_step"\s*:\s*{step}\b', page.locator("#ddpm-info").inner_text())
    assert image_src(page, "ddpm-image") and image_src(page, "ddpm-xt"), "the frames so far were lost"
    scrub = page.locator("#ddpm-scrub")
    assert scrub.is_visible() and "shown before Stop" in scrub.inner_text()
    before = image_src(page, "ddpm-image")
    slider = scrub.locator("input[type=range]")
    slider.focus()
    slider.press("Home")
    wait_image(page, "ddpm-image", before)
    wait_text(page, "ddpm-progress", "scrubbed")
