"""A person's first minutes in the Noise tab: it opens drawn, every field redraws, nothing breaks."""

import math
import re

import pytest
from diffusers import DDPMScheduler

from tests.conftest_app import free_port
from tests.helpers import (app_page, field_value, fill_and_enter, image_src, open_noise_tab, open_tab, pick,
                           save_screenshot, set_number, type_into_slider, wait_until)
from ui.noise import CURSOR_COLOR, PALETTE, TICK_COLOR

pytestmark = pytest.mark.browser

PLOT_COUNT = 4


def captions(page) -> list[str]:
    return page.locator("#noise-strip .caption-label").all_inner_texts()


def wait_for_captions(page, first_words: list[str]) -> list[str]:
    """The strip's captions once their "t = ..." parts are ``first_words``."""
    return wait_until(lambda: (shown := captions(page)) and [c.split(",")[0] for c in shown] == first_words and shown,
                      what=f"the strip's captions {first_words}")


def frame_caption(page) -> str:
    return page.locator("#noise-single [data-testid='block-label']").inner_text().strip()


def wait_for_frame_caption(page, text: str) -> None:
    wait_until(lambda: frame_caption(page) == text, what=f"the frame's caption {text!r}")


def sqrt_alpha_bar(t: int, **schedule) -> str:
    return f"{math.sqrt(float(DDPMScheduler(**schedule).alphas_cumprod[t])):.2f}"


def line(page, plot: int, color: str) -> dict:
    """The screen box of plot ``plot``'s line drawn in ``color``."""
    return page.locator(f"#noise-plot-{plot} svg g.mark-line path[stroke='{color}']").bounding_box()


def shape(page, plot: int, color: str) -> dict:
    """The geometry of plot ``plot``'s line drawn in ``color``, in the chart's own units (stroke left out:
    a screen box of a comb grows by its stroke's miter limit)."""
    return page.evaluate("""([plot, color]) => {
        const b = document.querySelector(`#noise-plot-${plot} svg g.mark-line path[stroke='${color}']`).getBBox();
        return {x: b.x, y: b.y, width: b.width, height: b.height};
    }""", [plot, color])


def x_axis_label(page, plot: int, t: int) -> dict:
    """The screen box of the x axis' label that reads ``t``."""
    axis = page.locator(f"#noise-plot-{plot} svg g.role-axis[aria-label^='X-axis'] text")
    return axis.filter(has_text=re.compile(f"^{t}$")).first.bounding_box()


def centre(box: dict) -> float:
    return box["x"] + box["width"] / 2


def assert_cursor_at(page, t: int) -> None:
    """On every plot the red vertical line stands on the x axis' label for ``t``."""
    for plot in range(PLOT_COUNT):
        def drawn():
            cursor, label = line(page, plot, CURSOR_COLOR), x_axis_label(page, plot, t)
            offset = abs(centre(cursor) - centre(label)) if cursor and label else None
            return cursor, label, offset

        try:
            cursor, label, offset = wait_until(lambda: (found := drawn())[2] is not None and found[2] <= 2 and found,
                                               timeout=30, what=f"plot {plot}'s cursor at t = {t}")
        except AssertionError:
            cursor, label, offset = drawn()  # the asserts below say what is wrong
        assert cursor is not None, f"plot {plot} has no cursor"
        assert label is not None, f"plot {plot} has no x axis label {t}"
        assert cursor["width"] <= 3, f"plot {plot}: the cursor is not a vertical line: {cursor}"  # its stroke
        assert offset <= 2, f"plot {plot}: the cursor is {offset:.1f} px from t = {t} on the axis"


def test_the_tab_opens_drawn_with_a_frame_and_a_cursor(page):
    """Nothing pressed: the strip, the slider's frame with its caption and the plots with a cursor."""
    open_noise_tab(page)
    linear = [f"t = {t}, √ᾱ = {sqrt_alpha_bar(t)}" for t in (0, 50, 100, 200, 400, 600, 800, 999)]
    assert captions(page) == linear
    assert image_src(page, "noise-single"), "no frame at the slider's t"
    assert frame_caption(page) == f"x_t at t = 500, √ᾱ = {sqrt_alpha_bar(500)}"
    assert_cursor_at(page, 500)
    save_screenshot(page, "noise")


def test_the_slider_moves_the_frame_and_every_cursor(page):
    open_noise_tab(page)
    before = image_src(page, "noise-single")
    type_into_slider(page, "noise-t", 200)
    wait_for_frame_caption(page, f"x_t at t = 200, √ᾱ = {sqrt_alpha_bar(200)}")
    assert image_src(page, "noise-single") != before
    assert_cursor_at(page, 200)


def test_500_training_timesteps_fit_the_timesteps_and_say_so(page):
    """999 is still in the timesteps box: it is shown at 499, and the page says why."""
    open_noise_tab(page)
    fill_and_enter(page.locator("#noise-T input"), 500)
    shown = wait_for_captions(page, ["t = 0", "t = 50", "t = 100", "t = 200", "t = 400", "t = 499"])
    assert shown[-1] == f"t = 499, √ᾱ = {sqrt_alpha_bar(499, num_train_timesteps=500)}"
    assert page.locator("#noise-note").inner_text().strip() == (
        "Timesteps 600, 800, 999 are past the end of this schedule (num_train_timesteps = 500): shown at t = 499.")
    assert page.locator("#noise-timesteps textarea, #noise-timesteps input").first.input_value() == \
        "0, 50, 100, 200, 400, 600, 800, 999"  # what the person typed stays
    assert page.locator("[data-testid='toast-body']").count() == 0, "an error was shown"
    # The slider ends where the schedule does, and its frame with it.
    wait_for_frame_caption(page, f"x_t at t = 499, √ᾱ = {sqrt_alpha_bar(499, num_train_timesteps=500)}")
    assert page.locator("#noise-t input[type='range']").get_attribute("max") == "499"
    for plot in range(PLOT_COUNT):
        assert line(page, plot, CURSOR_COLOR), f"plot {plot} is not drawn"


def test_a_models_schedule_fills_the_fields_read_only(page, running_app):
    model = running_app[1].schedule_of_model("digits-sd")
    open_noise_tab(page)
    fields = {"noise-beta-schedule": model.beta_schedule, "noise-T": str(model.num_train_timesteps),
              "noise-beta-start": str(model.beta_start), "noise-beta-end": str(model.beta_end)}
    assert model.beta_schedule != "linear" and model.beta_start != 0.0001  # the fields must visibly change
    pick(page, "noise-model", "digits-sd")
    legend = page.locator("#noise-plot-1 svg g.role-legend")
    legend.get_by_text("digits-sd", exact=True).wait_for()
    for elem_id, value in fields.items():
        box = page.locator(f"#{elem_id} input")
        assert box.input_value() == value, elem_id
        assert box.is_disabled(), f"{elem_id} can be edited while a model's schedule is shown"
    assert page.locator("#noise-rescale input").is_checked() == model.rescale_betas_zero_snr
    assert page.locator("#noise-rescale input").is_disabled()
    # Back to the settings: the same fields, editable again.
    pick(page, "noise-model", "(the settings below)")
    legend.get_by_text(model.beta_schedule, exact=True).wait_for()
    for elem_id, value in fields.items():
        assert page.locator(f"#{elem_id} input").is_enabled(), elem_id
        assert page.locator(f"#{elem_id} input").input_value() == value, elem_id


def natural_widths(page) -> set:
    return set(page.evaluate("() => Array.from(document.querySelectorAll('#noise-strip img'))"
                             ".map(i => i.complete ? i.naturalWidth : 0)"))


def test_resolution_redraws_like_every_other_field(page):
    open_noise_tab(page)
    assert natural_widths(page) == {128}
    type_into_slider(page, "noise-resolution", 64)
    wait_until(lambda: natural_widths(page) == {64}, what="the strip redrawn at 64 px")
    before = image_src(page, "noise-strip")
    page.locator("#noise-sample").get_by_text("flower.jpg", exact=True).click()
    wait_until(lambda: image_src(page, "noise-strip") != before, what="the strip redrawn from the sample image")
    assert natural_widths(page) == {64}


def test_visited_timesteps_are_short_ticks_not_bars(page):
    """DDIM's 50 timesteps: a comb along each plot's bottom, a twentieth of the cursor's height."""
    open_noise_tab(page)
    for plot in range(PLOT_COUNT):
        ticks, cursor, curve = (shape(page, plot, color) for color in (TICK_COLOR, CURSOR_COLOR, PALETTE[0]))
        assert ticks["height"] < 0.1 * cursor["height"], f"plot {plot}: ticks {ticks}, cursor {cursor}"
        assert abs((ticks["y"] + ticks["height"]) - (cursor["y"] + cursor["height"])) <= 0.5  # along the bottom
        assert ticks["width"] > 0.9 * curve["width"]  # from t = 0 to 980 of 999


READABLE = {  # label a person reads -> the parameter name in its info line
    "Beta schedule": "beta_schedule",
    "Training timesteps T": "num_train_timesteps",
    "First beta": "beta_start: β at t = 0",
    "Last beta": "beta_end: β at t = T - 1",
    "Zero terminal SNR: pure noise at t = T - 1": "rescale_betas_zero_snr (Lin et al. 2023)",
}


def test_schedule_labels_are_readable_whole_and_name_the_parameter(page):
    open_noise_tab(page)
    form = page.locator("#noise-form")
    for label, info in READABLE.items():
        assert form.get_by_text(label, exact=True).is_visible(), label
        assert form.get_by_text(info, exact=True).is_visible(), info
    # No label is cut off: each one's text ends inside its own block.
    cut = page.evaluate("""() => Array.from(document.querySelectorAll(
            '#noise-form [data-testid="block-info"], #noise-form .label-text, #noise-form .info-text'))
        .filter(e => {
            const block = e.closest('.block').getBoundingClientRect(), r = e.getBoundingClientRect();
            return e.scrollWidth > e.clientWidth + 1 || r.right > block.right + 1;
        }).map(e => e.textContent.trim())""")
    assert cut == []


def resize_and_wait_for_the_plots(page, size: dict) -> None:
    """Resize the window and wait until the first plot has been redrawn at its new width."""
    width = "() => document.querySelector('#noise-plot-0 svg').getBoundingClientRect().width"
    before = page.evaluate(width)
    page.set_viewport_size(size)
    page.wait_for_function(f"before => ({width})() !== before", arg=before)


def test_using_the_tab_logs_no_browser_errors(browser, running_app):
    """Redraws while the tab is hidden, a resize, overlays, a model, the slider: no console errors."""
    with app_page(browser, running_app[0]) as (page, errors):  # listened to from its first request on
        use_the_noise_tab(page)
        assert errors == []


def use_the_noise_tab(page) -> None:
    """A person's tour of the tab: a schedule drawn while another tab is shown, resizes, an overlay, a model's
    schedule, the slider."""
    open_noise_tab(page)
    # A new schedule drawn while the person has moved on to another tab, then a resize.
    pick(page, "noise-beta-schedule", "squaredcos_cap_v2")
    open_tab(page, "Training")
    cosine = [f"t = {t}, √ᾱ = {sqrt_alpha_bar(t, beta_schedule='squaredcos_cap_v2')}"
              for t in (0, 50, 100, 200, 400, 600, 800, 999)]
    # The strip redrawn in the hidden tab (its text is there while hidden: textContent, not innerText).
    wait_until(lambda: page.locator("#noise-strip .caption-label").all_text_contents() == cosine,
               what="the cosine schedule's strip drawn in the hidden tab")
    open_noise_tab(page)
    assert captions(page) == cosine
    resize_and_wait_for_the_plots(page, {"width": 900, "height": 900})
    resize_and_wait_for_the_plots(page, {"width": 1400, "height": 1000})
    page.locator("#noise-overlay").get_by_label("linear", exact=True).check()
    page.locator("#noise-plot-2 svg g.role-legend").get_by_text("linear: noise", exact=True).wait_for()
    pick(page, "noise-model", "digits-ddpm")
    page.locator("#noise-plot-0 svg g.role-legend").get_by_text("digits-ddpm", exact=True).wait_for()
    type_into_slider(page, "noise-t", 300)
    wait_for_frame_caption(page, f"x_t at t = 300, √ᾱ = {sqrt_alpha_bar(300)}")
    resize_and_wait_for_the_plots(page, {"width": 1000, "height": 900})


@pytest.fixture()
def noise_tab_alone(running_app):
    """The Noise tab alone in a page, on the shared app's engine: (its url, the (beta_schedule, seed) of each strip
    it has drawn since the page was built)."""
    import gradio as gr
    from ui import noise

    bench, strips = running_app[1], []

    def add_noise(request, image):
        if len(request.timesteps) > 1:  # the strip (the slider's frame is one timestep)
            strips.append((request.schedule.beta_schedule, request.seed))
        return bench.add_noise(request, image)

    with gr.Blocks() as demo:
        noise.build(add_noise=add_noise, schedule_arrays=bench.schedule_arrays,
                    visited_timesteps=bench.visited_timesteps, schedule_of_model=bench.schedule_of_model,
                    list_models=bench.list_schedule_models, schedulers=list(bench.schedulers("txt2img")),
                    schedule_facts=bench.schedule_facts)
    strips.clear()  # the drawing the tab opens with
    _, url, _ = demo.launch(server_port=free_port(), prevent_thread_lock=True, quiet=True)
    yield url, strips
    demo.close()


def test_a_pick_draws_the_strip_once(browser, noise_tab_alone):
    """Gradio's dropdown says `input` twice for one pick: the tab draws once."""
    url, strips = noise_tab_alone
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(60_000)
    page.goto(url)
    page.wait_for_selector("#noise-plot-3 svg g.mark-line path")
    seed = int(field_value(page, "noise-seed"))
    pick(page, "noise-beta-schedule", "squaredcos_cap_v2")
    page.locator("#noise-plot-1 svg g.role-legend").get_by_text("squaredcos_cap_v2", exact=True).wait_for()
    set_number(page, "noise-seed", seed + 1)  # a later change: drawn after any redraw the pick set off
    wait_until(lambda: strips[-1:] == [("squaredcos_cap_v2", seed + 1)], what="the strip drawn with the new seed")
    page.close()
    assert strips == [("squaredcos_cap_v2", seed), ("squaredcos_cap_v2", seed + 1)]
