"""Small helpers shared by the API and browser tests."""

import time


def watch_images(page, image_id: str, progress_id: str, timeout: float = 90.0) -> set:
    """Every src #image_id shows until #progress_id says done (or the timeout), the last one included."""
    seen, deadline = set(), time.time() + timeout
    while time.time() < deadline:
        src = image_src(page, image_id)
        if src:
            seen.add(src)
        if "done" in page.locator(f"#{progress_id}").inner_text():
            break
        time.sleep(0.03)
    seen.add(image_src(page, image_id))
    return seen


def wait_for_outputs(job, n: int, timeout: float = 60.0) -> list:
    """A gradio_client job's outputs once it has streamed at least ``n`` of them (or the timeout passed)."""
    deadline = time.time() + timeout
    while time.time() < deadline and len(job.outputs()) < n:
        time.sleep(0.05)
    return job.outputs()


def image_src(page, elem_id: str):
    """The src of the first <img> inside #elem_id, None while it shows none."""
    img = page.locator(f"#{elem_id} img")
    return img.first.get_attribute("src") if img.count() else None


def fill_and_enter(box, value) -> None:
    """Type a value into a Playwright locator and press Enter, as a person commits a number."""
    box.fill(str(value))
    box.press("Enter")


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
    tab = page.get_by_role("tab", name=name, exact=True)
    if not tab.is_visible():
        page.get_by_role("button", name="More tabs").click()
        tab = page.locator(".overflow-dropdown").get_by_text(name, exact=True)
    tab.click()


def pick(page, elem_id: str, option: str) -> None:
    """Open dropdown #elem_id and click its option ``option``, as a person picks one."""
    page.locator(f"#{elem_id} input").first.click()
    page.get_by_role("option", name=option, exact=True).click()


def wait_text(page, elem_id: str, text: str, timeout: float = 60_000) -> str:
    """Wait until #elem_id's text contains ``text``; its text then."""
    page.wait_for_function(f"() => document.querySelector('#{elem_id}')?.innerText.includes({text!r})",
                           timeout=timeout)
    return page.locator(f"#{elem_id}").inner_text()


def in_viewport(page, selector: str) -> bool:
    """Whether the whole of ``selector``'s first element is on screen, as the page is scrolled now."""
    box = page.locator(selector).first.bounding_box()
    size = page.viewport_size
    return box is not None and box["y"] >= 0 and box["y"] + box["height"] <= size["height"] \
        and box["x"] >= 0 and box["x"] + box["width"] <= size["width"]
