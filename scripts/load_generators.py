"""Closed-loop HTTP load at a fixed concurrency: wrk (compiled, preferred) or a Python fallback.

Both return a LoadResult with throughput, latency percentiles, errors and the client's own CPU
time, so a report can show that the load generator was not what limited the numbers.
"""

import json
import os
import resource
import shutil
import subprocess
import threading
import time
from dataclasses import asdict, dataclass
from typing import List

import requests

WRK_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "wrk_post.lua")


@dataclass
class LoadResult:
    generator: str
    concurrency: int
    seconds: float
    requests: int
    errors: int          # non-2xx answers + socket errors + timeouts
    throughput: float    # answered requests per second
    p50_ms: float
    p90_ms: float
    p99_ms: float
    client_cpu_s: float  # CPU seconds the load generator used

    def as_dict(self) -> dict:
        return asdict(self)


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_wrk(url: str, body_path: str, content_type: str, token: str, concurrency: int,
            seconds: float, timeout_s: int = 30) -> LoadResult:
    env = dict(os.environ, BENCH_BODY=body_path, BENCH_CONTENT_TYPE=content_type, BENCH_TOKEN=token)
    threads = max(1, min(2, concurrency))
    cmd = ["wrk", "-t", str(threads), "-c", str(concurrency), "-d", f"{max(1, round(seconds))}s",
           "--timeout", f"{timeout_s}s", "-s", WRK_SCRIPT, url]
    cpu_before = _children_cpu()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=seconds + timeout_s + 30)
    cpu = _children_cpu() - cpu_before
    line = next((l for l in out.stdout.splitlines() if l.startswith("BENCH_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk gave no summary: {out.stdout}\n{out.stderr}")
    s = json.loads(line[len("BENCH_JSON "):])
    errors = s["non2xx"] + s["connect_errors"] + s["read_errors"] + s["write_errors"] + s["timeouts"]
    duration = s["duration_us"] / 1e6
    return LoadResult("wrk", concurrency, duration, s["requests"], errors,
                      (s["requests"] - errors) / duration, s["p50_us"] / 1e3, s["p90_us"] / 1e3,
                      s["p99_us"] / 1e3, cpu)


def percentile(sorted_values: List[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q / 100 * (len(sorted_values) - 1))))
    return sorted_values[index]


def run_python(url: str, body: bytes, content_type: str, token: str, concurrency: int,
               seconds: float) -> LoadResult:
    """A threaded requests client: costs far more CPU per request than wrk (reported)."""
    headers = {"Content-Type": content_type, "Authorization": f"Bearer {token}"}
    latencies: List[float] = []
    errors = [0]
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def worker():
        session = requests.Session()
        while time.monotonic() < deadline:
            started = time.perf_counter()
            try:
                ok = session.post(url, data=body, headers=headers, timeout=60).status_code < 300
            except requests.RequestException:
                ok = False
            elapsed = time.perf_counter() - started
            with lock:
                if ok:
                    latencies.append(elapsed)
                else:
                    errors[0] += 1

    cpu_before = time.process_time()
    started = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - started
    cpu = time.process_time() - cpu_before
    values = sorted(latencies)
    return LoadResult("python", concurrency, wall, len(values) + errors[0], errors[0], len(values) / wall,
                      percentile(values, 50) * 1e3, percentile(values, 90) * 1e3,
                      percentile(values, 99) * 1e3, cpu)
