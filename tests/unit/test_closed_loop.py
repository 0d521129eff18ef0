"""The one closed loop (tskit.closed_loop) and its users, against a small local HTTP server: stop rules,
per-request outcomes, failures recorded never raised, the key read per request, and the one summary."""

import http.server
import json
import threading

import pytest

from tskit.checked_load import LoadClient, Spec
from tskit.closed_loop import Job, Loop
from tskit.load import AnswerCheck, answer_judge, run_python, summary

RIGHT = json.dumps({"predictions": [{"label": "tabby", "probability": 0.9}]}).encode()
REFUSED = json.dumps({"code": 503, "type": "ServiceUnavailable", "message": "queue full"}).encode()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: one session per thread is one connection

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.seen.append((self.path, body, self.headers.get("Authorization")))
        status, answer = {"/refuse": (503, REFUSED), "/bare503": (503, b"busy"),
                          "/wrong": (200, b'{"predictions": [{"label": "espresso", "probability": 0.9}]}')
                          }.get(self.path, (200, RIGHT))
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.seen = []
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_a_count_is_sent_exactly_in_order_with_the_key_of_each_request(server):
    httpd, url = server
    keys = iter(f"k{i}" for i in range(1000))
    lock = threading.Lock()

    def key():
        with lock:
            return next(keys)

    loop = Loop(lambda i: Job(f"{url}/p", str(i).encode(), "text/plain", name=f"r{i}"), 4, key=key, count=40)
    outcomes = loop.run()
    assert len(outcomes) == 40 and all(o.error is None and o.status == 200 for o in outcomes)
    assert sorted(int(body) for _, body, _ in httpd.seen) == list(range(40))
    assert len({auth for _, _, auth in httpd.seen}) == 40  # read anew for every request
    assert loop.seconds > 0 and all(o.ended >= o.started for o in outcomes)


def test_failures_are_outcomes_never_raised():
    def job(i):
        if i == 0:
            raise ValueError("no such path")
        return Job("http://127.0.0.1:9/nothing", b"x", "text/plain", name="dead")

    outcomes = Loop(job, 2, count=5, timeout=2).run()
    assert len(outcomes) == 5 and all(o.status == -1 and o.error for o in outcomes)
    assert any(o.error.startswith("ValueError: no such path") for o in outcomes)


def test_a_judge_that_raises_is_a_failed_request(server):
    _, url = server

    def judge(job, status, body):
        raise KeyError("predictions")

    outcomes = Loop(lambda i: Job(url, b"x", "text/plain"), 2, judge, count=3).run()
    assert [o.status for o in outcomes] == [200] * 3 and all("KeyError" in o.error for o in outcomes)


def test_the_timed_generator_samples_checks_and_counts_refusals(server):
    _, url = server
    result = run_python(f"{url}/p", b"x", "text/plain", "tok", 2, 0.5,
                        AnswerCheck("first_label", ("tabby",), every=3))
    assert result.requests > 3 and result.errors == 0 and result.throughput > 0
    assert 0 < result.checked < result.requests and result.wrong == 0
    assert 0 < result.p50_ms <= result.p90_ms <= result.p99_ms
    refused = run_python(f"{url}/refuse", b"x", "text/plain", None, 2, 0.3)
    assert refused.errors == refused.refused == refused.requests > 0 and refused.refused_bad == 0
    assert refused.first_error.startswith("status 503") and refused.throughput == 0
    bare = run_python(f"{url}/bare503", b"x", "text/plain", None, 1, 0.2)
    assert bare.refused_bad == bare.refused > 0


def test_the_summary_counts_wrong_answers_as_errors_not_latency(server):
    _, url = server
    check = AnswerCheck("first_label", ("tabby",), every=1)
    outcomes = Loop(lambda i: Job(f"{url}/wrong" if i % 2 else url, b"x", "text/plain"), 2, answer_judge(check),
                    count=10).run()
    result = summary(outcomes, 1.0, 2)
    assert (result.requests, result.errors, result.checked, result.wrong) == (10, 5, 10, 5)
    assert result.throughput == 5 and result.first_error.startswith("wrong answer")


def test_the_checked_client_runs_counts_and_background_load(server):
    httpd, url = server
    specs = [Spec("cat", "m1", b"a", "image/jpeg", {"tabby"}), Spec("other", "m2", b"b", "image/jpeg", {"tabby"})]
    client = LoadClient(url, lambda: "secret", timeout=5)
    outcomes = client.run(specs, 9, 3)
    assert len(outcomes) == 9 and not [o for o in outcomes if o.error]
    assert {o.model for o in outcomes} == {"m1", "m2"} and httpd.seen[0][0].startswith("/predictions/m")
    assert httpd.seen[0][2] == "Bearer secret"
    with client.background(specs, 2, path=lambda spec: "/wrong" if spec.model == "m2" else None) as load:
        load.wait_for(4, timeout=10, model="m2")
        assert len(load.snapshot()) >= 4
    assert all((o.error is None) == (o.model == "m1") for o in load.outcomes)
    assert client.send(specs[0]).error is None
