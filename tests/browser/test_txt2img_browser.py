"""A person types a prompt, clicks Generate, watches the steps, scrubs back, stops a run, and makes mistakes."""

import re

import numpy as np
import pytest

from tests.helpers import (console_errors, fill_and_enter, pick, save_screenshot, set_number, shown_pixels, wait_text,
                           wait_until, watch_images)

pytestmark = pytest.mark.browser


def progress_text(page):
    return page.locator("#t2i-progress").inner_text()


def wait_done(page):
    wait_text(page, "t2i-progress", "done")


def generate(page, seed, steps):
    """Set the seed and steps, click Generate and wait for the final image."""
    set_number(page, "t2i-seed", seed)
    set_number(page, "t2i-steps", steps)
    page.locator("#t2i-generate").click()
    wait_done(page)


def scrub_to(page, value):
    fill_and_enter(page.locator("#t2i-scrub input[type='number']"), value)


def test_generate_shows_previews_then_final_image(page):
    errors = console_errors(page)
    page.locator("#t2i-prompt textarea").fill("a handwritten digit three")
    set_number(page, "t2i-seed", 5)
    set_number(page, "t2i-steps", 80)  # long enough to watch a few frames
    page.locator("#t2i-generate").click()
    seen = watch_images(page, "t2i-image", "t2i-progress")
    assert "done" in progress_text(page)
    assert len(seen) >= 2, "the preview never changed before the final image"
    assert page.locator("#t2i-image img").first.is_visible()
    assert re.search(r'"seed"\s*:\s*5\b', page.locator("#t2i-info").inner_text()), "the seed used is not shown"
    assert "StableDiffusionPipeline" in page.locator("#t2i-code").inner_text()
    save_screenshot(page, "txt2img")
    assert errors == []


def test_default_x0_preview_is_readable(page):
    """With the built-in's defaults, the x0 preview near the end already shows the prompt's digit (it used to be
    a 4x4 block pattern): the page picks a VAE decode for this model and says so."""
    from engine.builtin.digits import classifier

    assert page.locator("#t2i-prompt textarea").input_value() == "a handwritten digit seven"
    set_number(page, "t2i-seed", 3)
    page.locator("#t2i-generate").click()
    wait_done(page)
    assert "VAE decode" in page.locator("#t2i-image").inner_text()  # the image's label says which preview
    scrub_to(page, 24)  # step 24 of 25: still the preview, not the final image
    page.wait_for_function("() => document.querySelector('#t2i-progress').innerText.includes('Step 24/25')")
    preview = shown_pixels(page, "t2i-image", "L")
    scores = classifier().score(preview[None])
    assert scores.labels[0] == 7 and bool(scores.confident[0])


def test_scrubbing_to_the_last_step_shows_the_final_image(page):
    generate(page, 8, 6)
    final = shown_pixels(page, "t2i-image", "L")
    scrub_to(page, 2)
    page.wait_for_function("() => document.querySelector('#t2i-progress').innerText.includes('Step 2/6')")
    assert not np.array_equal(shown_pixels(page, "t2i-image", "L"), final)
    scrub_to(page, 6)
    page.wait_for_function("() => document.querySelector('#t2i-progress').innerText.includes('final image')")
    assert np.array_equal(shown_pixels(page, "t2i-image", "L"), final)


def test_scrubbing_shows_each_steps_own_x0_once_the_skipped_frames_are_drawn(page):
    generate(page, 9, 6)  # DDIM: x0 moves every step; the stream skips some of the six frames, drawn after Done
    page.wait_for_function("() => { const l = document.querySelector('#t2i-scrub');"
                           " return l && l.innerText.includes('Scrub through the steps')"
                           " && !l.innerText.includes('drawing'); }")
    frames = []
    for k in range(1, 6):
        scrub_to(page, k)
        page.wait_for_function(f"() => document.querySelector('#t2i-progress').innerText.includes('Step {k}/6')")
        frames.append(shown_pixels(page, "t2i-image", "L"))
    assert all(not np.array_equal(a, b) for a, b in zip(frames, frames[1:])), "a step shows another step's frame"


def test_generate_clicked_as_the_final_image_shows_runs_again(page):
    """The click lands while the run before it is still ending (drawing its skipped frames): it is not dropped."""
    set_number(page, "t2i-steps", 40)  # many steps the stream skips: drawing them takes a while after the final image
    set_number(page, "t2i-seed", -1)
    seeds = page.evaluate("""() => new Promise(resolve => {
        const progress = () => document.querySelector('#t2i-progress').innerText;
        const seeds = [], start = performance.now();
        let began = false;
        const check = () => {
            if (performance.now() - start > 90000) { resolve(seeds); return; }  // the second click was dropped
            const m = progress().match(/seed (\\d+)/);
            if (m && seeds[seeds.length - 1] !== m[1]) seeds.push(m[1]);
            const done = progress().includes('done');
            began = began || !done;
            if (began && done) {
                if (seeds.length === 1) { began = false; document.querySelector('#t2i-generate').click(); }
                else { resolve(seeds); return; }
            }
            setTimeout(check, 2);
        };
        document.querySelector('#t2i-generate').click();
        check();
    })""")
    assert len(seeds) == 2, f"one run only (seed {seeds}): the second click was dropped"
    assert seeds[0] != seeds[1]


def test_stop_says_where_it_stopped_and_the_next_run_starts(page, running_app):
    errors = console_errors(page)
    set_number(page, "t2i-steps", 150)
    set_number(page, "t2i-seed", 21)
    set_number(page, "t2i-width", 128)
    set_number(page, "t2i-height", 128)
    page.locator("#t2i-generate").click()
    page.wait_for_function(
        "() => /Step [2-9]\\d*\\/150/.test(document.querySelector('#t2i-progress').innerText)")
    page.locator("#t2i-stop").click()
    try:
        page.wait_for_function("() => document.querySelector('#t2i-progress').innerText.includes('Stopped at step')",
                               timeout=20000)
    except Exception as exc:
        raise AssertionError(f"after Stop the progress line says {progress_text(page)!r}") from exc
    first = progress_text(page)
    wait_until(lambda: running_app[1].activity() is None, what="the stopped run's end on the server")
    assert progress_text(page) == first, "the run went on after Stop"
    step = int(re.search(r"Stopped at step (\d+) of 150", first).group(1))
    assert 0 < step < 150
    info = page.locator("#t2i-info").inner_text()
    assert re.search(r'"seed"\s*:\s*21\b', info) and re.search(rf'"stopped_at_step"\s*:\s*{step}\b', info)
    assert "manual_seed(21)" in page.locator("#t2i-code").inner_text()  # code and parameters agree
    assert page.locator("#t2i-scrub").is_visible() or step == 1  # the partial run can be scrubbed
    set_number(page, "t2i-steps", 3)
    page.locator("#t2i-generate").click()
    wait_done(page)
    assert errors == []


def test_bad_width_is_said_beside_it_and_the_last_image_stays(page):
    generate(page, 4, 4)
    before = shown_pixels(page, "t2i-image", "L")
    set_number(page, "t2i-width", 30)
    page.locator("#t2i-generate").click()
    message = "width must be a multiple of 8 (8 to 2048); got 30"
    wait_text(page, "t2i-width", message)
    wait_text(page, "t2i-progress", message)
    assert np.array_equal(shown_pixels(page, "t2i-image", "L"), before)
    assert page.locator("#t2i-image .error").count() == 0 and page.locator(".error").filter(has_text="Error").count() == 0


def test_offline_hub_id_is_said_whole_beside_the_model(page):
    model = page.locator("#t2i-generate").locator("xpath=ancestor::div[contains(@class,'column')][1]") \
        .get_by_label("Model").first
    model.fill("stable-diffusion-v1-5/stable-diffusion-v1-5")
    model.press("Enter")
    page.locator("#t2i-generate").click()
    page.wait_for_function("() => document.querySelector('#t2i-progress').innerText.includes('hf download')")
    text = progress_text(page)
    assert ("`hf download stable-diffusion-v1-5/stable-diffusion-v1-5 --local-dir MODELS_DIR/stable-diffusion-v1-5`"
            in text)
    assert text.rstrip().endswith("then pick it from the list")


def test_heun_says_it_counts_model_evaluations_and_far_sizes_warn(page):
    page.locator("#t2i-scheduler input").click()
    page.get_by_role("option", name="Heun", exact=True).click()
    set_number(page, "t2i-steps", 5)
    set_number(page, "t2i-width", 128)
    page.locator("#t2i-generate").click()
    page.wait_for_function("() => document.querySelector('#t2i-progress').innerText.includes('model evaluations')")
    text = progress_text(page)
    assert "9 model evaluations for 5 steps" in text
    assert "128x32 is far from this model's 32x32" in text
    wait_done(page)


def test_ctrl_enter_generates_and_the_code_box_wraps(page):
    set_number(page, "t2i-steps", 2)
    box = page.locator("#t2i-prompt textarea")
    box.fill("a handwritten digit one")
    box.press("Control+Enter")
    wait_done(page)
    assert "a handwritten digit one" in page.locator("#t2i-info").inner_text()
    wide = page.evaluate("() => { const c = document.querySelector('#t2i-code .cm-content');"
                         " const s = document.querySelector('#t2i-code .cm-scroller');"
                         " return s.scrollWidth > s.clientWidth + 1 || !c; }")
    assert not wide, "the code box cuts long lines"


def test_views_and_lines_that_looked_broken_say_why(page):
    """Issue 22 (7, 8): guidance 1 with the heat-map view says there is no unconditional pass (the image and the
    chart); a 0 typed for steps is refused beside the field; a batch's line has no step counter of a run; the
    sigma chart's axis starts at 0 for its positive curves."""
    pick(page, "t2i-view-left", "guidance Δ = ε_text − ε_uncond (heat map)")
    guidance = page.locator("input[aria-label='number input for Guidance scale (1 = no guidance)']")
    fill_and_enter(guidance, 1)
    generate(page, 3, 3)
    why = "none at guidance 1 (no unconditional pass: ε_text is used alone)"
    assert why in page.locator("#t2i-image").inner_text()
    assert why in page.locator("#t2i-chart-0").inner_text()
    ticks = page.locator("#t2i-chart-1 svg text").all_text_contents()
    assert ticks and not any(t.startswith(("-", "−")) for t in ticks), ticks

    set_number(page, "t2i-steps", 0)
    page.locator("#t2i-generate").click()
    message = "steps must be a whole number from 1 to 150; got 0"
    wait_text(page, "t2i-steps", message)
    wait_text(page, "t2i-progress", message)

    set_number(page, "t2i-steps", 2)
    set_number(page, "t2i-batch-count", 2)
    page.locator("#t2i-generate").click()
    line = wait_text(page, "t2i-progress", "Batch · done · 2 runs, seeds 3 to 4")
    assert not re.search(r"Step \d+/\d+", line), line
