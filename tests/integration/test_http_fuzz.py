"""HTTP fuzzing of every inference route and model on the real server, in the style of Triton's
L0_http_fuzz: a seeded, bounded run of mutated requests (tests/http_fuzz/: byte flips,
truncation, wrong JSON types, v2 shapes and datatypes, binary-extension headers, content types,
multipart, unicode with lone surrogates, huge numbers, long strings, methods, paths, Expect) with a
known-good request every 10th, sent by 8 threads at once so that good and bad requests share batches.

It fails on
- any 5xx that comes from the package: a handler's JSON error (its `type` one of handlers/request_errors),
  500 "Worker died." or any other 500 from a worker, any 503;
- any 4xx without the contract's body {"code", "type", "message"} (a v2 error adds "error"), except
  the frontend's bare 413 for a body over max_request_size and its bare 417 for an Expect it does not
  support (docs/errors.md); an error answer over 64 KiB (it repeats the input);
- any good request not answered 200 with the right answer (the cat photo: a cat label; each headline:
  its topic; each embedding: cosine 0.9999 with the reference), on every route and in every form;
- any request left without an answer, and any worker restart (worker pids from the describe API).
TorchServe's own failures before any handler runs (500 ErrorDataDecoderException,
StringIndexOutOfBoundsException, ArrayIndexOutOfBoundsException for malformed forms and multipart)
are counted and reported, not failed: tests/integration/test_frontend_errors.py shows they harm no
worker and no other request. The summary (seed, requests per route, status counts, outcomes, frontend
errors, mixed batches, time) is printed; any failing request can be rebuilt alone with
`python tests/http_mutations.py --seed SEED --job N`.
Set HTTP_FUZZ_SEED / HTTP_FUZZ_REQUESTS to explore beyond the fixed run.
"""

import collections
import http.client
import json
import os
import re
import socket
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np
import pytest

import http_fuzz as hm
from handlers import request_errors
from handlers import video  # noqa: F401  (its InvalidVideo and VideoTooLarge are RequestErrors too)
from fuzz_targets import Target, kserve_target, torchserve_target  # the engines under fuzzing
from support import CAT_LABELS, encode, photo

SEED = int(os.environ.get("HTTP_FUZZ_SEED", "20251717"))
REQUESTS = int(os.environ.get("HTTP_FUZZ_REQUESTS", "3000"))
THREADS = 8
ANSWER_TIMEOUT_S = 90  # above every model's responseTimeout (60 s): a request never answered is a failure
MAX_ERROR_BYTES = 64 * 1024  # an error answer bigger than this repeats the input it refuses


def handler_error_types() -> set:
    """The `type` names the package's handlers answer with (request_errors.RequestError and its subclasses)."""
    names, todo = set(), [request_errors.RequestError]
    while todo:
        cls = todo.pop()
        names.add(cls.__name__)
        todo += cls.__subclasses__()
    return names


HANDLER_TYPES = handler_error_types()
# TorchServe's Java frontend, before any handler runs (docs/errors.md):
FRONTEND_5XX_TYPES = {"ErrorDataDecoderException", "StringIndexOutOfBoundsException", "ArrayIndexOutOfBoundsException"}
FRONTEND_4XX_TYPES = {"BadRequestException", "ModelNotFoundException", "ModelVersionNotFoundException",
                      "ResourceNotFoundException", "MethodNotAllowedException"}


# ---- sending --------------------------------------------------------------------------------------
@dataclass
class Answer:
    status: Optional[int]
    headers: Dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    error: Optional[str] = None  # no answer: why
    retried: bool = False


class Sender:
    """Raw HTTP/1.1 with http.client: one keep-alive connection per thread (TorchServe closes it after
    any error answer; it is opened again for the next request), a connection of its own for requests
    that break the connection's framing. Every request carries the inference token."""

    def __init__(self, url: str, token: str):
        host, port = url.split("://", 1)[1].rsplit(":", 1)
        self.host, self.port, self.token = host, int(port), token
        self.local = threading.local()

    def connection(self, fresh: bool) -> http.client.HTTPConnection:
        if fresh:
            return http.client.HTTPConnection(self.host, self.port, timeout=ANSWER_TIMEOUT_S)
        if getattr(self.local, "conn", None) is None:
            self.local.conn = http.client.HTTPConnection(self.host, self.port, timeout=ANSWER_TIMEOUT_S)
        return self.local.conn

    def send(self, request: hm.Request) -> Answer:
        conn = self.connection(request.throwaway)
        try:
            return self.once(conn, request, retry=conn.sock is not None)
        except socket.timeout:
            return Answer(None, error=f"no answer within {ANSWER_TIMEOUT_S} s")
        except (OSError, http.client.HTTPException) as err:
            return Answer(None, error=f"{type(err).__name__}: {str(err)[:200]}")
        finally:
            if request.throwaway:
                conn.close()

    def once(self, conn: http.client.HTTPConnection, request: hm.Request, retry: bool) -> Answer:
        """Send and read one answer. A kept-alive connection the server had closed meanwhile (the send
        fails, or the server hangs up without a byte of answer) is opened again once; an answer cut off
        by a reset is never retried: it is what the client saw."""
        try:
            try:
                self.write(conn, request)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the server answered (and closed) before reading the whole request: read that answer
            response = conn.getresponse()
        except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected):
            conn.close()
            if not retry:
                raise
            answer = self.once(conn, request, retry=False)
            answer.retried = True
            return answer
        except BaseException:
            conn.close()
            raise
        try:
            body = response.read()
        except BaseException:
            conn.close()
            raise
        return Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, body)

    def write(self, conn: http.client.HTTPConnection, request: hm.Request) -> None:
        conn.putrequest(request.method, request.path, skip_accept_encoding=True)
        conn.putheader("Authorization", f"Bearer {self.token}")
        for name, value in request.headers.items():
            conn.putheader(name, value)
        if request.chunked:
            conn.putheader("Transfer-Encoding", "chunked")
            conn.endheaders()
            for chunk in hm.chunks(request.body, 1000):
                conn.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            conn.send(b"0\r\n\r\n")
        else:
            if not any(name.lower() == "content-length" for name in request.headers):
                conn.putheader("Content-Length", str(len(request.body)))
            conn.endheaders()
            conn.send(request.body)


# ---- answers --------------------------------------------------------------------------------------
def decode_answer(answer: Answer):
    """The JSON of an answer; a v2 answer with binary outputs gets them decoded into `data`."""
    length = answer.headers.get(hm.HEADER_LENGTH.lower())
    if answer.headers.get("content-type", "").startswith("application/x-ndjson"):  # a video: a line per frame
        return [json.loads(line) for line in answer.body.splitlines()]
    if length is None:
        return json.loads(answer.body)
    length = int(length)
    document = json.loads(answer.body[:length])
    offset = length
    for output in document["outputs"]:
        size = (output.get("parameters") or {}).get("binary_data_size")
        if size is None:
            continue
        chunk = answer.body[offset:offset + size]
        offset += size
        if output["datatype"] == "BYTES":
            values, i = [], 0
            while i < len(chunk):
                (n,) = struct.unpack_from("<I", chunk, i)
                values.append(chunk[i + 4:i + 4 + n].decode())
                i += 4 + n
        else:
            code, width = {"FP32": ("f", 4), "INT64": ("q", 8), "BOOL": ("?", 1)}[output["datatype"]]
            values = list(struct.unpack(f"<{len(chunk) // width}{code}", chunk))
        output["data"] = values
    return document


def as_plain(request: hm.Request, document) -> dict:
    """The answer of any route in the plain form: {"predictions": [...]} or {"embedding": [...]}."""
    if request.route.startswith("predictions"):
        return document
    if request.route == "v1":
        assert len(document["predictions"]) == 1, document
        return document["predictions"][0]
    outputs = {o["name"]: o for o in document["outputs"]}
    if request.model == "minilm_embedding":
        assert outputs["embedding"]["shape"] == [1, 384], outputs["embedding"]["shape"]
        return {"embedding": outputs["embedding"]["data"]}
    labels, probabilities = outputs["labels"]["data"], outputs["probabilities"]["data"]
    return {"predictions": [{"label": label, "probability": p} for label, p in zip(labels, probabilities)]}


def check_good(request: hm.Request, answer: Answer, references: dict) -> Optional[str]:
    """None if the known-good request got its right answer, else what was wrong."""
    if answer.status != 200:
        return f"good request answered {answer.status}: {answer.error or answer.body[:300]!r}"
    try:
        got = as_plain(request, decode_answer(answer))
        reference = references[(request.model, request.expects)]
        if request.model == "minilm_embedding":
            a, b = np.array(got["embedding"]), np.array(reference["embedding"])
            cosine = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
            return None if cosine > 0.9999 else f"embedding cosine {cosine:.6f} with the reference"
        top = got["predictions"][0]
        expected = CAT_LABELS if request.model == hm.VISION else {hm.HEADLINES[request.expects]}
        if top["label"] not in expected:
            return f"top label {top['label']!r}, expected one of {sorted(expected)}"
        if abs(top["probability"] - reference["predictions"][0]["probability"]) > 1e-3:
            return f"top probability {top['probability']:.5f}, alone {reference['predictions'][0]['probability']:.5f}"
        wanted = 3 if request.form == "json-topk" else (4 if request.model == "minilm_topics" else 5)
        if len(got["predictions"]) != wanted:
            return f"{len(got['predictions'])} predictions, expected {wanted}"
    except (ValueError, KeyError, IndexError, TypeError, AssertionError, struct.error) as err:
        return f"good answer not readable: {type(err).__name__}: {err} in {answer.body[:300]!r}"
    return None


def contract_error(body: bytes, status: int) -> Optional[dict]:
    """The error body if it is the contract's {"code", "type", "message"} (v2 adds "error"), else None."""
    try:
        error = json.loads(body)
    except ValueError:
        return None
    if not isinstance(error, dict) or not {"code", "type", "message"} <= set(error) <= {"code", "type", "message", "error"}:
        return None
    if error["code"] != status or not isinstance(error["type"], str) or not isinstance(error["message"], str):
        return None
    return error


def judge(request: hm.Request, answer: Answer, max_request_size: int) -> Tuple[str, Optional[str]]:
    """(outcome, failure or None) of a mutated request's answer."""
    status, body = answer.status, answer.body
    if status is None:
        if request.may_reset and re.search(r"Reset|BrokenPipe|RemoteDisconnected", answer.error or ""):
            return "frontend reset (HTTP layer refused the request)", None
        return "no answer", f"no answer: {answer.error}"
    if 200 <= status < 300:
        if request.method == "HEAD" or not body:
            return "2xx", None
        try:
            decode_answer(answer)
        except (ValueError, KeyError, TypeError, struct.error) as err:
            return "2xx", f"200 whose body is not JSON ({err}): {body[:200]!r}"
        return "2xx", None
    if status == 413 and not body and len(request.body) > max_request_size:
        return "frontend 413 (body over max_request_size)", None
    expectation = request.headers.get("Expect")
    if status == 417 and not body and expectation is not None and expectation.lower() != "100-continue":
        return "frontend 417 (Expect)", None
    if status < 400:
        return f"{status}", f"unexpected status {status}: {body[:200]!r}"
    if request.method == "HEAD" and status < 500 and not body:  # HTTP gives HEAD's answer no body
        return f"HEAD {status}", None
    if len(body) > MAX_ERROR_BYTES:
        return "oversized error", f"{status} error answer of {len(body):,} bytes (it repeats the input)"
    error = contract_error(body, status)
    if error is None:
        return "no contract body", f"{status} without the contract's JSON body: {body[:300]!r}"
    kind = error["type"]
    if status >= 500:
        if kind in FRONTEND_5XX_TYPES and status == 500:
            return f"frontend {status} {kind}", None
        return f"{status} {kind}", f"{status} {kind} from the server: {error['message'][:300]}"
    if kind in HANDLER_TYPES:
        return f"handler {status}", None
    return f"{'frontend' if kind in FRONTEND_4XX_TYPES else 'other'} {status} {kind}", None


# ---- the run --------------------------------------------------------------------------------------
def references(client) -> dict:
    """Each good input's answer alone (plain route): the yardstick of the answers under fuzzing."""
    refs = {}
    cat = encode(photo("chelsea"))
    response = client.predict(hm.VISION, cat, "image/jpeg")
    assert response.status_code == 200, response.text
    refs[(hm.VISION, "cat")] = response.json()
    assert refs[(hm.VISION, "cat")]["predictions"][0]["label"] in CAT_LABELS
    for model in hm.TEXT_MODELS:
        for text, topic in hm.HEADLINES.items():
            response = client.predict(model, text.encode(), "text/plain; charset=utf-8")
            assert response.status_code == 200, response.text
            refs[(model, text)] = response.json()
            if model == "minilm_topics":
                assert refs[(model, text)]["predictions"][0]["label"] == topic, (text, response.text)
    return refs


def summary(requests: List[hm.Request], answers: List[Answer], outcomes: List[str], failures: List[str],
            mixed: Dict[str, Tuple[int, int]], seconds: float, pids_same: bool) -> str:
    lines = [f"HTTP fuzz: seed {SEED}, {len(requests)} requests ({sum(r.mutation == 'good' for r in requests)} good), "
             f"{THREADS} threads, {seconds:.1f} s, {sum(len(r.body) for r in requests) / 1e6:.0f} MB sent"]
    per_route = collections.Counter((r.route, r.model) for r in requests)
    lines.append("requests per route: " + ", ".join(
        f"{hm.path_of(route, model)} {n}" for (route, model), n in sorted(per_route.items())))
    lines.append("per family: " + ", ".join(f"{k} {v}" for k, v in
                                            collections.Counter(hm.family(r) for r in requests).most_common()))
    lines.append("statuses: " + ", ".join(f"{k} {v}" for k, v in sorted(
        collections.Counter(str(a.status) if a.status else "none" for a in answers).items())))
    lines.append("outcomes: " + ", ".join(f"{k} {v}" for k, v in collections.Counter(outcomes).most_common()))
    frontend = collections.Counter(o for o in outcomes if o.startswith(("frontend", "other")))
    lines.append(f"frontend errors (TorchServe's own, before any handler): {sum(frontend.values())}"
                 + "".join(f"\n    {k}: {v}" for k, v in frontend.most_common()))
    lines.append("batches mixing good and refused requests (mixed/all): "
                 + ", ".join(f"{m} {a}/{b}" for m, (a, b) in mixed.items()))
    lines.append(f"retried on a new connection: {sum(a.retried for a in answers)}; "
                 f"worker pids unchanged: {pids_same}")
    lines.append(f"FAILURES: {len(failures)}" + "".join(f"\n    {f}" for f in failures[:60])
                 + (f"\n    ... and {len(failures) - 60} more" if len(failures) > 60 else ""))
    return "\n".join(lines)


@pytest.fixture(params=["torchserve", "kserve"])
def target(request, client, server) -> Target:
    if request.param == "torchserve":
        return torchserve_target(client, server)
    return kserve_target(request.getfixturevalue("kserve_engine"))


def test_http_fuzz_of_every_route_and_model(client, target, capsys):
    """Either engine: TorchServe, or the KServe engine on the same archives (whose HTTP door is ours)."""
    max_request_size = target.max_request_size
    refs = references(client)
    pool = hm.templates(encode(photo("chelsea")))
    ctx = {"max_request_size": max_request_size}
    requests = [hm.job(SEED, i, pool, ctx) for i in range(REQUESTS)]
    sender = Sender(target.url, target.token)
    with capsys.disabled():
        print(f"\nHTTP fuzz ({target.name}): seed {SEED} (HTTP_FUZZ_SEED), {REQUESTS} requests (HTTP_FUZZ_REQUESTS)", flush=True)

    pids = target.workers(0)
    logged = {m: len(target.batches(m)) for m in hm.MODELS}
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=THREADS) as pool_of_threads:
        answers = list(pool_of_threads.map(sender.send, requests))
    seconds = time.monotonic() - started

    outcomes, failures = [], []
    for index, (request, answer) in enumerate(zip(requests, answers)):
        if request.mutation == "good":
            problem = check_good(request, answer, refs)
            outcome = "good 200" if problem is None else "good FAILED"
        else:
            outcome, problem = judge(request, answer, max_request_size)
        outcomes.append(outcome)
        if problem is not None:
            failures.append(f"#{index} {request.method} {hm.path_of(request.route, request.model)} [{request.form}] "
                            f"{request.mutation}: {problem}")

    after = target.workers(2.0)  # (its quiet wait also lets the frontend's thread write model_log.log)
    mixed = {}
    for model in hm.MODELS:
        logged_now = target.batches(model)[logged[model]:]
        mixed[model] = (sum(0 < bad < size for size, bad in logged_now), len(logged_now))
    with capsys.disabled():
        print(summary(requests, answers, outcomes, failures, mixed, seconds, after == pids), flush=True)

    assert not failures, (f"{len(failures)} of {len(requests)} fuzz requests failed (seed {SEED}):\n"
                          + "\n".join(failures[:40]))
    assert after == pids, f"workers restarted during the fuzz run: {pids} -> {after}"
    assert any(m for m, _ in mixed.values()), f"no batch mixed good and refused requests: {mixed}"
