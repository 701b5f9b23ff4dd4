"""A person makes a batch, finds one image of it in History, uses its settings and gets the same image again; reuses
a seed; replays a past run; drops an A1111 PNG into PNG Info and sends it to Text to image."""

import re

import numpy as np
import pytest
from PIL import Image

from tests.engine.test_pnginfo import write_png
from tests.helpers import (console_errors, field_value, fill_and_enter, open_tab, pick, save_screenshot, set_number,
                           shown_pixels, wait_text)

pytestmark = pytest.mark.browser

A1111_TEXT = ("a handwritten digit five\nNegative prompt: blurry\n"
              "Steps: 7, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 5.5, Seed: 777, Size: 40x48, "
              "Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Version: v1.10.1")


def generate(page):
    """Click Generate and wait for this run's end (the progress line said "done" for the last one too)."""
    line = "document.querySelector('#t2i-progress .wb-progress-text')?.innerText"
    before = page.evaluate(f"() => {line}")
    page.locator("#t2i-generate").click()
    page.wait_for_function(f"() => {{ const t = {line}; return t !== {before!r} && /· done/.test(t); }}")


def test_pick_a_past_image_use_its_settings_and_get_it_again(page):
    errors = console_errors(page)
    # 1. A batch of four runs to come back to: seeds 4242 to 4245, each saved, then their grid.
    page.locator("#t2i-prompt textarea").fill("a handwritten digit three")
    pick(page, "t2i-scheduler", "Euler")
    set_number(page, "t2i-seed", 4242)
    set_number(page, "t2i-steps", 4)
    set_number(page, "t2i-batch-count", 4)
    generate(page)
    assert "4 runs, seeds 4242 to 4245" in page.locator("#t2i-progress").inner_text()
    # 2. The page moves on to other settings.
    page.locator("#t2i-prompt textarea").fill("a handwritten digit eight")
    pick(page, "t2i-scheduler", "DDIM")
    set_number(page, "t2i-seed", -1)
    set_number(page, "t2i-steps", 9)
    set_number(page, "t2i-batch-count", 1)
    # 3. History: the batch is there, newest first; the run with seed 4244 is picked.
    open_tab(page, "History")
    search = page.locator("#history-search textarea, #history-search input").first
    fill_and_enter(search, "digit three")
    page.wait_for_function("() => document.querySelectorAll('#history-gallery img').length >= 5")
    page.locator("#history-gallery button").filter(has_text="4244 · a handwritten digit three").first.click()
    wait_text(page, "history-info", "4244")
    wait_text(page, "history-status", "From Text to image · Diffusion Workbench")
    page.wait_for_selector("#history-export", state="visible")  # its run can be exported
    picked = shown_pixels(page, "history-image")
    save_screenshot(page, "history")
    # 4. Its settings go back to Text to image, which opens; the same image comes out.
    page.locator("#history-use").click()
    page.wait_for_selector("#t2i-generate", state="visible")
    page.wait_for_function("() => document.querySelector('#t2i-seed input').value === '4244'")
    assert field_value(page, "t2i-prompt") == "a handwritten digit three"
    assert tuple(field_value(page, f"t2i-{name}") for name in ("scheduler", "steps", "batch-count")) == \
        ("Euler", "4", "1")
    assert (field_value(page, "t2i-width"), field_value(page, "t2i-height")) == ("32", "32")
    generate(page)
    # The image as it shows once the run's saved PNG is swapped in (the progress line may say "done" a moment
    # before: until then the batch's grid, 00012-4242-grid.png, or the last preview is still there).
    page.wait_for_function(r"() => /\/\d{5}-4244\.png$/.test(document.querySelector('#t2i-image img')?.src || '')")
    assert np.array_equal(shown_pixels(page, "t2i-image"), picked)
    assert errors == []  # through a batch and two tab switches


def test_reuse_and_random_seed_buttons(page):
    set_number(page, "t2i-seed", -1)
    set_number(page, "t2i-steps", 2)
    generate(page)
    page.locator("#t2i-reuse-seed").click()
    page.wait_for_function("() => document.querySelector('#t2i-seed input').value !== '-1'")
    assert re.search(rf'"seed"\s*:\s*{field_value(page, "t2i-seed")}\b', page.locator("#t2i-info").inner_text())
    page.locator("#t2i-random-seed").click()
    page.wait_for_function("() => document.querySelector('#t2i-seed input').value === '-1'")


def replay_in_history(page, search, caption):
    """In History: search, pick the image captioned ``caption``, replay it, and wait for "Identical"."""
    open_tab(page, "History")
    set_number(page, "history-search", search)
    page.locator("#history-gallery button").filter(has_text=caption).first.click()
    wait_text(page, "history-status", "From Text to image")
    page.locator("#history-replay").click()
    wait_text(page, "replay-progress", "Identical: the replay's image hashes as the run's did")


def test_replay_a_past_image_is_identical(page):
    set_number(page, "t2i-seed", 77)
    set_number(page, "t2i-steps", 3)
    page.locator("#t2i-prompt textarea").fill("a handwritten digit four replayed")
    generate(page)
    page.wait_for_selector("#t2i-export", state="visible")  # every result can be exported
    replay_in_history(page, "four replayed", "77 · a handwritten digit four")
    wait_text(page, "replay-progress", ", a new image in History")  # issue 22 (9): it says what it added
    # The replay is saved like any run: two images now; the picked one goes to the trash, the replay stays.
    set_number(page, "history-search", "four replayed")
    page.wait_for_function("() => document.querySelectorAll('#history-gallery img').length === 2")
    page.locator("#history-gallery button").filter(has_text="77 · a handwritten digit four").first.click()
    wait_text(page, "history-status", "From Text to image")
    page.locator("#history-delete").click()
    wait_text(page, "history-status", "to .trash/txt2img/")
    wait_text(page, "history-counts", "1 of ")
    assert page.locator("#history-gallery img").count() == 1
    # Issue 22 (9): the highlighted thumbnail is the picked image, its details beside it (not an empty panel).
    assert page.locator("#history-gallery .thumbnail-item.selected").count() == 1
    page.wait_for_function("() => document.querySelector('#history-info').innerText.includes('four replayed')")
    assert "to .trash/txt2img/" in page.locator("#history-status").inner_text()


def test_drop_an_a1111_png_and_send_it_to_text_to_image(page, tmp_path):
    errors = console_errors(page)
    open_tab(page, "PNG Info")
    upload = page.locator("#pnginfo-file input[type=file]")
    Image.new("RGB", (8, 8)).save(tmp_path / "photo.png", format="JPEG")
    upload.set_input_files(str(tmp_path / "photo.png"))
    wait_text(page, "pnginfo-status", "photo.png is not a PNG file (it does not start with the PNG signature)")
    assert page.locator("#pnginfo-send").is_disabled()
    page.locator("#pnginfo-file button[aria-label='Clear']").first.click()
    upload.set_input_files(str(write_png(tmp_path / "from-a1111.png", size=(40, 48), parameters=A1111_TEXT)))
    wait_text(page, "pnginfo-status", "A1111/Forge: 8 settings this workbench can use")
    notes = page.locator("#pnginfo-unused").inner_text()
    assert "Model hash: 6ce0161689 — not used (the model is chosen by name here; its hash is not checked)" in notes
    assert "model 'v1-5-pruned-emaonly' is not here (not a built-in, nor under the models dir); the page's model " \
           "is kept" in notes
    page.locator("#pnginfo-send").click()
    page.wait_for_selector("#t2i-generate", state="visible")
    page.wait_for_function("() => document.querySelector('#t2i-seed input').value === '777'")
    assert tuple(field_value(page, f"t2i-{name}") for name in ("prompt", "negative")) == \
        ("a handwritten digit five", "blurry")
    assert tuple(field_value(page, f"t2i-{name}") for name in ("steps", "guidance", "scheduler")) == \
        ("7", "5.5", "DPM++ 2M Karras")
    assert (field_value(page, "t2i-width"), field_value(page, "t2i-height")) == ("40", "48")
    assert errors == []


def test_replay_a_past_img2img_image_is_identical(page):
    """Issue 23: an img2img run carries its record, so History replays it (the image it started from kept)."""
    open_tab(page, "Noise")
    page.locator("#i2i-prompt textarea").fill("a digit redrawn for replay")
    set_number(page, "i2i-steps", 4)
    set_number(page, "i2i-seed", 31)
    page.locator("#i2i-run").click()
    wait_text(page, "i2i-progress", "done")
    replay_in_history(page, "redrawn for replay", "31 · a digit redrawn for replay")
