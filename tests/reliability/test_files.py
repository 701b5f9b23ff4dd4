"""The file routes serve the app's own cache and nothing else: traversal, other apps' temp files, models,
outputs and data answer 403 or 404."""

from pathlib import Path

import httpx
import pytest


@pytest.fixture(scope="module")
def foreign_file(tmp_path_factory):
    """A file in Gradio's default temp folder, as another Gradio app of the same user would leave it."""
    import tempfile

    folder = Path(tempfile.gettempdir()) / "gradio" / "another-app"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "secret.txt"
    path.write_text("not yours")
    return path


def test_the_app_caches_in_its_own_folder(running_app):
    import os

    cache = Path(os.environ["GRADIO_TEMP_DIR"]).resolve()
    assert cache != (Path(__import__("tempfile").gettempdir()) / "gradio").resolve()


@pytest.mark.parametrize("make_route", [
    lambda dirs, foreign: f"gradio_api/file={foreign}",
    lambda dirs, foreign: "gradio_api/file=../../../../etc/passwd",
    lambda dirs, foreign: "gradio_api/file=%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    lambda dirs, foreign: "gradio_api/file=/etc/passwd",
    lambda dirs, foreign: f"gradio_api/file={dirs / 'models'}",
    lambda dirs, foreign: f"gradio_api/file={Path(__file__).resolve()}",
])
def test_file_routes_serve_nothing_that_is_not_ours(running_app, foreign_file, make_route):
    url, _, dirs = running_app
    response = httpx.get(url + make_route(dirs, foreign_file), timeout=10)
    assert response.status_code in (403, 404), response.status_code
    assert "not yours" not in response.text and "root:" not in response.text


def test_outputs_are_not_served_by_path(running_app, client):
    url, _, dirs = running_app
    final = client.predict(model="digits-sd", prompt="a handwritten digit one", negative_prompt="", steps=2,
                           guidance_scale=7.5, scheduler="DDIM", seed=1, width=32, height=32, api_name="/txt2img")
    saved = dirs / final[3]["file"]  # shown relative to the server's folders: outputs/txt2img/...
    assert saved.is_file()
    assert httpx.get(f"{url}gradio_api/file={saved}", timeout=10).status_code in (403, 404)
