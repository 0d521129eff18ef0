"""make soak's run (scripts/soak.py is its command): a bounded load and soak run over the three models, with
every answer checked.

N requests (5,000 for `make soak`; CI runs a short form through tests/integration/test_soak.py) at a
fixed concurrency from the one closed loop (tskit.checked_load over tskit.closed_loop), spread
round-robin over mobilenet_v2 (real photos, JPEG and PNG), minilm_topics and minilm_embedding (texts of
three lengths). Before the measured run each distinct request is answered once alone (its reference
answer) and a warm-up pass runs at the same concurrency; then the RSS of every worker process (pids from
the describe API) is taken as the baseline. The run fails on any error: a non-200 answer, a socket error
or timeout, an answer that differs from its reference (top-1 label, probability within 1e-3, embedding
cosine >= 0.9999), a worker restart (a pid that changed), or worker memory growth over --max-growth
(10%).
"""

import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, Iterable, List, Optional

import psutil

from tskit.load import summary
from tskit.server import private_server
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
    throughput: float  # right answers per second; this and p50/p99: tskit.load.summary, like every load report
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
    references(server, specs)
    log(f"warm-up: {warmup} requests at concurrency {concurrency}")
    warm = client.run(specs, warmup, concurrency, seed=1)
    pids = worker_pids(server, models)
    baseline = rss(pids)
    log(f"baseline RSS (MB): { {k: round(v / 2**20) for k, v in baseline.items()} }")
    log(f"run: {requests_total} requests at concurrency {concurrency}")
    with PeakMemory(pids, baseline) as peak:
        started = time.monotonic()
        outcomes = client.run(specs, requests_total, concurrency, seed=2)
        seconds = time.monotonic() - started
    end = rss(pids)
    heavy_concurrency, heavy_total = overload_factor * concurrency, max(1, requests_total // 4)
    log(f"4x phase: {heavy_total if overload_factor else 0} requests at concurrency {heavy_concurrency}")
    heavy = client.run(specs, heavy_total, heavy_concurrency, seed=3) if overload_factor else []
    now = worker_pids(server, models)
    restarted = sorted(name for name, pid in pids.items() if now.get(name) != pid)
    report = summarise(models, outcomes, warm, heavy, heavy_concurrency, seconds, concurrency,
                       {"baseline": baseline, "end": end, "peak": peak.values}, max_growth)
    report.restarted_workers = restarted
    report.passed = report.passed and not restarted
    return report


def references(server: TorchServeClient, specs: List) -> None:
    """Each distinct request alone: its reference answer (and a first check of it)."""
    for spec in specs:
        response = server.infer(spec.model, spec.body, spec.content_type)
        problem = check(spec, response.status_code, response.content)
        if problem:
            raise RuntimeError(f"{spec.model} {spec.name} is wrong even alone: {problem}")
        spec.reference = response.json()


class PeakMemory:
    """The largest RSS of each worker, sampled every second while the block runs."""

    def __init__(self, pids: Dict[str, int], baseline: Dict[str, int]):
        self.pids, self.values = pids, dict(baseline)
        self.stop = threading.Event()
        self.sampler = threading.Thread(target=self.sample, daemon=True)

    def sample(self) -> None:
        while not self.stop.wait(1.0):
            for name, value in rss(self.pids).items():
                self.values[name] = max(self.values[name], value)

    def __enter__(self) -> "PeakMemory":
        self.sampler.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.sampler.join()


def summarise(models: List[str], outcomes: List, warm: List, heavy: List, heavy_concurrency: int, seconds: float,
              concurrency: int, memory: Dict[str, Dict[str, int]], max_growth: float) -> SoakReport:
    """The report of a run (without its worker restarts, which the caller knows); `memory`: baseline, end and
    peak RSS per worker."""
    baseline, end, peak = memory["baseline"], memory["end"], memory["peak"]
    errors = [o for o in outcomes + warm if o.error]
    heavy_errors = [o for o in heavy if o.error]
    growth = {name: (end[name] - baseline[name]) / baseline[name] for name in baseline if baseline[name]}
    measured, heavy_run = summary(outcomes, seconds, concurrency), summary(heavy, 0.0, heavy_concurrency)
    report = SoakReport(
        requests=len(outcomes), concurrency=concurrency, errors=len(errors),
        error_examples=[f"{o.model} {o.spec}: {o.error}" for o in errors[:10]],
        seconds=round(seconds, 1), throughput=round(measured.throughput, 1),
        p50_ms=round(measured.p50_ms, 1), p99_ms=round(measured.p99_ms, 1),
        per_model={m: sum(1 for o in outcomes if o.model == m) for m in models},
        restarted_workers=[],
        rss_baseline_mb={k: round(v / 2**20, 1) for k, v in baseline.items()},
        rss_end_mb={k: round(v / 2**20, 1) for k, v in end.items()},
        rss_peak_mb={k: round(v / 2**20, 1) for k, v in peak.items()},
        memory_growth={k: round(v, 4) for k, v in growth.items()},
        max_memory_growth=round(max(growth.values(), default=0.0), 4),
        max_growth_allowed=max_growth, warmup_requests=len(warm),
        overload_concurrency=heavy_concurrency if heavy else 0, overload_requests=len(heavy),
        overload_errors=len(heavy_errors), overload_p99_ms=round(heavy_run.p99_ms, 1) if heavy else 0.0)
    report.error_examples += [f"4x phase: {o.model} {o.spec}: {o.error}" for o in heavy_errors[:5]]
    report.passed = (report.errors == 0 and report.overload_errors == 0 and len(growth) == len(baseline)
                     and report.max_memory_growth < max_growth)
    return report


def run(args, log: Callable[[str], None]) -> SoakReport:
    """`soak` with the command's options: against args.inference_url, or, without it, on a TorchServe of its
    own (config.properties with free loopback ports, its own working dir and TMPDIR), always stopped."""
    server = None
    with tempfile.TemporaryDirectory(prefix="soak-") as workdir:
        if args.inference_url:
            inference_url, management_url, key_file = args.inference_url, args.management_url, args.key_file
        else:
            server = private_server(workdir)
            log(f"starting TorchServe in {workdir}")
            server.start()
            inference_url, management_url, key_file = server.inference_url, server.management_url, server.key_file
        try:
            if server is not None:
                server.wait_ready(args.models, timeout=300)
            return soak(inference_url, management_url, key_file, args.requests, args.concurrency, args.warmup,
                        args.max_growth, args.models, log=log, overload_factor=args.overload_factor)
        finally:
            if server is not None:
                server.stop()


def verdict(report: SoakReport) -> str:
    return (f"{report.requests} requests, {report.errors} errors, {report.throughput} req/s; 4x phase: "
            f"{report.overload_requests} requests at concurrency {report.overload_concurrency}, {report.overload_errors} "
            f"errors, p99 {report.overload_p99_ms} ms; "
            f"max worker memory growth {report.max_memory_growth:.1%}: {'PASS' if report.passed else 'FAIL'}")
