"""The shipped queue-wait rule (deploy/prometheusrule-queue-wait.yaml) on a real TorchServe's /metrics under load.

Two scrapes around a burst of concurrent requests; the rule's expression, read from the file, evaluated
between them with prometheus_client's parser (tskit.autoscaling.evaluate). The burst oversubscribes
mobilenet_v2 (16 in flight against 2 workers x batch 4), so requests do wait in TorchServe's queue.
"""

import concurrent.futures
import math
import statistics
import time

from dataclasses import dataclass
from typing import Callable

import pytest
import requests

from support import encode, photo
from tskit import autoscaling

MODEL = "mobilenet_v2"
SENT, CONCURRENCY = 40, 16


@dataclass
class Target:
    metrics_url: str
    predict: Callable[[bytes], int]  # one image -> the answer's status


@pytest.fixture(params=["torchserve", "kserve"])
def target(request, client, server) -> Target:
    """TorchServe, or the KServe engine on the same archives (it writes the same two counters: tskit.kserve_metrics)."""
    if request.param == "torchserve":
        return Target(server.metrics_url, lambda body: client.predict(MODEL, body, "image/jpeg").status_code)
    engine = request.getfixturevalue("kserve_engine")
    return Target(engine.inference_url, lambda body: requests.post(
        f"{engine.inference_url}/predictions/{MODEL}", data=body, timeout=120,
        headers={"Content-Type": "image/jpeg", **engine.auth_headers()}).status_code)


def scrape(server) -> str:
    response = requests.get(f"{server.metrics_url}/metrics", timeout=30)
    response.raise_for_status()
    return response.text


def settled_scrape(server, rule, before: str, sent: int, timeout: float = 10) -> str:
    """A scrape once the burst's counters stopped moving. TorchServe adds a request's queue latency
    after it has sent the answer, so the last answers can arrive a moment before their metric."""
    deadline, previous = time.monotonic() + timeout, None
    while True:
        text = scrape(server)
        readings = autoscaling.evaluate(rule, before, text).get(MODEL)
        current = (readings.requests, readings.queued_seconds) if readings else None
        if (current and current[0] >= sent and current == previous) or time.monotonic() > deadline:
            return text
        previous = current
        time.sleep(0.3)


def burst(target, bodies):
    """Send SENT images at CONCURRENCY; (status codes, per-request latencies, wall time)."""
    def one(i):
        start = time.monotonic()
        status = target.predict(bodies[i % len(bodies)])
        return status, time.monotonic() - start

    start = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(CONCURRENCY) as pool:
        results = list(pool.map(one, range(SENT)))
    return [code for code, _ in results], [latency for _, latency in results], time.monotonic() - start


def test_the_shipped_rule_reads_the_mean_queue_wait_of_a_burst(target):
    rules = autoscaling.queue_wait_rules()  # both shipped rules: per pod and per model across pods
    bodies = [encode(photo(name)) for name in ("chelsea", "coffee", "astronaut", "rocket")]
    assert target.predict(bodies[0]) == 200  # the series exist before the burst
    before = scrape(target)
    codes, latencies, wall = burst(target, bodies)
    after = settled_scrape(target, rules[0], before, SENT)
    assert codes == [200] * SENT

    values = set()
    for rule in rules:
        readings = autoscaling.evaluate(rule, before, after)
        reading = readings[MODEL]
        # nothing else talks to the session's server during this test: the counter saw exactly the burst
        assert reading.requests == SENT, rule.record
        assert math.isfinite(reading.seconds) and reading.seconds > 0, rule.record
        # every request's queue wait is part of its latency, so the mean wait is below the mean latency
        # the client saw (the rule's 1e6 maps microseconds to seconds: a wrong scale breaks this)
        assert reading.seconds < statistics.mean(latencies) < wall, rule.record
        # models that got no request read 0, not NaN (the rule's `or ... * 0`): that is what scales down
        assert all(r.seconds == 0.0 for m, r in readings.items() if m != MODEL and r.requests == 0)
        values.add(round(reading.seconds, 9))
    assert len(values) == 1  # one pod: the per-pod and the per-model rule agree
    print(f"\n{rules[0].record}{{model_name={MODEL!r}}} = {values.pop():.3f} s over {SENT} requests at "
          f"concurrency {CONCURRENCY}; client latency mean {statistics.mean(latencies):.3f} s, "
          f"max {max(latencies):.3f} s; burst {wall:.2f} s")
