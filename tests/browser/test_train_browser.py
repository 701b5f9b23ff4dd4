"""A person trains on the digits, watches the loss and the samples, stops, and samples the checkpoint."""

import re
import time

import pytest
import torch

pytestmark = pytest.mark.browser


@pytest.fixture(autouse=True)
def no_job_left(running_app):
    yield
    running_app[1].stop_training(wait=60)


def open_tab(page, name):
    page.get_by_role("tab", name=name, exact=True).click()


def set_value(page, elem_id, value):
    box = page.locator(f"#{elem_id} input, #{elem_id} textarea").first
    box.fill(str(value))
    box.press("Enter")


PROGRESS = "#train-progress .wb-progress-text"  # the line itself, not Gradio's (invisible) status overlay


def progress_text(page):
    return page.locator(PROGRESS).inner_text()


def wait_text(page, selector, pattern, timeout=60.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        text = page.locator(selector).inner_text()
        if re.search(pattern, text):
            return text
        time.sleep(0.1)
    raise AssertionError(f"{selector} never showed {pattern!r}; it shows {text!r}")


def unconditional_model_box(page):
    return page.locator("#ddpm-refresh").locator("xpath=..").locator("input").first


def test_train_watch_stop_and_sample_the_checkpoint(page):
    open_tab(page, "Training")
    for elem_id, value in [("train-resolution", 16), ("train-batch", 8), ("train-max-steps", 400),
                           ("train-lr", 0.001), ("train-warmup", 5), ("train-save-every", 0),
                           ("train-sample-every", 10), ("train-run-name", "browser-run")]:
        set_value(page, elem_id, value)
    page.locator("#train-start").click()

    # The page polls the job: the progress line, the loss curve and the sample grid appear.
    wait_text(page, PROGRESS, r"running · browser-run · loss \d")
    page.wait_for_selector("#train-loss canvas, #train-loss svg", timeout=60_000)
    page.wait_for_selector("#train-grid img", timeout=60_000)
    assert re.search(r"Samples at step \d+", page.locator("#train-grid").inner_text())
    step_before = int(re.search(r"Step (\d+)/400", progress_text(page)).group(1))
    wait_text(page, PROGRESS, r"steps/s · ETA \d+:\d\d")
    page.screenshot(path="/tmp/wb-train.png", full_page=True)

    # A reopened page shows the running job.
    other = page.context.new_page()
    other.goto(page.url)
    open_tab(other, "Training")
    wait_text(other, PROGRESS, r"running · browser-run")
    assert int(re.search(r"Step (\d+)/400", other.locator(PROGRESS).inner_text()).group(1)) >= step_before
    other.close()

    # Stop saves a checkpoint and ends the job.
    page.locator("#train-stop").click()
    stopped = wait_text(page, PROGRESS, r"stopped · browser-run")
    time.sleep(1.5)
    assert progress_text(page) == stopped, "the run went on after Stop"
    wait_text(page, "#train-checkpoint", r"Checkpoint at step \d+: model browser-run")

    # Picking the run to resume fills the form with its settings.
    set_value(page, "train-resolution", 32)
    page.locator("#train-runs input").click()
    page.get_by_role("option", name="browser-run", exact=True).click()
    page.wait_for_function("() => document.querySelector('#train-resume input').checked")
    assert page.locator("#train-resolution input").input_value() == "16"
    assert page.locator("#train-run-name input, #train-run-name textarea").first.input_value() == "browser-run"

    # The run is in the Unconditional tab's model list (after a refresh, too).
    open_tab(page, "Unconditional")
    page.locator("#ddpm-refresh").click()
    box = unconditional_model_box(page)
    box.click()
    page.get_by_role("option", name="browser-run", exact=True).wait_for()
    box.press("Escape")

    # "Sample from this checkpoint" switches to the Unconditional tab with the run picked.
    open_tab(page, "Training")
    page.locator("#train-sample").click()
    page.wait_for_selector("#ddpm-generate", state="visible")
    page.wait_for_function("() => [...document.querySelectorAll('input')].some("
                           "i => i.value === 'browser-run' && i.offsetParent !== null)")
    assert unconditional_model_box(page).input_value() == "browser-run"
