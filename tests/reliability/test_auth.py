"""--auth closes every route a caller could use to act on another user's runs, the cancel route included."""

import httpx
import pytest

from tests.conftest_app import free_port


@pytest.fixture(scope="module")
def app_with_auth(tmp_path_factory):
    import app

    root = tmp_path_factory.mktemp("auth")
    args = app.parse_args(["--port", str(free_port()), "--models-dir", str(root / "models"), "--data-dir",
                           str(root / "data"), "--outputs-dir", str(root / "outputs"), "--device", "cpu",
                           "--auth", "ada:secret"])
    demo, bench = app.build_app(args)
    _, url, _ = app.launch(demo, args, prevent_thread_lock=True, quiet=True)
    yield url
    demo.close()
    bench.close()


def test_cancel_needs_a_login(app_with_auth):
    """Gradio 6.31 answers POST /gradio_api/cancel without checking the login; the app's guard does."""
    body = {"session_hash": "someone-elses", "fn_index": 0, "event_id": "their-event"}
    refused = httpx.post(app_with_auth + "gradio_api/cancel", json=body, timeout=10)
    assert refused.status_code == 401 and refused.json() == {"detail": "Not authenticated"}
    with httpx.Client(timeout=10) as logged_in:
        assert logged_in.post(app_with_auth + "login", data={"username": "ada", "password": "secret"}
                              ).status_code == 200
        assert logged_in.post(app_with_auth + "gradio_api/cancel", json=body).status_code == 200


@pytest.mark.parametrize("route", ["gradio_api/info", "config", "gradio_api/queue/status"])
def test_other_routes_need_a_login_too(app_with_auth, route):
    assert httpx.get(app_with_auth + route, timeout=10).status_code == 401


def test_default_bind_is_this_machine_only():
    import app

    assert app.parse_args([]).host == "127.0.0.1" and app.parse_args([]).share is False


SDAPI_ROUTES = [("POST", "txt2img"), ("POST", "img2img"), ("GET", "progress"), ("POST", "interrupt"), ("POST", "skip"),
                ("GET", "samplers"), ("GET", "schedulers"), ("GET", "sd-models"), ("GET", "loras"), ("GET", "options"),
                ("POST", "options"), ("GET", "scripts"), ("POST", "png-info"), ("POST", "refresh-checkpoints")]


def test_every_a1111_route_needs_http_basic_credentials(app_with_auth):
    """--auth covers AUTOMATIC1111's /sdapi/v1 routes as A1111's --api-auth does: HTTP basic, in A1111's error shape."""
    import webuiapi

    refused = {"error": "HTTPException", "detail": "Incorrect username or password", "body": "",
               "errors": "401: Incorrect username or password"}
    for method, route in SDAPI_ROUTES:
        for auth in (None, ("ada", "wrong"), ("eve", "secret")):
            answer = httpx.request(method, f"{app_with_auth}sdapi/v1/{route}", json={}, auth=auth, timeout=10)
            assert (answer.status_code, answer.json()) == (401, refused), (method, route, auth)
            assert answer.headers["www-authenticate"] == "Basic"
    port = int(app_with_auth.rstrip("/").rsplit(":", 1)[1])
    client = webuiapi.WebUIApi(port=port, username="ada", password="secret")
    assert client.get_options()["sd_model_checkpoint"] == "digits-sd"
    assert client.get_scripts() == {"txt2img": [], "img2img": []}
