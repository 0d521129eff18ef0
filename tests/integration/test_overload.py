"""Heavy traffic against the real server (docs/limits-and-overload.md): answers, slower, never refusals
below the stated wait, and a frontend that survives bodies of max_request_size from many clients at once.

Load *targets* (goodput at 16x, p99) live in `make bench` (O); here: 4x the tuned concurrency is answered
200 and right, with no worker restart, and a flood of maximum-size bodies leaves small good requests
answered and the frontend alive.
"""

import json
import os
import time
from typing import Callable, List, Optional

import pytest

from own_server import worker_pids
from support import CAT_LABELS, encode, photo
from tskit.closed_loop import Job, Judge, Loop, Outcome
from tskit.declaration import served

pytestmark = pytest.mark.heavy(seconds=30)  # seconds in a one-process run on 2 cores (tests/suite_order.py)

TUNED_CONCURRENCY = 16  # `make tune CONCURRENCY=16`: what the served models' batching was tuned at


def hammer(url: str, token: str, body: bytes, content_type: str, connections: int, per_connection: int,
           judge: Judge) -> List[Outcome]:
    """`connections` clients of the one closed loop (tskit.closed_loop), each with its own keep-alive
    connection, `per_connection` requests each on average: every answer an Outcome judged by `judge`."""
    return Loop(lambda i: Job(url, body, content_type), connections, judge, key=lambda: token, timeout=120,
                count=connections * per_connection).run()


def answered(right: Callable[[dict], bool]) -> Judge:
    """A 200 whose JSON answer is `right`."""
    def judge(job: Job, status: int, body: bytes) -> Optional[str]:
        return None if status == 200 and right(json.loads(body)) else f"status {status}: {body[:200]!r}"
    return judge


def refused_per_contract(allowed: Callable[[int], bool]) -> Judge:
    """A status that `allowed` accepts, with the contract's error fields in its body."""
    def judge(job: Job, status: int, body: bytes) -> Optional[str]:
        fine = allowed(status) and b'"type"' in body and b'"message"' in body
        return None if fine else f"status {status}: {body[:40]!r}"
    return judge


def is_cat(answer: dict) -> bool:
    return answer["predictions"][0]["label"] in CAT_LABELS


@pytest.mark.parametrize("model, body, content_type, right", [
    ("mobilenet_v2", encode(photo("chelsea")), "image/jpeg", is_cat),
])  # the text models at 4x: the soak's 4x phase (test_soak.py), over all three models at once
def test_4x_the_tuned_concurrency_is_all_answered_right_without_a_restart(client, server, model, body, content_type,
                                                                          right):
    pids = worker_pids(client, [model])
    connections = 4 * TUNED_CONCURRENCY
    answers = hammer(f"{server.inference_url}/predictions/{model}", server.keys()["inference"], body, content_type,
                     connections, per_connection=3, judge=answered(right))
    statuses = [o.status for o in answers]
    assert len(answers) == 3 * connections
    assert statuses == [200] * len(answers), {s: statuses.count(s) for s in set(statuses)}
    assert not [o for o in answers if o.error], [o.error for o in answers if o.error][:5]
    assert worker_pids(client, [model]) == pids


def flood_body(size: int) -> bytes:
    """`size` bytes that start like a JPEG and are not one: the handler refuses them (415) after a look at the start."""
    return b"\xff\xd8\xff\xe0" + b"\x00" * (size - 4)


def test_a_flood_of_maximum_size_bodies_leaves_good_requests_answered_and_the_frontend_alive(server):
    """On the shared server (the repo's config): a flood that passes leaves it as it was, which is the test."""
    models = [d.name for d in served() if d.kind == "image-classifier"][:1]
    api = server.client()
    model, limit, token = models[0], int(server.props["max_request_size"]), server.keys()["inference"]
    url = f"{server.inference_url}/predictions/{model}"
    pids = {model: sorted(w["pid"] for w in api.describe(model)[0]["workers"])}
    at_limit, over_limit = flood_body(limit - 1024), flood_body(limit + 1)
    good = encode(photo("chelsea"))
    started = time.monotonic()
    # small good requests all along, from a client of their own
    with Loop(lambda i: Job(url, good, "image/jpeg"), 1, answered(is_cat), key=lambda: token,
              timeout=120) as good_load:
        flood = hammer(url, token, at_limit, "image/jpeg", connections=32, per_connection=1,
                       judge=refused_per_contract(lambda status: 400 <= status < 500 or status == 503))
        # the frontend's own 413 (Netty, before any handler): TorchServe 0.12 sends it with an empty body
        over = hammer(url, token, over_limit, "image/jpeg", connections=8, per_connection=1,
                      judge=lambda job, status, body: None if status == 413 else f"status {status}")
    took = time.monotonic() - started
    # every flood body: the contract's 4xx for that request (or 503 with its JSON body if the queue was full)
    assert not [o for o in flood if o.error], {o.error for o in flood if o.error}
    assert [o.status for o in over] == [413] * len(over), {o.error for o in over if o.error}
    assert not [o for o in over if o.error], {o.error for o in over if o.error}
    # small good requests were answered, right, all along
    good_answers = good_load.outcomes
    assert len(good_answers) >= 3 and not [o for o in good_answers if o.error], \
        [o.error for o in good_answers if o.error][:3]
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
