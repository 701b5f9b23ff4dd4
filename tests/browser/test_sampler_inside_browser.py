"""A person sees what the sampler does: the Compare grid fills in and scrubs together, Text to image shows the
views of a step it is asked for, and the Noise tab's way back returns the denoised image beside the original."""

import re

import numpy as np
import pytest

from tests.helpers import (console_errors, fill_and_enter, image_src, open_tab, pick, save_screenshot, shown_pixels,
                           type_into_slider, wait_text, wait_until, watch)

pytestmark = pytest.mark.browser


def captions(page, n):
    return [page.locator(f"#cmp-caption-{i}").inner_text() for i in range(n)]


def absolute_folders(running_app) -> set[str]:
    """The server's absolute folders that nothing a person reads may name (issue 22, 6)."""
    from engine.models.registry import BUILTIN_DIR

    return {str(running_app[2]), str(running_app[2].resolve()), str(BUILTIN_DIR.resolve())}


def test_compare_grid_fills_in_then_every_column_scrubs_together(page, running_app):
    errors = console_errors(page)
    open_tab(page, "Compare")
    page.locator("#cmp-run").click()
    # The grid fills in column by column: a moment where the first column shows an image and the last none yet.
    states = watch(page, lambda: tuple(bool(image_src(page, f"cmp-image-{i}")) for i in range(3)), "cmp-progress")
    wait_text(page, "cmp-progress", "done")
    assert (True, False, False) in states or (True, True, False) in states, f"the grid never filled in: {states}"
    finals = [shown_pixels(page, f"cmp-image-{i}") for i in range(3)]
    for text, value in zip(captions(page, 3), ("DDIM", "Euler a", "DPM++ 2M Karras")):
        assert re.fullmatch(rf"{re.escape(value)}: \d\.\d{{3}} s a step, 25 steps", text.strip()), text
    assert not np.array_equal(finals[0], finals[2])
    info = page.locator("#cmp-info").inner_text()
    assert '"outputs/txt2img/' in info and not [f for f in absolute_folders(running_app) if f in info], info

    type_into_slider(page, "cmp-scrub", 50)
    halfway = wait_until(lambda: (found := captions(page, 3)) and all("σ" in c for c in found) and found,
                         what="every column's caption at the scrubbed step")
    ts = [float(re.search(r"t = ([\d.]+)", c).group(1)) for c in halfway]
    assert all(abs(t - 500) <= 40 for t in ts), halfway  # every column at the same point of the trajectory
    assert all(re.match(r"step \d+/25 · t = [\d.]+ · σ = [\d.]+", c) for c in halfway), halfway
    assert not np.array_equal(shown_pixels(page, "cmp-image-0"), finals[0])  # a frame on the way, not the end
    save_screenshot(page, "compare")
    type_into_slider(page, "cmp-scrub", 100)
    wait_until(lambda: "final image" in captions(page, 1)[0], what="the first column's final image")
    assert np.array_equal(shown_pixels(page, "cmp-image-0"), finals[0])
    assert errors == []


def test_compare_says_a_bad_value_beside_the_values(page):
    open_tab(page, "Compare")
    box = page.locator("#cmp-values input")
    box.fill("Bogus")
    box.press("Enter")
    page.locator("#cmp-run").click()
    message = "scheduler value 'Bogus' is not one this axis takes"
    wait_text(page, "cmp-values", message, timeout=60_000)
    wait_text(page, "cmp-progress", message, timeout=60_000)


def is_heat_map(image: np.ndarray) -> bool:
    """Inferno's colours: red well above blue somewhere (a grey x_t or eps preview has R = G = B or close)."""
    return bool(((image[..., 0] - image[..., 2]) > 60).any())


def chart_lines(page, chart: int) -> list:
    """[series, points] of each line chart #t2i-chart-``chart`` draws."""
    return page.locator(f"#t2i-chart-{chart} svg polyline").evaluate_all(
        "ls => ls.map(l => [l.dataset.series, l.getAttribute('points').trim().split(' ').length])")


def test_views_pick_what_streams_and_scrubbing_shows_every_view(page):
    errors = console_errors(page)
    pick(page, "t2i-view-right", "guidance Δ = ε_text − ε_uncond (heat map)")
    fill_and_enter(page.locator("input[aria-label='number input for Steps']"), 12)
    page.locator("#t2i-generate").click()
    wait_text(page, "t2i-progress", "done")
    assert "Guidance Δ" in page.locator("#t2i-xt").inner_text()
    wait_until(lambda: is_heat_map(shown_pixels(page, "t2i-xt")), timeout=30, what="a heat map in the right image")
    # the live charts drew their lines: guidance rms alone (a run with guidance), then sigma and the latent's std,
    # each with a point per step
    for chart, names in ((0, ["guidance rms"]), (1, ["sigma", "latent std"])):
        wait_until(lambda: chart_lines(page, chart) == [[name, 12] for name in names], timeout=30,
                   what=f"chart {chart}'s lines {names}, 12 points each")
    save_screenshot(page, "txt2img-views")
    # after the run, any view of any step: the predicted noise at step 4, on the left
    pick(page, "t2i-view-left", "predicted noise ε (after guidance)")
    wait_text(page, "t2i-image", "Predicted noise ε")
    box = page.locator("#t2i-scrub input[type='number']")
    box.fill("4")
    box.press("Enter")
    wait_text(page, "t2i-progress", "Step 4/12")
    eps = shown_pixels(page, "t2i-image")
    assert not is_heat_map(eps) and eps.std() > 0
    pick(page, "t2i-view-right", "noisy latent x_t after the step")
    wait_text(page, "t2i-xt", "Noisy latent x_t")
    wait_until(lambda: not is_heat_map(shown_pixels(page, "t2i-xt")), timeout=30,
               what="the right image without the heat map")
    assert errors == []


def test_img2img_denoises_from_the_strengths_t_beside_the_original(page, running_app):
    errors = console_errors(page)
    open_tab(page, "Noise")
    page.wait_for_selector("#noise-plot-3 svg g.mark-line path")
    type_into_slider(page, "i2i-strength", 0.8)
    wait_text(page, "i2i-start", "Strength 0.8")
    t = int(re.search(r"t = (\d+)", page.locator("#i2i-start").inner_text()).group(1))
    assert 700 <= t <= 850
    # the tab's slider t (and its frame and plots) moved to where the strength starts
    page.wait_for_function(f"() => document.querySelector('#noise-t input[data-testid=\"number-input\"]').value"
                           f" === '{t}'")
    wait_text(page, "noise-single", f"t = {t}")
    page.locator("#i2i-run").click()
    wait_text(page, "i2i-progress", "done")
    assert image_src(page, "i2i-original"), "the original is not shown beside the result"
    result = shown_pixels(page, "i2i-image")
    assert result.std() > 0
    assert re.search(r'"start_timestep"\s*:\s*' + str(t), page.locator("#i2i-info").inner_text())
    code, info = page.locator("#i2i-code").inner_text(), page.locator("#i2i-info").inner_text()
    assert "StableDiffusionImg2ImgPipeline" in code and "builtin_models/digits-sd" in code
    assert '"outputs/img2img/' in info
    assert not [f for f in absolute_folders(running_app) if f in code + info], code + info
    page.locator("#i2i-strip-run").click()
    wait_until(lambda: page.locator("#i2i-strip .caption-label").count() >= 5, timeout=120,
               what="the strength strip's five images")
    labels = page.locator("#i2i-strip .caption-label").all_inner_texts()
    assert [label.split(" · ")[0] for label in labels] == ["0.2", "0.4", "0.6", "0.8", "1"]
    assert all(re.fullmatch(r"[\d.]+ · t \d+ · -?\d\.\d\d", label) for label in labels), labels
    save_screenshot(page, "img2img", page.locator("#i2i-section"))  # the way back, below the forward process
    assert errors == []


def test_img2img_says_a_bad_strength_beside_it(page):
    open_tab(page, "Noise")
    type_into_slider(page, "i2i-strength", 0)
    message = "strength must be a number above 0 and at most 1; got 0"
    # As a person sees it: the line under the slider answers the new strength before Run is clicked.
    wait_text(page, "i2i-start", message, timeout=60_000)
    page.locator("#i2i-run").click()
    wait_text(page, "i2i-strength", message, timeout=60_000)
    wait_text(page, "i2i-progress", message, timeout=60_000)


def test_compare_hides_the_field_its_axis_sets(page):
    """Issue 22 (9): comparing schedulers, the Scheduler field is not shown (each column's value sets it); along
    steps, the Steps slider goes and the Scheduler field is back."""
    open_tab(page, "Compare")
    page.locator("#cmp-run").wait_for(state="visible")
    assert not page.locator("#cmp-scheduler").is_visible() and page.locator("#cmp-steps").is_visible()
    page.locator("#cmp-axis").get_by_text("steps", exact=True).click()
    page.locator("#cmp-scheduler").wait_for(state="visible")
    page.locator("#cmp-steps").wait_for(state="hidden")
