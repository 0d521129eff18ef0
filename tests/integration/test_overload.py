"""Heavy traffic against the real server (docs/limits-and-overload.md): answers, slower, never refusals
below the stated wait, and a frontend that survives bodies of max_request_size from many clients at once.

Load *targets* (goodput at 16x, p99) live in `make bench` (O); here: 4x the tuned concurrency is answered
200 and right, with no worker restart, and a flood of maximum-size bodies leaves small good requests
answered and the frontend alive.
"""

import time

import pytest

from overload_checks import check_4x_answered, check_flood, is_cat, torchserve
from support import CAT_LABELS, encode, photo
from tskit.declaration import served

pytestmark = pytest.mark.heavy(seconds=30)  # seconds in a one-process run on 2 cores (tests/suite_order.py)


@pytest.fixture(scope="module")
def target(server):
    """TorchServe here; the KServe engine gets the same checks in test_kserve_engine_load.py (not a heavy module:
    its engine's memory stays out of the heavy modules' start of the suite)."""
    return torchserve(server)


@pytest.mark.parametrize("model, body, content_type, right", [
    ("mobilenet_v2", encode(photo("chelsea")), "image/jpeg", is_cat),
])  # the text models at 4x: the soak's 4x phase (test_soak.py), over all three models at once
def test_4x_the_tuned_concurrency_is_all_answered_right_without_a_restart(target, model, body, content_type, right):
    check_4x_answered(target, model, body, content_type, right)


def test_a_flood_of_maximum_size_bodies_leaves_good_requests_answered_and_the_frontend_alive(target):
    """On the shared server (the repo's config): a flood that passes leaves it as it was, which is the test."""
    model = [d.name for d in served() if d.kind == "image-classifier"][0]
    print(check_flood(target, model))


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
