"""A person teaches digits-sd a word with a LoRA: starts a LoRA run, sees the base model and the LoRA side by side,
stops, and picks the LoRA in Text to image."""

import re
import time

import pytest

from tests.helpers import save_screenshot

pytestmark = pytest.mark.browser
PROGRESS = "#train-progress .wb-progress-text"


@pytest.fixture(autouse=True)
def no_job_left(running_app):
    yield
    running_app[1].stop_training(wait=120)


def set_value(page, elem_id, value):
    box = page.locator(f"#{elem_id} input, #{elem_id} textarea").first
    box.fill(str(value))
    box.press("Enter")


def pick(page, elem_id, option):
    page.locator(f"#{elem_id} input").first.click()
    page.get_by_role("option", name=option, exact=True).click()


def wait_text(page, selector, pattern, timeout=120.0):
    deadline = time.time() + timeout
    text = ""
    while time.time() < deadline:
        text = page.locator(selector).inner_text()
        if re.search(pattern, text):
            return text
        time.sleep(0.2)
    raise AssertionError(f"{selector} never showed {pattern!r}; it shows {text!r}")


def test_lora_run_side_by_side_grid_stop_and_pick_it_in_text_to_image(page, running_app):
    page.get_by_role("tab", name="Training", exact=True).click()

    # 1. Method lora: the base is a text-to-image model, the resolution its own, the data the captioned built-in
    #    (the LoRA proof's framed digits): the defaults work as they are (issue 22, 3).
    page.locator("#train-method").get_by_text("lora", exact=True).click()
    page.wait_for_function("() => document.querySelector('#train-start-from input').value === 'digits-sd'")
    page.wait_for_function("() => document.querySelector('#train-resolution input').value === '32'")
    page.wait_for_function("() => document.querySelector('#train-data input').value === 'digits-framed'")
    # The uncaptioned digits are refused in the progress line and beside Data, and nothing starts.
    pick(page, "train-data", "digits")
    page.locator("#train-start").click()
    refusal = "'digits' has class labels, not captions; a LoRA run needs captioned images: 'digits-captioned' or"
    wait_text(page, PROGRESS, re.escape(refusal))
    page.wait_for_function(f"() => document.querySelector('#train-data-note').innerText.includes({refusal!r})")
    assert running_app[1].training.status().run_name != "browser-lora"
    pick(page, "train-data", "digits-framed")
    for elem_id, value in [("train-batch", 4), ("train-max-steps", 400), ("train-lr", 0.01), ("train-warmup", 0),
                           ("train-save-every", 0), ("train-sample-every", 4), ("train-first-sample", 0),
                           ("train-run-name", "browser-lora")]:
        set_value(page, elem_id, value)
    page.locator("#train-start").click()

    # 2. The grid: the validation prompts at LoRA scale 0 (the base model) and 1, side by side.
    wait_text(page, PROGRESS, r"running · browser-lora · loss \d")
    page.wait_for_selector("#train-grid img", timeout=120_000)
    label = page.locator("#train-grid").inner_text()
    assert re.search(r"Samples at step \d+ \(left: LoRA scale 0 \(the base model\) · right: LoRA scale 1", label)
    page.wait_for_selector("#train-bucket-loss svg.marks")
    save_screenshot(page, "training-lora")

    # 3. Stop: the LoRA is saved and named.
    page.locator("#train-stop").click()
    wait_text(page, PROGRESS, r"stopped · browser-lora")
    wait_text(page, "#train-checkpoint", r"LoRA at step \d+: browser-lora in the Text to image tab's LoRA list")

    # 4. Text to image: the LoRA is in the box for digits-sd; a run with it says so in its code.
    page.get_by_role("tab", name="Text to image", exact=True).click()
    pick(page, "t2i-lora", "browser-lora")
    box = page.locator("#t2i-seed input").first
    box.fill("5")
    page.locator("#t2i-generate").click()
    page.wait_for_function("() => document.querySelector('#t2i-progress').innerText.includes('done')",
                           timeout=120_000)
    code = page.locator("#t2i-code").inner_text()
    assert "pipe.load_lora_weights(" in code and "weight_name='browser-lora.safetensors'" in code
    assert "cross_attention_kwargs={'scale': 1.0}" in code
