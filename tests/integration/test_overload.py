"""Heavy traffic against the real server (docs/limits-and-overload.md): answers, slower, never refusals
below the stated wait, and a frontend that survives bodies of max_request_size from many clients at once.

Load *targets* (goodput at 16x, p99) live in `make bench` (O); here: 4x the tuned concurrency is answered
200 and right, with no worker restart, and a flood of maximum-size bodies leaves small good requests
answered and the frontend alive.
"""

import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from own_server import own_server, worker_pids
from support import CAT_LABELS, encode, photo
from tskit.declaration import served

pytestmark = pytest.mark.heavy(seconds=30)  # seconds in a one-process run on 2 cores; tests/suite_order.py

TUNED_CONCURRENCY = 16  # `make tune CONCURRENCY=16`: what the served models' batching was tuned at


def post(session: requests.Session, url: str, token: str, body: bytes, content_type: str, timeout: float = 120):
    return session.post(url, data=body, headers={"Content-Type": content_type, "Authorization": f"Bearer {token}"},
                        timeout=timeout)


def hammer(url: str, token: str, body: bytes, content_type: str, connections: int, per_connection: int):
    """`connections` clients, each with its own keep-alive connection, sending `per_connection` requests
    back to back: (status, body) of every answer."""
    def client(_):
        with requests.Session() as session:
            return [(r.status_code, r.content) for r in
                    (post(session, url, token, body, content_type) for _ in range(per_connection))]

    with ThreadPoolExecutor(max_workers=connections) as pool:
        return [answer for answers in pool.map(client, range(connections)) for answer in answers]


@pytest.mark.parametrize("model, body, content_type, right", [
    ("mobilenet_v2", encode(photo("chelsea")), "image/jpeg",
     lambda answer: answer["predictions"][0]["label"] in CAT_LABELS),
])  # the text models at 4x: the soak's 4x phase (test_soak.py), over all three models at once
def test_4x_the_tuned_concurrency_is_all_answered_right_without_a_restart(client, server, model, body, content_type,
                                                                          right):
    pids = worker_pids(client, [model])
    connections = 4 * TUNED_CONCURRENCY
    answers = hammer(f"{server.inference_url}/predictions/{model}", server.keys()["inference"], body, content_type,
                     connections, per_connection=3)
    statuses = [status for status, _ in answers]
    assert statuses == [200] * len(answers), {s: statuses.count(s) for s in set(statuses)}
    assert all(right(json.loads(content)) for _, content in answers)
    assert worker_pids(client, [model]) == pids


def flood_body(size: int) -> bytes:
    """`size` bytes that start like a JPEG and are not one: the handler refuses them (415) after a look at the start."""
    return b"\xff\xd8\xff\xe0" + b"\x00" * (size - 4)


def test_a_flood_of_maximum_size_bodies_leaves_good_requests_answered_and_the_frontend_alive(tmp_path):
    models = [d.name for d in served() if d.kind == "image-classifier"][:1]
    with own_server(str(tmp_path), models=models) as server:
        api = server.client()
        model, limit, token = models[0], int(server.props["max_request_size"]), server.keys()["inference"]
        url = f"{server.inference_url}/predictions/{model}"
        pids = {model: sorted(w["pid"] for w in api.describe(model)[0]["workers"])}
        at_limit, over_limit = flood_body(limit - 1024), flood_body(limit + 1)
        good, good_answers, stop = encode(photo("chelsea")), [], threading.Event()

        def good_client():
            with requests.Session() as session:
                while not stop.is_set():
                    response = post(session, url, token, good, "image/jpeg")
                    good_answers.append((response.status_code, response.json()))

        watcher = threading.Thread(target=good_client)
        watcher.start()
        started = time.monotonic()
        try:
            flood = hammer(url, token, at_limit, "image/jpeg", connections=32, per_connection=2)
            over = hammer(url, token, over_limit, "image/jpeg", connections=8, per_connection=1)
        finally:
            stop.set()
            watcher.join(timeout=120)
        took = time.monotonic() - started
        # every flood body: the contract's 4xx for that request (or 503 with its JSON body if the queue was full)
        kinds = {(status, body[:40]) for status, body in flood if not 400 <= status < 500}
        assert all(400 <= status < 500 or status == 503 for status, _ in flood), kinds
        assert all(b'"type"' in body and b'"message"' in body for _, body in flood)
        assert [status for status, _ in over] == [413] * len(over)
        # small good requests were answered, right, all along
        assert len(good_answers) >= 3 and all(status == 200 for status, _ in good_answers), good_answers[:3]
        assert all(answer["predictions"][0]["label"] in CAT_LABELS for _, answer in good_answers)
        # the frontend is alive, the workers are the same, and the JVM never ran out of memory
        assert api.request("inference", "GET", "/ping").status_code == 200
        assert {model: sorted(w["pid"] for w in api.describe(model)[0]["workers"])} == pids
        with open(os.path.join(server.log_dir, "ts_log.log"), encoding="utf-8", errors="replace") as f:
            assert "OutOfMemoryError" not in f.read()
        print(f"{len(flood)} bodies of {limit - 1024:,} bytes from 32 clients + {len(over)} over the limit in "
              f"{took:.1f} s; {len(good_answers)} good requests answered 200 meanwhile")


def test_a_request_that_waited_past_its_patience_is_refused_before_the_model(client, server):
    """X-Request-Start (a proxy's or client's stamp) + X-Request-Timeout-Ms reach the handler through the real
    frontend: a stale request gets the contract's 503 (type RequestExpired), a fresh one its answer."""
    jpeg, now = encode(photo("chelsea")), time.time()
    stale = client.infer("POST", "/predictions/mobilenet_v2", data=jpeg, headers={
        "Content-Type": "image/jpeg", "X-Request-Start": f"t={now - 30:.3f}", "X-Request-Timeout-Ms": "1000"})
    assert stale.status_code == 503, stale.text
    assert stale.json()["type"] == "RequestExpired" and stale.json()["code"] == 503
    fresh = client.infer("POST", "/predictions/mobilenet_v2", data=jpeg, headers={
        "Content-Type": "image/jpeg", "X-Request-Start": f"t={time.time() * 1e3:.0f}", "X-Request-Timeout-Ms": "60000"})
    assert fresh.status_code == 200 and fresh.json()["predictions"][0]["label"] in CAT_LABELS
