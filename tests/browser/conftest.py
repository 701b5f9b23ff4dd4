"""A real headless Chromium (Debian's), driven by Playwright."""

import shutil

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-quic"]


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture()
def page(browser, running_app):
    """The app in a new page of a browser context of its own: a session of its own, as a person's new window."""
    from tests.helpers import app_page

    with app_page(browser, running_app[0]) as (page, _):
        yield page
