"""A launched app, shared by the API and browser tests of a session."""

import socket
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def app_dirs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("workbench")
    for name in ("models", "data", "outputs"):
        (root / name).mkdir()
    return root


@pytest.fixture(scope="session")
def running_app(app_dirs, tmp_path_factory):
    """(url, workbench, dirs) of an app launched on a free port, closed after the session."""
    import os

    os.environ["GRADIO_TEMP_DIR"] = str(tmp_path_factory.mktemp("gradio"))
    import app

    args = app.parse_args([
        "--port", str(free_port()), "--models-dir", str(app_dirs / "models"),
        "--data-dir", str(app_dirs / "data"), "--outputs-dir", str(app_dirs / "outputs"), "--device", "cpu",
    ])
    demo, bench = app.build_app(args)
    _, url, _ = app.launch(demo, args, prevent_thread_lock=True, quiet=True)
    yield url, bench, app_dirs
    demo.close()
    bench.close()


@pytest.fixture(scope="session")
def connected_client(running_app):
    """One gradio_client Client of the shared app for the session (connecting reads the app's config and API: about
    a second each time on the test machine)."""
    from gradio_client import Client

    c = Client(running_app[0], verbose=False)
    yield c
    c.close()


@pytest.fixture()
def client(connected_client):
    """The session's client, in a session of the app of its own (a new session hash: no state an earlier test left
    in its gr.State, as a new browser tab gets)."""
    connected_client.reset_session()
    return connected_client


@pytest.fixture()
def no_training_job_left(running_app):
    """The test ends with no training job on the shared app, so that the next test (and other tabs') start clean."""
    yield
    running_app[1].stop_training(wait=120)
