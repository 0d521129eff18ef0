"""Closed-loop HTTP load at a fixed concurrency: wrk (compiled, preferred) or a Python fallback (the one
closed loop, tskit.closed_loop, with one body), and the one latency summary of every load (`summary`,
`percentile`).

Both return a LoadResult with throughput, latency percentiles, errors and the client's own CPU
time, so a report can show that the load generator was not what limited the numbers. Both check
answers as they come: every answer's status (200), and a sample of the bodies against an
AnswerCheck (the right top-1 label and top-k length, the stock handler's first key, or an
embedding's width). A wrong answer, a non-200 status, a socket error, a timeout or any exception
in the client counts as a failed request, never as throughput.
"""

import json
import math
import os
import re
import resource
import shutil
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import List, Optional, Tuple

import requests

from tskit.closed_loop import Job, Judge, Loop, Outcome, status_only

WRK_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "wrk_checked.lua")


@dataclass
class AnswerCheck:
    """What a right answer looks like, checked on every `every`-th answer (the same rule in wrk's Lua).

    kind: "first_label" (the first "label" value is one of `allowed`; with labels > 0 the answer has
    that many labels: its top-k), "first_key" (the first JSON key is one of `allowed`: the stock
    handler's {"tabby": 0.4, ...}), "commas" (exactly `commas` commas: an embedding's width),
    "cosine" (the answer's "embedding" has the width of `reference` and a cosine >= `min_cosine` with
    it: the content, not only the shape), or "" (status only)."""

    kind: str = ""
    allowed: Tuple[str, ...] = ()
    labels: int = 0
    commas: int = 0
    every: int = 10
    reference: Tuple[float, ...] = ()
    min_cosine: float = 0.999

    def verify(self, body: bytes) -> bool:
        """True for a right answer; an answer that makes the check raise is a wrong one."""
        try:
            return self._verify(body.decode("utf-8", errors="replace"))
        except Exception:
            return False

    def _verify(self, text: str) -> bool:
        if self.kind == "cosine":
            vector = json.loads(text)["embedding"]
            return len(vector) == len(self.reference) > 0 and cosine(vector, self.reference) >= self.min_cosine
        if self.kind == "first_label":
            match = re.search(r'"label"\s*:\s*"([^"]*)"', text)
            return bool(match) and match.group(1) in self.allowed and \
                (self.labels <= 0 or text.count('"label"') == self.labels)
        if self.kind == "first_key":
            match = re.match(r'\s*\[?\s*\{\s*"([^"]*)"', text)
            return bool(match) and match.group(1) in self.allowed
        if self.kind == "commas":
            return text.count(",") == self.commas
        return self.kind == ""

    def env(self, reference_file: str = "") -> dict:
        return {"BENCH_CHECK": self.kind, "BENCH_ALLOWED": "|".join(self.allowed), "BENCH_LABELS": str(self.labels),
                "BENCH_COMMAS": str(self.commas), "BENCH_CHECK_EVERY": str(max(1, self.every)),
                "BENCH_REFERENCE": reference_file, "BENCH_MIN_COSINE": repr(self.min_cosine)}

    def describe(self) -> str:
        """What the check asks of an answer, in words (for the report)."""
        if self.kind == "first_label":
            return f"top-1 in {{{', '.join(self.allowed)}}}" + (f", {self.labels} labels" if self.labels else "")
        if self.kind == "first_key":
            return f"first key in {{{', '.join(self.allowed)}}}"
        if self.kind == "cosine":
            return f"embedding of {len(self.reference)}, cosine >= {self.min_cosine:g} with the reference"
        if self.kind == "commas":
            return f"{self.commas} commas"
        return "status 200"


def cosine(x, y) -> float:
    dot = sum(a * b for a, b in zip(x, y))
    norm = math.sqrt(sum(a * a for a in x) * sum(b * b for b in y))
    return dot / norm if norm else 0.0


@dataclass
class LoadResult:
    generator: str
    concurrency: int
    seconds: float
    requests: int
    errors: int          # non-200 answers + wrong answers + socket errors + timeouts + client exceptions
    throughput: float    # right answers per second (requests - errors)
    p50_ms: float
    p90_ms: float
    p99_ms: float
    client_cpu_s: float  # CPU seconds the load generator used
    checked: int = 0     # answers whose body was checked
    wrong: int = 0       # of those, wrong ones (included in errors)
    first_error: str = ""  # the first wrong answer or exception, for the report
    refused: int = 0     # of the errors, 503 answers (the frontend's queue was full)
    refused_bad: int = 0  # of those, answers without the contract's JSON error body

    def as_dict(self) -> dict:
        return asdict(self)


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_wrk(url: str, body_path: str, content_type: str, token: Optional[str], concurrency: int,
            seconds: float, timeout_s: int = 30, check: Optional[AnswerCheck] = None) -> LoadResult:
    check = check or AnswerCheck()
    with tempfile.NamedTemporaryFile("w", suffix=".txt", prefix="bench-reference-") as reference:
        reference.write(",".join(repr(float(v)) for v in check.reference))
        reference.flush()
        env = dict(os.environ, BENCH_BODY=body_path, BENCH_CONTENT_TYPE=content_type, BENCH_TOKEN=token or "",
                   **check.env(reference.name))
        threads = max(1, min(2, concurrency))
        cmd = ["wrk", "-t", str(threads), "-c", str(concurrency), "-d", f"{max(1, round(seconds))}s",
               "--timeout", f"{timeout_s}s", "-s", WRK_SCRIPT, url]
        cpu_before = _children_cpu()
        try:
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=seconds + timeout_s + 30)
        finally:
            drain(url, body_path, content_type, token, timeout_s * 4)
        cpu = _children_cpu() - cpu_before
    line = next((l for l in out.stdout.splitlines() if l.startswith("BENCH_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk gave no summary: {out.stdout}\n{out.stderr}")
    s = json.loads(line[len("BENCH_JSON "):])
    errors = (max(s["non2xx"], s["not_200"]) + s["connect_errors"] + s["read_errors"] + s["write_errors"]
              + s["timeouts"] + s["wrong"])
    duration = s["duration_us"] / 1e6
    first = s["first_wrong"] and (s["first_wrong"] if s["first_wrong"].startswith("status ")
                                  else f"wrong answer: {s['first_wrong']}")
    return LoadResult("wrk", concurrency, duration, s["requests"], errors,
                      max(0, s["requests"] - errors) / duration, s["p50_us"] / 1e3, s["p90_us"] / 1e3,
                      s["p99_us"] / 1e3, cpu, s["checked"], s["wrong"], first or "", s["refused"], s["refused_bad"])


def drain(url: str, body_path: str, content_type: str, token: Optional[str], timeout_s: float) -> None:
    """Wait until the requests wrk left behind are served. wrk stops at its deadline with up to
    `concurrency` requests still queued in the server, which keeps serving them: the next load point
    would start on a full queue (TorchServe answers 503 beyond job_queue_size) and share the cores with
    them. One request sent now queues behind them (the queue is FIFO), so its answer means they are
    out of the queue (a 503, queue still full, is sent again). Its status is not counted: it is not part
    of any point."""
    with open(body_path, "rb") as f:
        body = f.read()
    headers = {"Content-Type": content_type, **({"Authorization": f"Bearer {token}"} if token else {})}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if requests.post(url, data=body, headers=headers, timeout=timeout_s).status_code != 503:
                return
        except requests.RequestException:
            return  # a server that cannot answer it fails the next point, where it is counted
        time.sleep(0.2)  # the queue is still full: it drains at the server's pace


def percentile(values: List[float], q: float) -> float:
    """The q-th percentile by nearest rank: the smallest value with at least q% of the values at or
    below it (NaN for none). The one definition behind every p50/p90/p99 in bench, tune, soak, compare
    and the cache bench."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def summary(outcomes: List[Outcome], seconds: float, concurrency: int, client_cpu_s: float = 0.0,
            generator: str = "python") -> LoadResult:
    """THE latency summary of a run of the closed loop (tskit.closed_loop): bench, tune, soak, compare and the
    cache bench report these numbers. Latency percentiles and throughput are over right answers only: a
    failure that came back fast must not flatter the numbers."""
    right = [o.seconds for o in outcomes if o.error is None]
    refused = [o for o in outcomes if o.status == 503]
    errors = len(outcomes) - len(right)
    return LoadResult(generator, concurrency, seconds, len(outcomes), errors, len(right) / seconds if seconds else 0.0,
                      percentile(right, 50) * 1e3, percentile(right, 90) * 1e3, percentile(right, 99) * 1e3,
                      client_cpu_s, sum(o.checked for o in outcomes),
                      sum(o.checked and o.error is not None for o in outcomes),
                      next((o.error for o in outcomes if o.error), ""), len(refused),
                      sum(not o.contract for o in refused))


def answer_judge(check: AnswerCheck) -> Judge:
    """Status 200, and for a job marked `check`, the AnswerCheck on its body."""
    def judge(job: Job, status: int, body: bytes) -> Optional[str]:
        problem = status_only(job, status, body)
        if problem is None and job.check and not check.verify(body):
            return f"wrong answer: {body[:160].decode('utf-8', errors='replace')}"
        return problem
    return judge


def run_python(url: str, body: bytes, content_type: str, token: Optional[str], concurrency: int,
               seconds: float, check: Optional[AnswerCheck] = None) -> LoadResult:
    """The closed loop with one body for `seconds`, every `check.every`-th answer's body checked: a
    requests client, which costs far more CPU per request than wrk (reported)."""
    check = check or AnswerCheck()
    every = max(1, check.every)

    def job(index: int) -> Job:
        return Job(url, body, content_type, check=bool(check.kind) and index % every == 0)

    cpu_before = time.process_time()
    loop = Loop(job, concurrency, answer_judge(check), key=lambda: token or "", timeout=60, seconds=seconds)
    outcomes = loop.run()
    return summary(outcomes, loop.seconds, concurrency, time.process_time() - cpu_before)
