"""THE closed-loop load loop: every load this repo sends over HTTP runs here.

bench/tune's Python generator (tskit.load.run_python), the checked client of make soak and the fault and
rollout tests (tskit.checked_load), compare's speed rounds (tskit.compare), the cache bench and make
profile's load only say what to send (a `Job` per sequence number) and how to judge an answer; the
threads, sessions, stop rules and records are this module's, and tskit.load.summary is their one
latency summary.

`concurrency` threads, each with one keep-alive requests.Session of its own (a raw session, not
tskit.client's retrying one: the loop must stay cheap next to the server it measures, and a retry would
hide a failure), each sending its next request as soon as the last one is answered, until a deadline,
a request count or stop(). Every request becomes an Outcome (when it started and ended, its status,
what was wrong). Any failure of a request (a status, a socket error, a timeout, a wrong answer, an
exception while building the request, reading the key or judging the answer) is an Outcome with its
error, never raised: a load thread never dies, and every failure is counted.
"""

import json
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, List, Optional

import requests

Judge = Callable[["Job", int, bytes], Optional[str]]  # (job, status, body) -> None, or what was wrong


@dataclass
class Job:
    """One request: where it goes, its body, its name in reports, and whether its answer's body is
    judged beyond its status (the timed generator checks a sample only: checking costs client CPU)."""

    url: str
    body: bytes
    content_type: str
    name: str = ""
    model: str = ""
    check: bool = True
    spec: Any = None  # what the caller's judge needs to know about this request (a checked_load Spec)


@dataclass
class Outcome:
    spec: str  # the job's name
    model: str
    started: float  # time.monotonic()
    ended: float
    status: int  # -1: no HTTP answer (socket error, timeout, an exception before the answer)
    error: Optional[str]  # None: a right answer
    checked: bool = False  # a 200 whose body was judged
    contract: bool = False  # a non-200 with the contract's JSON error body

    @property
    def seconds(self) -> float:
        return self.ended - self.started


def contract_error(body: bytes, status: int) -> bool:
    """The contract's JSON error body: {"code": status, "type": ..., "message": ...}."""
    try:
        document = json.loads(body)
    except ValueError:
        return False
    return isinstance(document, dict) and document.get("code") == status and \
        isinstance(document.get("type"), str) and isinstance(document.get("message"), str)


def status_only(job: Job, status: int, body: bytes) -> Optional[str]:
    """A 200 is right whatever its body (compare's and make profile's load: answers are judged elsewhere)."""
    return None if status == 200 else f"status {status}: {body[:160].decode('utf-8', errors='replace')}"


def no_key() -> str:
    return ""


def exchange(session: requests.Session, job: Callable[[], Job], judge: Judge, key: Callable[[], str],
             timeout: float) -> Outcome:
    """One request and its judgement, never raising. `job` is a thunk so that a failure to build the
    request (a caller's path function) is a counted failed request too. The key is read for every
    request: TorchServe rewrites its key file when a key is renewed, and the next request must carry it."""
    started, built, status, body = time.monotonic(), None, -1, b""
    try:
        built = job()
        token = key()
        headers = {"Content-Type": built.content_type, **({"Authorization": f"Bearer {token}"} if token else {})}
        response = session.post(built.url, data=built.body, headers=headers, timeout=timeout)
        status, body = response.status_code, response.content
        error = judge(built, status, body)
    except Exception as err:  # anything at all: a failed request, counted, so the reports and tests see it
        error = f"{type(err).__name__}: {err}"[:300]
    return Outcome(built.name if built else "", built.model if built else "", started, time.monotonic(), status,
                   error, checked=bool(built and built.check and status == 200),
                   contract=status not in (-1, 200) and contract_error(body, status))


class Loop:
    """The closed loop over `jobs(i)` (i = 0, 1, 2, ... across all threads, in the order sent): `run()` to
    the end (a count or `seconds`), or `with Loop(...) as load:` in the background until the block ends;
    `outcomes` in the order they came back, `seconds` the wall time from start to the last thread's end."""

    def __init__(self, jobs: Callable[[int], Job], concurrency: int, judge: Judge = status_only,
                 key: Callable[[], str] = no_key, timeout: float = 60, seconds: Optional[float] = None,
                 count: Optional[int] = None):
        self.jobs, self.judge, self.key, self.timeout = jobs, judge, key, timeout
        self.limit_s, self.count = seconds, count
        self.outcomes: List[Outcome] = []
        self.seconds = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sent = 0
        self._started = self._deadline = 0.0
        self._threads = [threading.Thread(target=self._worker, daemon=True) for _ in range(max(1, concurrency))]

    def _take(self) -> Optional[int]:
        """The next sequence number, or None once the loop is over (stopped, past its deadline, or
        `count` sent): under the lock, so a count is sent exactly and a stream goes out in order."""
        with self._lock:
            over = self._stop.is_set() or (self.count is not None and self._sent >= self.count) or \
                (self.limit_s is not None and time.monotonic() >= self._deadline)
            if over:
                return None
            self._sent += 1
            return self._sent - 1

    def _worker(self) -> None:
        with requests.Session() as session:
            while True:
                index = self._take()
                if index is None:
                    return
                outcome = exchange(session, lambda: self.jobs(index), self.judge, self.key, self.timeout)
                with self._lock:
                    self.outcomes.append(outcome)

    def start(self) -> "Loop":
        self._started = time.monotonic()
        self._deadline = self._started + (self.limit_s or 0.0)
        for thread in self._threads:
            thread.start()
        return self

    def join(self, timeout: Optional[float] = None) -> List[Outcome]:
        for thread in self._threads:
            thread.join(timeout)
        self.seconds = time.monotonic() - self._started
        return self.outcomes

    def run(self) -> List[Outcome]:
        return self.start().join()

    def stop(self) -> List[Outcome]:
        """Send nothing more; wait for the answers in flight (up to the request timeout: a thread stuck
        past it is a daemon and is left behind)."""
        self._stop.set()
        return self.join(self.timeout + 10)

    def snapshot(self) -> List[Outcome]:
        with self._lock:
            return list(self.outcomes)

    def wait_for(self, count: int, timeout: float = 120, model: Optional[str] = None) -> None:
        """Until `count` answers (of `model`) have come back, however they went."""
        deadline = time.monotonic() + timeout
        while sum(1 for o in self.snapshot() if model in (None, o.model)) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"fewer than {count} answers within {timeout:g} s")
            time.sleep(0.05)

    def __enter__(self) -> "Loop":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
