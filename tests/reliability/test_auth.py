"""--auth closes every route a caller could use to act on another user's runs, the cancel route included."""

import json
import re

import httpx
import pytest

from ui import gradio_compat

from tests.conftest_app import free_port
from tests.helpers import as_dict


@pytest.fixture(scope="module")
def app_with_auth(tmp_path_factory):
    import app

    root = tmp_path_factory.mktemp("auth")
    args = app.parse_args(["--port", str(free_port()), "--models-dir", str(root / "models"), "--data-dir",
                           str(root / "data"), "--outputs-dir", str(root / "outputs"), "--device", "cpu",
                           "--auth", "ada:secret"])
    demo, bench = app.build_app(args)
    _, url, _ = app.launch(demo, args, prevent_thread_lock=True, quiet=True)
    yield url, demo
    demo.close()
    bench.close()


def test_cancel_needs_a_login(app_with_auth):
    """Gradio 6.31 answers POST /gradio_api/cancel without checking the login; the app's guard does."""
    url = app_with_auth[0]
    body = {"session_hash": "someone-elses", "fn_index": 0, "event_id": "their-event"}
    refused = httpx.post(url + "gradio_api/cancel", json=body, timeout=10)
    assert refused.status_code == 401 and refused.json() == {"detail": "Not authenticated"}
    with httpx.Client(timeout=10) as logged_in:
        assert logged_in.post(url + "login", data={"username": "ada", "password": "secret"}
                              ).status_code == 200
        assert logged_in.post(url + "gradio_api/cancel", json=body).status_code == 200


@pytest.mark.parametrize("route", ["gradio_api/info", "config", "gradio_api/queue/status"])
def test_other_routes_need_a_login_too(app_with_auth, route):
    assert httpx.get(app_with_auth[0] + route, timeout=10).status_code == 401


def filled(path: str) -> str:
    """A route's path with each parameter given a value: "/gradio_api/call/{api_name}" -> ".../call/x"."""
    return re.sub(r"\{[^}]*\}", "x", path)


def test_every_route_of_the_app_refuses_a_caller_without_login(app_with_auth):
    """The routes are read from the launched app itself (its FastAPI routes), so a route a Gradio upgrade adds is
    tried too. Every one outside the login page's own refuses a caller without login with 401, whatever the request
    holds (Gradio 6.31 served /gradio_api/stream/..., /gradio_api/heartbeat/..., /gradio_api/reset and FastAPI's
    /openapi.json without one). Were Gradio to rename what the login check reads (its auth, cookie_id, tokens),
    these requests would fail otherwise than with 401 (ui/gradio_compat.py reads them with no default)."""
    url, demo = app_with_auth
    routes = gradio_compat.app_routes(demo)
    assert len(routes) > 40 and ("/gradio_api/queue/join", ("POST",)) in routes  # the whole list, Gradio's API in it
    served, public, a1111 = [], set(), 0
    with httpx.Client(timeout=10, follow_redirects=False) as anonymous:
        for path, methods in routes:
            if gradio_compat.RequireLogin.is_public(path):
                public.add(path.rstrip("/") or "/")
                continue
            for method in methods:
                if method == "WEBSOCKET":
                    continue  # none in Gradio 6.31; the guard closes one before accepting it
                with anonymous.stream(method, url.rstrip("/") + filled(path)) as response:
                    body = response.read() if method != "HEAD" else b'{"detail":"Not authenticated"}'
                    refused = b'{"detail":"Not authenticated"}'
                    if path.startswith("/sdapi/v1/"):  # A1111's routes ask for HTTP basic, in A1111's shape
                        a1111 += 1
                        refused = A1111_REFUSED
                    if response.status_code != 401 or body != refused:
                        served.append(f"{method} {path}: {response.status_code}")
    assert served == [] and a1111 == len(SDAPI_ROUTES)
    # What answers without login is the login page and the files it loads, named one by one in the guard.
    assert public == {"/", "/login", "/logout", "/favicon.ico", "/theme.css", "/robots.txt", "/manifest.json",
                      "/pwa_icon", "/pwa_icon/{size}", "/gradio_api/theme.css", "/gradio_api/startup-events",
                      "/gradio_api/user", "/gradio_api/token", "/gradio_api/app_id", "/gradio_api/login_check",
                      "/assets/{path:path}", "/static/{path:path}", "/svelte/{path:path}"}


def test_a_logged_in_caller_gets_through_the_guard(app_with_auth):
    url = app_with_auth[0]
    with httpx.Client(timeout=10) as logged_in:
        assert logged_in.post(url + "login", data={"username": "ada", "password": "secret"}).status_code == 200
        for route in ("config", "gradio_api/info", "openapi.json"):
            assert logged_in.get(url + route).status_code == 200
    from gradio_client import Client

    client = Client(url, auth=("ada", "secret"), verbose=False)
    try:  # what the Training tab shows a person on a server that has trained nothing: idle, no grid
        status, grid = client.predict(api_name="/train_status")
    finally:
        client.close()
    status = as_dict(status)
    assert (status["state"], status["run_name"], status["step"], status["total"], grid) == ("idle", "", 0, 0, None)


def test_default_bind_is_this_machine_only():
    import app

    assert app.parse_args([]).host == "127.0.0.1" and app.parse_args([]).share is False


A1111_REFUSED = (b'{"error":"HTTPException","detail":"Incorrect username or password","body":"",'
                 b'"errors":"401: Incorrect username or password"}')
SDAPI_ROUTES = [("POST", "txt2img"), ("POST", "img2img"), ("GET", "progress"), ("POST", "interrupt"), ("POST", "skip"),
                ("GET", "samplers"), ("GET", "schedulers"), ("GET", "sd-models"), ("GET", "loras"), ("GET", "options"),
                ("POST", "options"), ("GET", "scripts"), ("POST", "png-info"), ("POST", "refresh-checkpoints")]


def test_every_a1111_route_needs_http_basic_credentials(app_with_auth):
    """--auth covers AUTOMATIC1111's /sdapi/v1 routes as A1111's --api-auth does: HTTP basic, in A1111's error shape."""
    import webuiapi

    refused = json.loads(A1111_REFUSED)
    for method, route in SDAPI_ROUTES:
        for auth in (None, ("ada", "wrong"), ("eve", "secret")):
            answer = httpx.request(method, f"{app_with_auth[0]}sdapi/v1/{route}", json={}, auth=auth, timeout=10)
            assert (answer.status_code, answer.json()) == (401, refused), (method, route, auth)
            assert answer.headers["www-authenticate"] == "Basic"
    port = int(app_with_auth[0].rstrip("/").rsplit(":", 1)[1])
    client = webuiapi.WebUIApi(port=port, username="ada", password="secret")
    assert client.get_options()["sd_model_checkpoint"] == "digits-sd"
    assert client.get_scripts() == {"txt2img": [], "img2img": []}
