"""TorchServe's own failures, before any handler runs (issue 17; docs/errors.md says what a client sees):
for each, what the client gets (status, body, whether its connection stays usable), and proof that it
touches nothing else: good requests to every model sent on other connections at the same moment are
answered right, so is the next request on a fresh connection, and no worker restarts.

Sent as raw bytes on a socket of their own (requests cannot send most of them, nor show what a
connection receives after the answer). Found by the HTTP fuzz suite (test_http_fuzz.py) and the issue:
- 500 ErrorDataDecoderException: a form body that does not parse (`a=%zz`, or image bytes sent as
  application/x-www-form-urlencoded, curl --data-binary's default), a multipart part without
  Content-Disposition; 500 StringIndexOutOfBoundsException: `boundary=` with no value; 500
  ArrayIndexOutOfBoundsException: a part named `name}"data"`. JSON bodies, connection closed.
- 413 with an empty body for a body over max_request_size; the connection stays usable when the
  length was declared (the rest of the body is read and dropped), is closed for a chunked one.
- 417 with an empty body for an Expect other than 100-continue; the body that follows is then parsed
  as the next request on that connection (a body that is itself an HTTP request is served).
- 400 BadRequestException "Invalid HTTP message." for a request the HTTP parser refuses.
"""

import json
import socket
import threading
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import pytest

import http_fuzz as hm
from support import encode, photo
from fuzz_targets import settled_workers
from test_http_fuzz import Sender, check_good, contract_error, references

pytestmark = pytest.mark.heavy(seconds=40)  # seconds in a one-process run on 2 cores (tests/suite_order.py)

STRIKER = "The striker scored twice in the final"
JPEG = encode(photo("chelsea"))


@dataclass
class Raw:
    status: int
    reason: str
    headers: Dict[str, str]
    body: bytes


class Wire:
    """One raw connection to the inference port: send bytes, read answers one at a time (1xx skipped),
    tell whether the server has closed it."""

    def __init__(self, url: str, timeout: float = 60):
        host, port = url.split("://", 1)[1].rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        self.buffer = b""
        self.send_error: Optional[str] = None

    def send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError) as err:  # the server answered and closed meanwhile
            self.send_error = repr(err)

    def _fill(self) -> bool:
        try:
            chunk = self.sock.recv(65536)
        except ConnectionResetError:
            chunk = b""
        self.buffer += chunk
        return bool(chunk)

    def answer(self) -> Raw:
        while True:
            while b"\r\n\r\n" not in self.buffer:
                if not self._fill():
                    raise ConnectionError(f"closed before a whole answer: {self.buffer[:200]!r}")
            head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
            lines = head.decode("latin-1").split("\r\n")
            _, status, *reason = lines[0].split(" ", 2)
            headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
            length = int(headers.get("content-length", "0"))
            while len(self.buffer) < length:
                if not self._fill():
                    raise ConnectionError("closed in the middle of an answer's body")
            body, self.buffer = self.buffer[:length], self.buffer[length:]
            if not 100 <= int(status) < 200:
                return Raw(int(status), " ".join(reason), headers, body)

    def closed(self, wait: float = 2.0) -> bool:
        """True if the server closes the connection (EOF or reset) within `wait` s with nothing more to say."""
        self.sock.settimeout(wait)
        try:
            if self._fill():
                raise AssertionError(f"unexpected bytes after the answer: {self.buffer[:200]!r}")
            return True
        except socket.timeout:
            return False

    def close(self) -> None:
        self.sock.close()


def http_request(token: str, path: str, body: bytes, headers: Dict[str, str], method: str = "POST") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", f"Authorization: Bearer {token}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    if not any(k.lower() in ("content-length", "transfer-encoding") for k in headers):
        lines.append(f"Content-Length: {len(body)}")
    return "\r\n".join(lines).encode("latin-1") + b"\r\n\r\n" + body


def top_label(answer: Raw) -> str:
    return json.loads(answer.body)["predictions"][0]["label"]


def multipart(disposition: Optional[str], value: bytes, boundary: str = "XX") -> bytes:
    part = b"--" + boundary.encode() + b"\r\n"
    if disposition is not None:
        part += b"Content-Disposition: " + disposition.encode() + b"\r\n"
    return part + b"Content-Type: text/plain\r\n\r\n" + value + b"\r\n--" + boundary.encode() + b"--\r\n"


@dataclass
class Failure:
    """One of the frontend's own failures: the bytes that cause it and what the client gets."""

    name: str
    build: Callable[[str, int], bytes]  # (token, max_request_size) -> the bytes sent
    status: int
    type: Optional[str]          # the JSON body's type; None: the answer has no body
    connection: str              # "closed" by the server after the answer, or "open" (usable: checked)
    then: Optional[tuple] = None  # an answer the connection gets next without sending anything more


TOPICS = "/predictions/minilm_topics"
FAILURES = [
    Failure("form body that does not parse (a=%zz as application/x-www-form-urlencoded)",
            lambda t, m: http_request(t, TOPICS, b"a=%zz", {"Content-Type": "application/x-www-form-urlencoded"}),
            500, "ErrorDataDecoderException", "closed"),
    Failure("image bytes as application/x-www-form-urlencoded (curl --data-binary's default type)",
            lambda t, m: http_request(t, "/predictions/mobilenet_v2", JPEG,
                                      {"Content-Type": "application/x-www-form-urlencoded"}),
            500, "ErrorDataDecoderException", "closed"),
    Failure("multipart part without Content-Disposition",
            lambda t, m: http_request(t, TOPICS, multipart(None, STRIKER.encode()),
                                      {"Content-Type": "multipart/form-data; boundary=XX"}),
            500, "ErrorDataDecoderException", "closed"),
    Failure("multipart Content-Type with an empty boundary (boundary=)",
            lambda t, m: http_request(t, TOPICS, multipart('form-data; name="data"', STRIKER.encode()),
                                      {"Content-Type": "multipart/form-data; boundary="}),
            500, "StringIndexOutOfBoundsException", "closed"),
    Failure('multipart part named name}"data"',
            lambda t, m: http_request(t, TOPICS, multipart('form-data; name}"data"', STRIKER.encode()),
                                      {"Content-Type": "multipart/form-data; boundary=XX"}),
            500, "ArrayIndexOutOfBoundsException", "closed"),
    Failure("body over max_request_size (Content-Length declared)",
            lambda t, m: http_request(t, TOPICS, b"a" * (m + 1), {"Content-Type": "text/plain"}),
            413, None, "open"),
    Failure("Expect: 100-continue with a Content-Length over max_request_size (body not sent)",
            lambda t, m: http_request(t, TOPICS, b"", {"Content-Type": "text/plain", "Expect": "100-continue",
                                                       "Content-Length": str(m + 1)}),
            413, None, "open"),
    Failure("chunked body over max_request_size",
            lambda t, m: http_request(t, TOPICS, b"".join(b"100000\r\n" + b"a" * 0x100000 + b"\r\n"
                                                          for _ in range(m // 0x100000 + 1)) + b"0\r\n\r\n",
                                      {"Content-Type": "text/plain", "Transfer-Encoding": "chunked"}),
            413, None, "closed"),
    Failure("unsupported Expect (Expect: foo), body not HTTP (a JPEG)",
            lambda t, m: http_request(t, "/predictions/mobilenet_v2", JPEG, {"Content-Type": "image/jpeg", "Expect": "foo"}),
            417, None, "closed", then=(400, "BadRequestException")),
    Failure("malformed request (Content-Length: abc)",
            lambda t, m: http_request(t, TOPICS, b"hello", {"Content-Type": "text/plain", "Content-Length": "abc"}),
            400, "BadRequestException", "closed"),
    Failure("header line over 8 KiB",
            lambda t, m: http_request(t, TOPICS, b"hello", {"Content-Type": "text/plain", "X-Long": "a" * 9000}),
            400, "BadRequestException", "closed"),
]


@pytest.fixture(scope="module")
def setting(client, server):
    """What every case needs: reference answers, a sender, one good request per model (raw form), and
    the workers as they were before the first case (updated by each case that leaves them as they were)."""
    pool = hm.templates(JPEG)
    good = [pool[("predictions", m)][0].render() for m in hm.MODELS]  # cat JPEG, the Sports headline
    for request in good:
        request.throwaway = True  # each on a fresh connection
    return {"refs": references(client), "sender": Sender(server.inference_url, server.keys()["inference"]),
            "good": good, "token": server.keys()["inference"], "max": int(server.props["max_request_size"]),
            "workers": [settled_workers(client, quiet=0)]}


def good_answers(setting, requests: List[hm.Request]) -> List[str]:
    """What was wrong with each good request's answer (empty: all right)."""
    problems = []
    for request in requests:
        problem = check_good(request, setting["sender"].send(request), setting["refs"])
        if problem:
            problems.append(f"{request.model}: {problem}")
    return problems


def at_the_same_time(setting, bad: Callable[[], None]) -> List[str]:
    """Run `bad` while a good request to each model goes out on its own connection; the good ones' problems."""
    barrier = threading.Barrier(1 + len(setting["good"]))
    problems: List[str] = []

    def good(request):
        barrier.wait()
        problems.extend(good_answers(setting, [request]))

    threads = [threading.Thread(target=good, args=(r,)) for r in setting["good"]]
    for thread in threads:
        thread.start()
    barrier.wait()
    try:
        bad()
    finally:
        for thread in threads:
            thread.join(120)
    return problems


@pytest.mark.parametrize("failure", FAILURES, ids=[f.name for f in FAILURES])
def test_frontend_failure_harms_no_worker_and_no_other_request(client, server, setting, failure):
    seen = {}

    def bad():
        wire = Wire(server.inference_url)
        try:
            wire.send(failure.build(setting["token"], setting["max"]))
            seen["answer"] = wire.answer()
            if failure.then:
                seen["then"] = wire.answer()
            if failure.connection == "open":  # the same connection is still usable: a good request on it
                wire.send(http_request(setting["token"], TOPICS, STRIKER.encode(), {"Content-Type": "text/plain"}))
                seen["next on the same connection"] = wire.answer()
            else:
                seen["closed"] = wire.closed()
        finally:
            wire.close()

    problems = at_the_same_time(setting, bad)
    answer = seen["answer"]
    print(f"{failure.name}: {answer.status} {answer.reason!r} {answer.body[:200]!r} "
          f"then {({k: v for k, v in seen.items() if k != 'answer'})}")

    # what the client sees
    assert answer.status == failure.status, (answer.status, answer.body[:300])
    if failure.type is None:
        assert answer.body == b"", answer.body[:300]
    else:
        error = contract_error(answer.body, answer.status)
        assert error is not None and error["type"] == failure.type, answer.body[:300]
    if failure.then:
        status, kind = failure.then
        assert seen["then"].status == status and contract_error(seen["then"].body, status)["type"] == kind, seen["then"]
    if failure.connection == "open":
        following = seen["next on the same connection"]
        assert following.status == 200 and top_label(following) == "Sports", following
    else:
        assert seen["closed"], "the server kept the connection open"

    # what it did not touch
    assert not problems, f"good requests on other connections at the same moment: {problems}"
    assert not good_answers(setting, setting["good"]), "the next good requests on fresh connections"
    after = settled_workers(client)
    assert after == setting["workers"][-1], f"workers restarted: {setting['workers'][-1]} -> {after}"
    setting["workers"].append(after)


def test_after_a_417_the_body_is_read_as_the_next_request(client, server, setting):
    """An Expect other than 100-continue gets 417, and the bytes of the body are then parsed as the next
    request on that connection: a body that is itself an HTTP request is served, with whatever token it
    carries. Other connections and the workers see nothing of it."""
    inner = http_request(setting["token"], TOPICS, STRIKER.encode(), {"Content-Type": "text/plain"})
    seen = {}

    def bad():
        wire = Wire(server.inference_url)
        try:
            wire.send(http_request(setting["token"], "/predictions/mobilenet_v2", inner,
                                   {"Content-Type": "image/jpeg", "Expect": "foo"}))
            seen["first"], seen["second"] = wire.answer(), wire.answer()
            seen["closed"] = wire.closed()
        finally:
            wire.close()

    problems = at_the_same_time(setting, bad)
    first, second = seen["first"], seen["second"]
    print(f"417 then: {second.status} {second.body[:120]!r}; connection closed: {seen['closed']}")
    assert first.status == 417 and first.body == b""
    # the body (a request to minilm_topics) was served as a request of its own: the topic of its text
    assert second.status == 200 and top_label(second) == "Sports", second
    assert not seen["closed"], "the connection stays open after the smuggled request's answer"
    assert not problems, problems
    assert not good_answers(setting, setting["good"])
    after = settled_workers(client)
    assert after == setting["workers"][-1], f"workers restarted: {setting['workers'][-1]} -> {after}"
    setting["workers"].append(after)


def test_error_answers_close_the_connection_and_the_next_one_is_served(client, server, setting):
    """Every answer with a status of 400 or more that carries a body (the handlers' 4xx included) ends
    with the frontend closing the connection; a client opens a new one and is served."""
    wire = Wire(server.inference_url)
    try:
        wire.send(http_request(setting["token"], TOPICS, b"", {"Content-Type": "text/plain"}))
        answer = wire.answer()
        assert answer.status == 400 and contract_error(answer.body, 400)["type"] == "EmptyBody"
        assert answer.headers.get("connection") == "close" and wire.closed()
    finally:
        wire.close()
    assert not good_answers(setting, setting["good"])
