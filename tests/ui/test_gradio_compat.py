"""One test for each Gradio internal ui/gradio_compat.py uses, against the installed Gradio: an upgrade that renames
or changes one fails here, by name. (Route listing and the login guard on a launched app: tests/reliability/
test_auth.py; atomic cache writes: tests/ui/test_cache_images.py; file inputs checked first: tests/reliability/
test_bad_input.py.)"""

import asyncio
import concurrent.futures
import re
import time
from pathlib import Path

import gradio as gr
import pytest
from fastapi.testclient import TestClient

from ui import gradio_compat

ROOT = Path(__file__).resolve().parents[2]


def run_apart(coroutine):
    """``asyncio.run`` in a thread of its own: the browser tests' Playwright keeps an event loop running in the
    suite's main thread, where ``asyncio.run`` refuses to start."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def test_gradio_is_the_pinned_version():
    assert gr.__version__ == gradio_compat.GRADIO_VERSION
    pins = re.findall(r"^gradio==([\w.]+)", (ROOT / "requirements.txt").read_text(), re.M)
    assert pins == [gradio_compat.GRADIO_VERSION]


def test_the_login_state_is_read_as_gradio_sets_it():
    """routes.App's auth, cookie_id and tokens: no login before /login, a login after it, with Gradio's cookie."""
    with gr.Blocks() as demo:
        gr.Markdown("x")
    demo.auth = [("ada", "secret")]
    open_app = gr.routes.App.create_app(gr.Blocks())
    assert gradio_compat.login_required(open_app) is False
    server = gr.routes.App.create_app(demo)
    assert gradio_compat.login_required(server) is True
    with TestClient(server) as http:
        assert not gradio_compat.logged_in([], server)
        response = http.post("/login", data={"username": "ada", "password": "secret"})
        assert response.status_code == 200
        cookie = "; ".join(f"{k}={v}" for k, v in http.cookies.items())
        assert gradio_compat.logged_in([(b"cookie", cookie.encode())], server)
        forged = "; ".join(f"{k}=x{v}" for k, v in http.cookies.items())
        assert not gradio_compat.logged_in([(b"cookie", forged.encode())], server)
        assert not gradio_compat.logged_in([(b"cookie", b"not a cookie \xff;;==")], server)


def test_the_cache_folder_and_uploads_are_gradios(tmp_path, monkeypatch):
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path))
    with gr.Blocks() as demo:
        gr.Image()
    assert gradio_compat.upload_folder() == str(tmp_path)
    assert gradio_compat.cache_folder(demo) == str(tmp_path)
    assert gradio_compat.uploaded_files(demo) == set() and gradio_compat.uploaded_files(demo) is demo.upload_file_set


def test_the_first_values_kept_in_the_cache_are_gradios(tmp_path, monkeypatch):
    """A widget's first value is cached with keep_in_cache; prune_cache spares those files."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(cache))
    from PIL import Image

    Image.new("RGB", (4, 4), (9, 9, 9)).save(tmp_path / "first.png")
    with gr.Blocks() as demo:
        gr.Image(str(tmp_path / "first.png"), type="filepath")
    (kept,) = gradio_compat.first_values(demo)  # the copy in the cache, not the file given
    assert Path(kept).name == "first.png" and Path(kept).parent.parent == cache


def test_file_inputs_are_checked_before_gradio_reads_them(tmp_path, monkeypatch):
    """preprocess_data, BlockFunction.fn and .inputs, data_model: the image's path and its parameter's name reach the
    check before Gradio opens the file; JSON that is not a file reaches on_invalid with the parameter's name."""
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path))
    from PIL import Image

    def handler(picture):
        return picture

    with gr.Blocks() as demo:
        image = gr.Image(type="filepath", image_mode=None)
        image.change(handler, image, image)
    Image.new("RGB", (4, 4)).save(tmp_path / "a.png")
    checked, invalid = [], []

    def check(path, name):
        checked.append((Path(path).name, name))

    def on_invalid(name, multiple, value):
        invalid.append((name, multiple, value))
        return ValueError(f"{name} is not a file")

    gradio_compat.check_file_inputs(demo, on_invalid, check)
    block_fn = demo.fns[0]
    payload = {"path": str(tmp_path / "a.png"), "meta": {"_type": "gradio.FileData"}, "orig_name": "a.png"}
    assert run_apart(demo.preprocess_data(block_fn, [payload], None)) == [str(tmp_path / "a.png")]
    assert checked == [("a.png", "picture")]
    with pytest.raises(ValueError, match="^picture is not a file$"):
        run_apart(demo.preprocess_data(block_fn, ["abc"], None))
    assert invalid == [("picture", False, "abc")]


def test_plot_data_is_what_gr_plot_shows():
    value = gradio_compat.plot_data("altair", '{"mark": "line"}')
    assert gr.Plot().postprocess(value).plot == '{"mark": "line"}'


def test_a_job_pushed_on_the_queue_runs_as_a_join_and_its_messages_are_dropped_after():
    """Blocks._queue: Queue.push with a PredictBodyInternal runs the event behind the queue (queue_push); while it
    runs, pending_event_ids_session holds it (queued_or_running); once done, event_ids_to_events no longer does and
    its kept messages go (forget_event)."""
    import threading

    from fastapi import Request

    started, release = threading.Event(), threading.Event()
    ran = []

    def job(value):
        started.set()
        release.wait(timeout=60)
        ran.append(value)

    with gr.Blocks() as demo:
        box = gr.Textbox(visible=False)
        fn_index = gr.Button(visible=False).click(job, box, None, concurrency_limit=1)["id"]
    server = gr.routes.App.create_app(demo)
    pushed = {}

    @server.post("/push")
    async def push(request: Request):
        pushed["answer"] = await gradio_compat.queue_push(request.app, request, fn_index, ["seven"])
        return {"ok": True}

    with TestClient(server) as http:
        assert http.get("/gradio_api/startup-events").json() is True  # what launch() asks for: the queue starts
        assert http.post("/push").status_code == 200
        ok, event_id, state = pushed["answer"]
        assert (ok, state) == (True, "success") and isinstance(event_id, str) and event_id
        assert started.wait(timeout=60), "the pushed event never ran"
        assert gradio_compat.queued_or_running(server, event_id, event_id)  # a session of its own
        assert not gradio_compat.queued_or_running(server, "another session", event_id)
        assert not gradio_compat.forget_event(server, event_id)  # still running: its messages stay
        release.set()
        queue = server.get_blocks()._queue
        deadline = time.monotonic() + 60  # Gradio ends the event in its own loop after the function returns
        while event_id in queue.event_ids_to_events and time.monotonic() < deadline:
            http.get("/config")  # a round trip to the server lets its loop run: no fixed sleep
        assert ran == ["seven"]
        assert gradio_compat.forget_event(server, event_id)
        assert event_id not in queue.pending_messages_per_session
        assert not gradio_compat.queued_or_running(server, event_id, event_id)
