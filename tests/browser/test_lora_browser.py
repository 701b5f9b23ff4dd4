"""A person teaches digits-sd a word with a LoRA: starts a LoRA run, sees the base model and the LoRA side by side,
stops, and picks the LoRA in Text to image."""

import re

import pytest

from tests.helpers import open_tab, pick, save_screenshot, set_number, wait_text

pytestmark = [pytest.mark.browser, pytest.mark.usefixtures("no_training_job_left")]
PROGRESS = "train-progress .wb-progress-text"


def test_lora_run_side_by_side_grid_stop_and_pick_it_in_text_to_image(page, running_app):
    open_tab(page, "Training")

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
    wait_text(page, PROGRESS, refusal)
    wait_text(page, "train-data-note", refusal)
    assert running_app[1].training.status().run_name != "browser-lora"
    pick(page, "train-data", "digits-framed")
    for elem_id, value in [("train-batch", 4), ("train-max-steps", 400), ("train-lr", 0.01), ("train-warmup", 0),
                           ("train-save-every", 0), ("train-sample-every", 4), ("train-first-sample", 0),
                           ("train-run-name", "browser-lora")]:
        set_number(page, elem_id, value)
    page.locator("#train-start").click()

    # 2. The grid: the validation prompts at LoRA scale 0 (the base model) and 1, side by side.
    wait_text(page, PROGRESS, re.compile(r"running · browser-lora · loss \d"))
    page.wait_for_selector("#train-grid img", timeout=120_000)
    label = page.locator("#train-grid").inner_text()
    assert re.search(r"Samples at step \d+ \(left: LoRA scale 0 \(the base model\) · right: LoRA scale 1", label)
    page.wait_for_selector("#train-bucket-loss svg.marks")
    save_screenshot(page, "training-lora")

    # 3. Stop: the LoRA is saved and named.
    page.locator("#train-stop").click()
    wait_text(page, PROGRESS, re.compile(r"stopped · browser-lora"))
    wait_text(page, "train-checkpoint",
              re.compile(r"LoRA at step \d+: browser-lora in the Text to image tab's LoRA list"))

    # 4. Text to image: the LoRA is in the box for digits-sd; a run with it says so in its code.
    open_tab(page, "Text to image")
    pick(page, "t2i-lora", "browser-lora")
    page.locator("#t2i-seed input").first.fill("5")
    page.locator("#t2i-generate").click()
    wait_text(page, "t2i-progress", "done")
    code = page.locator("#t2i-code").inner_text()
    assert "pipe.load_lora_weights(" in code and "weight_name='browser-lora.safetensors'" in code
    assert "cross_attention_kwargs={'scale': 1.0}" in code
