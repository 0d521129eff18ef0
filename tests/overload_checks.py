"""Heavy traffic against a real server, as checks any server's tests can run (docs/limits-and-overload.md):
4x the tuned concurrency answered 200 and right with no worker restart, and a flood of bodies of
max_request_size that leaves small good requests answered and the frontend alive. test_overload.py runs
them on the session server (the three bundled models); test_own_models.py on a server of seventeen models
whose queues share the heap budget.
"""

import json
import os
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

from support import CAT_LABELS, encode, photo
from tskit.closed_loop import Job, Judge, Loop, Outcome
from tskit.server import TorchServe

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


@dataclass
class Target:
    """A server under load: where to send, its key and body limit, its serving processes, whether it lives."""

    url: str
    token: str
    max_request_size: int
    pids: Callable[[str], Dict[str, List[int]]]
    alive: Callable[[], bool]
    memory_errors: Callable[[], bool]


def torchserve(server: TorchServe) -> Target:
    def pids(model: str) -> Dict[str, List[int]]:
        return {model: sorted(w["pid"] for w in server.client().describe(model)[0]["workers"])}

    def memory_errors() -> bool:
        with open(os.path.join(server.log_dir, "ts_log.log"), encoding="utf-8", errors="replace") as f:
            return "OutOfMemoryError" in f.read()

    return Target(server.inference_url, server.keys()["inference"], int(server.props["max_request_size"]), pids,
                  lambda: server.client().request("inference", "GET", "/ping").status_code == 200, memory_errors)


def kserve_engine(engine) -> Target:
    """The KServe engine (tskit.kserve_server.KServeEngine): one process serves every model."""
    import requests

    return Target(engine.inference_url, engine.auth_headers()["Authorization"].removeprefix("Bearer "),
                  engine.max_request_size, lambda model: {model: [engine.pid()]},
                  lambda: requests.get(f"{engine.inference_url}/v2/health/live", timeout=10).status_code == 200,
                  lambda: False)  # a Python process has no heap of its own to exhaust


def check_4x_answered(target: Target, model: str, body: bytes, content_type: str,
                      right: Callable[[dict], bool]) -> None:
    """4x the tuned concurrency, 3 requests per connection: every answer 200 and right, the workers the same."""
    pids = target.pids(model)
    connections = 4 * TUNED_CONCURRENCY
    answers = hammer(f"{target.url}/predictions/{model}", target.token, body, content_type,
                     connections, per_connection=3, judge=answered(right))
    statuses = [o.status for o in answers]
    assert len(answers) == 3 * connections
    assert statuses == [200] * len(answers), {s: statuses.count(s) for s in set(statuses)}
    assert not [o for o in answers if o.error], [o.error for o in answers if o.error][:5]
    assert target.pids(model) == pids


def flood_body(size: int) -> bytes:
    """`size` bytes that start like a JPEG and are not one: the handler refuses them (415) after a look at the start."""
    return b"\xff\xd8\xff\xe0" + b"\x00" * (size - 4)


def check_flood(target: Target, model: str) -> str:
    """32 clients at once sending bodies just under max_request_size and 8 just over it, while one client
    sends small good images: each flood body the contract's 4xx (or 503 with its JSON), each over-limit one
    the frontend's 413, every good image answered right, the frontend alive with the same workers and no
    OutOfMemoryError in its log. A line saying what was sent."""
    limit, token = target.max_request_size, target.token
    url = f"{target.url}/predictions/{model}"
    pids = target.pids(model)
    at_limit, over_limit = flood_body(limit - 1024), flood_body(limit + 1)
    good = encode(photo("chelsea"))
    started = time.monotonic()
    with Loop(lambda i: Job(url, good, "image/jpeg"), 1, answered(is_cat), key=lambda: token,
              timeout=120) as good_load:
        flood = hammer(url, token, at_limit, "image/jpeg", connections=32, per_connection=1,
                       judge=refused_per_contract(lambda status: 400 <= status < 500 or status == 503))
        # the frontend's own 413 (Netty, before any handler): TorchServe 0.12 sends it with an empty body
        over = hammer(url, token, over_limit, "image/jpeg", connections=8, per_connection=1,
                      judge=lambda job, status, body: None if status == 413 else f"status {status}")
    took = time.monotonic() - started
    assert not [o for o in flood if o.error], {o.error for o in flood if o.error}
    assert [o.status for o in over] == [413] * len(over), {o.error for o in over if o.error}
    good_answers = good_load.outcomes
    assert len(good_answers) >= 3 and not [o for o in good_answers if o.error], \
        [o.error for o in good_answers if o.error][:3]
    assert target.alive()
    assert target.pids(model) == pids
    assert not target.memory_errors()
    return (f"{len(flood)} bodies of {limit - 1024:,} bytes from 32 clients + {len(over)} over the limit in "
            f"{took:.1f} s; {len(good_answers)} good requests answered 200 meanwhile")
