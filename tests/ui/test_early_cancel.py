"""gradio_client's ``job.cancel()`` right after ``submit``, while the device is busy, stops the job: it sends the
cancel before it knows the job's event id (``event_id: null``) and never again; the server gives it the event."""

import json

import httpx
from gradio_client import Client

BUSY = "a handwritten digit seven keeping the device busy"
CANCELLED = "a handwritten digit seven cancelled at once"  # prompts no other test uses: /history finds only these
AFTER = "a handwritten digit seven queued after the cancel"


def found(client, prompt: str) -> int:
    value = client.predict(search=prompt, api_name="/history")
    return (value if isinstance(value, dict) else json.loads(value))["total"]


def test_a_job_cancelled_right_after_submit_never_runs(running_app):
    url = running_app[0]
    busy_client, client = Client(url, verbose=False), Client(url, verbose=False)
    try:
        busy = busy_client.submit(model="digits-sd", prompt=BUSY, steps=150, width=128, height=128, seed=1, api_name="/txt2img")
        next(iter(busy))  # its first update: it holds the device
        job = client.submit(model="digits-sd", prompt=CANCELLED, steps=2, seed=2, api_name="/txt2img")
        job.cancel()
        later = client.submit(model="digits-sd", prompt=AFTER, steps=2, seed=3, api_name="/txt2img")
        busy.cancel()  # its event id is known by now: Gradio stops it
        later.result()  # the device has taken the queue in order: the cancelled job would have run before this
        assert (found(client, CANCELLED), found(client, AFTER)) == (0, 1)
    finally:
        busy_client.close()
        client.close()


def test_a_cancel_without_an_event_id_after_the_join_was_answered_stops_that_job(running_app):
    """The order forced over plain HTTP: the join is answered, then the cancel comes without the id (a client that
    had not read the answer yet)."""
    url = running_app[0]
    busy_client, client = Client(url, verbose=False), Client(url, verbose=False)
    try:
        busy = busy_client.submit(model="digits-sd", prompt=BUSY, steps=150, width=128, height=128, seed=4, api_name="/txt2img")
        next(iter(busy))
        fn_index = next(d["id"] for d in client.config["dependencies"] if d.get("api_name") == "txt2img")
        session = "forced-order-session"
        joined = httpx.post(f"{url}gradio_api/queue/join", json={
            "data": ["digits-sd", "a handwritten digit seven joined then cancelled", "", 2, 7.5, "DDIM", 5, 32, 32,
                     0, "auto", "", 1.0, 1, False],
            "fn_index": fn_index, "session_hash": session, "event_data": None, "trigger_id": None})
        assert joined.status_code == 200 and joined.json()["event_id"]
        cancelled = httpx.post(f"{url}gradio_api/cancel", json={"fn_index": fn_index, "session_hash": session,
                                                               "event_id": None})
        assert cancelled.status_code == 200
        later = client.submit(model="digits-sd", prompt=AFTER + " again", steps=2, seed=6, api_name="/txt2img")
        busy.cancel()
        later.result()
        assert found(client, "joined then cancelled") == 0 and found(client, AFTER + " again") == 1
    finally:
        busy_client.close()
        client.close()
