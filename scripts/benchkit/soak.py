#!/usr/bin/env python3
"""make soak: a bounded load and soak run over the three models, with every answer checked.

N requests (5,000 for `make soak`; CI runs a short form through tests/integration/test_soak.py) at
a fixed concurrency from a threaded client, spread round-robin over mobilenet_v2 (real photos,
JPEG and PNG), minilm_topics and minilm_embedding (texts of three lengths). Before the measured run
each distinct request is answered once alone (its reference answer) and a warm-up pass runs at the
same concurrency; then the RSS of every worker process (pids from the describe API) is taken as
the baseline. The run fails on any error: a non-200 answer, a socket error or timeout, an answer
that differs from its reference (top-1 label, probability within 1e-3, embedding cosine >= 0.9999),
a worker restart (a pid that changed), or worker memory growth over --max-growth (10%).

    python scripts/soak.py [--requests 5000] [--concurrency 16] [--warmup 400] [--json out.json]
    python scripts/soak.py --inference-url http://127.0.0.1:8080 --management-url http://127.0.0.1:8081 \\
        --key-file key_file.json     # against a running server (make serve) instead of a server of its own

Without --inference-url it starts a TorchServe of its own (config.properties with free loopback
ports, its own working dir and TMPDIR, archives from model_store/) and stops it at the end.
"""

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, Iterable, List, Optional

import psutil

from tskit.load import percentile
from tskit.server import REPO, TorchServe, private_server
from tskit.checked_load import MODELS, LoadClient, check, default_specs
from tskit.client import TorchServeClient

# ---- the server side: workers and their memory -------------------------------------------------
def worker_pids(client: TorchServeClient, models: Iterable[str]) -> Dict[str, int]:
    """{"<model>/<worker id>": pid} of every worker of each model's default version."""
    return {f"{m}/{w['id']}": w["pid"] for m in models for w in client.workers(m)}


def rss(pids: Dict[str, int]) -> Dict[str, int]:
    """Resident memory of each worker process, in bytes (0 if it is gone)."""
    out = {}
    for name, pid in pids.items():
        try:
            out[name] = psutil.Process(pid).memory_info().rss
        except psutil.Error:
            out[name] = 0
    return out


@dataclass
class SoakReport:
    requests: int
    concurrency: int
    errors: int
    error_examples: List[str]
    seconds: float
    throughput: float
    p50_ms: float
    p99_ms: float
    per_model: Dict[str, int]
    restarted_workers: List[str]
    rss_baseline_mb: Dict[str, float]
    rss_end_mb: Dict[str, float]
    rss_peak_mb: Dict[str, float]
    memory_growth: Dict[str, float]  # (end - baseline) / baseline, per worker
    max_memory_growth: float
    max_growth_allowed: float
    warmup_requests: int
    # the 4x phase: after the run, overload_factor x the concurrency, a quarter of the requests, every
    # answer checked like the run's (admission by time: all answered, slower, none refused)
    overload_concurrency: int = 0
    overload_requests: int = 0
    overload_errors: int = 0
    overload_p99_ms: float = 0.0
    passed: bool = field(default=False)

    def as_dict(self) -> dict:
        return asdict(self)


def soak(inference_url: str, management_url: str, key_file: Optional[str], requests_total: int,
         concurrency: int = 16, warmup: int = 400, max_growth: float = 0.10,
         models: Iterable[str] = MODELS, log: Callable[[str], None] = lambda line: None,
         overload_factor: int = 4) -> SoakReport:
    """key_file: the server's key_file.json (tokens through tskit.client; None without token auth)."""
    models = list(models)
    server = TorchServeClient(inference_url, management_url, key_file, timeout=120)
    client = LoadClient.of(server)
    specs = default_specs(models)

    # each distinct request alone: its reference answer (and a first check of it)
    for spec in specs:
        response = server.request("inference", "POST", f"/predictions/{spec.model}", data=spec.body,
                                  headers={"Content-Type": spec.content_type})
        problem = check(spec, response.status_code, response.content)
        if problem:
            raise RuntimeError(f"{spec.model} {spec.name} is wrong even alone: {problem}")
        spec.reference = response.json()
    log(f"warm-up: {warmup} requests at concurrency {concurrency}")
    warm = client.run(specs, warmup, concurrency, seed=1)
    pids = worker_pids(server, models)
    baseline = rss(pids)
    peak = dict(baseline)
    log(f"baseline RSS (MB): { {k: round(v / 2**20) for k, v in baseline.items()} }")

    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(1.0):
            for name, value in rss(pids).items():
                peak[name] = max(peak[name], value)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    log(f"run: {requests_total} requests at concurrency {concurrency}")
    started = time.monotonic()
    outcomes = client.run(specs, requests_total, concurrency, seed=2)
    seconds = time.monotonic() - started
    stop.set()
    sampler.join()
    end = rss(pids)
    heavy_concurrency, heavy_total = overload_factor * concurrency, max(1, requests_total // 4)
    log(f"4x phase: {heavy_total if overload_factor else 0} requests at concurrency {heavy_concurrency}")
    heavy = client.run(specs, heavy_total, heavy_concurrency, seed=3) if overload_factor else []
    now_pids = worker_pids(server, models)

    errors = [o for o in outcomes + warm if o.error]
    heavy_errors = [o for o in heavy if o.error]
    restarted = sorted(name for name, pid in pids.items() if now_pids.get(name) != pid)
    growth = {name: (end[name] - baseline[name]) / baseline[name] for name in pids if baseline[name]}
    latencies = sorted(o.ended - o.started for o in outcomes)
    report = SoakReport(
        requests=len(outcomes), concurrency=concurrency, errors=len(errors),
        error_examples=[f"{o.model} {o.spec}: {o.error}" for o in errors[:10]],
        seconds=round(seconds, 1), throughput=round(len(outcomes) / seconds, 1),
        p50_ms=round(percentile(latencies, 50) * 1e3, 1), p99_ms=round(percentile(latencies, 99) * 1e3, 1),
        per_model={m: sum(1 for o in outcomes if o.model == m) for m in models},
        restarted_workers=restarted,
        rss_baseline_mb={k: round(v / 2**20, 1) for k, v in baseline.items()},
        rss_end_mb={k: round(v / 2**20, 1) for k, v in end.items()},
        rss_peak_mb={k: round(v / 2**20, 1) for k, v in peak.items()},
        memory_growth={k: round(v, 4) for k, v in growth.items()},
        max_memory_growth=round(max(growth.values(), default=0.0), 4),
        max_growth_allowed=max_growth, warmup_requests=len(warm),
        overload_concurrency=heavy_concurrency if heavy else 0, overload_requests=len(heavy),
        overload_errors=len(heavy_errors), overload_p99_ms=round(percentile([o.ended - o.started for o in heavy], 99) * 1e3, 1) if heavy else 0.0)
    report.error_examples += [f"4x phase: {o.model} {o.spec}: {o.error}" for o in heavy_errors[:5]]
    report.passed = (report.errors == 0 and report.overload_errors == 0 and not restarted and len(growth) == len(pids)
                     and report.max_memory_growth < max_growth)
    return report


# ---- a server of its own ---------------------------------------------------------------------------
def own_server(workdir: str) -> TorchServe:
    return private_server(workdir)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=400)
    parser.add_argument("--max-growth", type=float, default=0.10, help="largest worker RSS growth allowed (0.10 = 10%%)")
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--overload-factor", type=int, default=4,
                        help="a last phase at this many times the concurrency (0: none)")
    parser.add_argument("--inference-url")
    parser.add_argument("--management-url", default="http://127.0.0.1:8081")
    parser.add_argument("--key-file", default=os.path.join(REPO, "key_file.json"))
    parser.add_argument("--json", help="also write the report here")
    args = parser.parse_args(argv)

    def say(line: str) -> None:
        print(f"[soak] {line}", file=sys.stderr, flush=True)

    server = None
    with tempfile.TemporaryDirectory(prefix="soak-") as workdir:
        if args.inference_url:
            inference_url, management_url, key_file = args.inference_url, args.management_url, args.key_file
        else:
            server = own_server(workdir)
            say(f"starting TorchServe in {workdir}")
            server.start()
            inference_url, management_url, key_file = server.inference_url, server.management_url, server.key_file

        try:
            if server is not None:
                server.wait_ready(args.models, timeout=300)
            report = soak(inference_url, management_url, key_file, args.requests, args.concurrency, args.warmup,
                          args.max_growth, args.models, log=say, overload_factor=args.overload_factor)
        finally:
            if server is not None:
                server.stop()
    text = json.dumps(report.as_dict(), indent=2)
    print(text)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    say(f"{report.requests} requests, {report.errors} errors, {report.throughput} req/s; 4x phase: "
        f"{report.overload_requests} requests at concurrency {report.overload_concurrency}, {report.overload_errors} "
        f"errors, p99 {report.overload_p99_ms} ms; "
        f"max worker memory growth {report.max_memory_growth:.1%}: {'PASS' if report.passed else 'FAIL'}")
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
