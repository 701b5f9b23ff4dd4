"""The helpers shared by the API and browser tests: one of each (look here before writing one in a test file).

Waiting: every wait is on what a person sees (the page's text, an image loaded) or on the server's state, never a
fixed sleep; ``wait_until`` is the one poll loop, for states that no event announces (a gradio_client job's outputs,
a status read through the API)."""

import contextlib
import io
import json
import re
import time

import numpy as np
from PIL import Image


# -- waiting -------------------------------------------------------------------------------------------------------
def wait_until(condition, timeout: float = 60.0, what: str = "the condition", every: float = 0.05):
    """``condition()``'s first truthy value, polled every ``every`` s; AssertionError naming ``what`` (and the last
    value seen) after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not come within {timeout:g} s; last seen: {value!r}")
        time.sleep(every)


def waiting(thread) -> bool:
    """Whether ``thread`` is blocked on a threading Event or Condition now (read from its stack, not guessed from
    a sleep): the moment a race test has forced."""
    import sys
    import threading

    frame = sys._current_frames().get(thread.ident)
    while frame is not None:
        if frame.f_code.co_name == "wait" and frame.f_code.co_filename == threading.__file__:
            return True
        frame = frame.f_back
    return False


def wait_for_outputs(job, n: int, timeout: float = 60.0) -> list:
    """A gradio_client job's outputs once it has streamed at least ``n`` of them (or its outputs so far once it has
    ended or the timeout passed: the caller asserts on them)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and len(job.outputs()) < n and not job.done():
        time.sleep(0.05)
    return job.outputs()


def as_dict(value):
    """A JSON component's value as gradio_client returns it (a dict, or its JSON text) as a dict."""
    return value if isinstance(value, dict) else json.loads(value)


# -- the browser ---------------------------------------------------------------------------------------------------
def watch(page, observe, progress_id: str, timeout: float = 120.0) -> set:
    """Every value ``observe()`` takes until #progress_id says done (or the timeout), the last one included: what a
    person sees change while a run streams, sampled every 30 ms."""
    seen, deadline = set(), time.monotonic() + timeout
    while time.monotonic() < deadline and "done" not in page.locator(f"#{progress_id}").inner_text():
        seen.add(observe())
        page.wait_for_timeout(30)  # the browser's own clock: the page keeps drawing meanwhile
    seen.add(observe())
    return seen


def watch_images(page, image_id: str, progress_id: str, timeout: float = 90.0) -> set:
    """Every src #image_id shows until #progress_id says done (or the timeout), the last one included."""
    return watch(page, lambda: image_src(page, image_id), progress_id, timeout) - {None}


def image_src(page, elem_id: str):
    """The src of the first <img> inside #elem_id, None while it shows none."""
    img = page.locator(f"#{elem_id} img")
    return img.first.get_attribute("src") if img.count() else None


def wait_image(page, elem_id: str, other_than: str | None = None) -> str:
    """The src of #elem_id's image once one is shown and loaded (and is not ``other_than``)."""
    page.wait_for_function(
        f"old => {{ const i = document.querySelector('#{elem_id} img');"
        " return i && i.complete && i.naturalWidth > 0 && i.getAttribute('src') !== old; }", arg=other_than)
    return image_src(page, elem_id)


def fetched_image(page, src: str) -> Image.Image:
    """The image at ``src`` as the browser gets it (loaded, in its own mode and size)."""
    with Image.open(io.BytesIO(page.request.get(src).body())) as image:
        image.load()
        return image


def shown_image(page, elem_id: str, other_than: str | None = None) -> Image.Image:
    """The image #elem_id shows, once loaded, fetched as the browser fetched it."""
    return fetched_image(page, wait_image(page, elem_id, other_than))


def fetched_pixels(page, src: str, mode: str = "RGB") -> np.ndarray:
    """The pixels of the image at ``src``, in ``mode``, as ints (so that differences do not wrap)."""
    return np.asarray(fetched_image(page, src).convert(mode)).astype(int)


def shown_pixels(page, elem_id: str, mode: str = "RGB", other_than: str | None = None) -> np.ndarray:
    """The pixels of the image #elem_id shows (once loaded, and not ``other_than``), in ``mode``, as ints."""
    return fetched_pixels(page, wait_image(page, elem_id, other_than), mode)


def fill_and_enter(box, value) -> None:
    """Type a value into a Playwright locator and press Enter, as a person commits a number."""
    box.fill(str(value))
    box.press("Enter")


def set_number(page, elem_id: str, value) -> None:
    """Type ``value`` into #elem_id's box (a number, a text or a dropdown's) and press Enter."""
    fill_and_enter(page.locator(f"#{elem_id} input, #{elem_id} textarea").first, value)


def field_value(page, elem_id: str) -> str:
    """What #elem_id's box (a number, a text or a dropdown's) holds now."""
    return page.locator(f"#{elem_id} input, #{elem_id} textarea").first.input_value()


def type_into_slider(page, elem_id: str, value) -> None:
    """Type a value into a slider's number box and leave it (Tab), as a person sets a slider exactly."""
    box = page.locator(f"#{elem_id} input[data-testid='number-input']")
    box.fill(str(value))
    box.press("Tab")


@contextlib.contextmanager
def app_page(browser, url: str, viewport: dict | None = None):
    """The app at ``url`` in a new page of a browser context of its own (its own cookies, storage and gradio
    session), drawn: (the page, the console errors and uncaught exceptions it logs from its first request on).
    The context closes after."""
    context = browser.new_context(viewport=viewport or {"width": 1400, "height": 1000})
    try:
        page = context.new_page()
        page.set_default_timeout(60_000)
        errors = console_errors(page)
        page.goto(url)
        page.wait_for_selector("#t2i-generate")
        yield page, errors
    finally:
        context.close()


def console_errors(page) -> list:
    """A list that fills with the page's console errors and uncaught exceptions from now on."""
    errors = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    return errors


def save_screenshot(page, name: str, part=None) -> None:
    """The page as a person sees it (or only ``part``, a locator); into docs/screenshots/ when
    WORKBENCH_SCREENSHOTS names that folder (``make screenshots``), else a throwaway file."""
    import os
    import tempfile
    from pathlib import Path

    folder = Path(os.environ.get("WORKBENCH_SCREENSHOTS") or tempfile.gettempdir())
    folder.mkdir(parents=True, exist_ok=True)
    if part is not None:
        part.screenshot(path=str(folder / f"{name}.png"))
        return
    page.screenshot(path=str(folder / f"{name}.png"), full_page=True)


def open_tab(page, name: str) -> None:
    """Click the tab whose button reads ``name``; in a narrow window, through the tab bar's "More tabs" menu."""
    tab, more = page.get_by_role("tab", name=name, exact=True), page.get_by_role("button", name="More tabs")
    tab.or_(more).first.wait_for(state="visible")  # the tab bar drawn (a page that has just loaded)
    if not tab.is_visible():
        more.click()
        tab = page.locator(".overflow-dropdown").get_by_text(name, exact=True)
    tab.click()


# What shows that each tab has been drawn (a tab's content mounts when it is first opened).
TAB_SHOWN = {"Text to image": "#t2i-generate", "Unconditional": "#ddpm-generate", "Noise": "#noise-strip img",
             "Compare": "#cmp-run", "Training": "#train-start", "History": "#history-gallery",
             "PNG Info": "#pnginfo-file"}


def open_noise_tab(page) -> None:
    """Open the Noise tab and wait until its last plot has drawn its line."""
    open_tab(page, "Noise")
    page.wait_for_selector("#noise-plot-3 svg g.mark-line path")


def pick(page, elem_id: str, option: str) -> None:
    """Open dropdown #elem_id and click its option ``option``, as a person picks one."""
    page.locator(f"#{elem_id} input").first.click()
    page.locator(f"#{elem_id}").get_by_role("option", name=option, exact=True).click()  # its own list: another
    # dropdown's list of the same options may still be in the page


def wait_text(page, elem_id: str, text, timeout: float = 120_000) -> str:
    """Wait until #elem_id's text (``elem_id`` may go on with a selector: "train-progress .wb-progress-text")
    contains ``text`` (a str), or matches it (a compiled ``re`` pattern, searched); its text then. ``timeout`` in
    ms, as Playwright's."""
    if isinstance(text, re.Pattern):
        page.wait_for_function(
            "([selector, source, flags]) => new RegExp(source, flags).test("
            "document.querySelector(selector)?.innerText ?? '')",
            arg=[f"#{elem_id}", text.pattern, "i" if text.flags & re.IGNORECASE else ""], timeout=timeout)
    else:
        page.wait_for_function(f"() => document.querySelector('#{elem_id}')?.innerText.includes({text!r})",
                               timeout=timeout)
    return page.locator(f"#{elem_id}").first.inner_text()


def in_viewport(page, selector: str) -> bool:
    """Whether the whole of ``selector``'s first element is on screen, as the page is scrolled now."""
    box = page.locator(selector).first.bounding_box()
    size = page.viewport_size
    return box is not None and box["y"] >= 0 and box["y"] + box["height"] <= size["height"] \
        and box["x"] >= 0 and box["x"] + box["width"] <= size["width"]
