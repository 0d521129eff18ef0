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
import io
import itertools
import json
import math
import os
import random
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Union

import psutil
import requests

from load_generators import percentile
from ts_server import REPO, TorchServe, private_server
from tskit.client import TorchServeClient
from tskit.declaration import served

KIND_OF = {d.name: d.kind for d in served()}  # every model `make serve` loads, from its declaration
MODELS = tuple(KIND_OF)
CAT_LABELS = {"Egyptian cat", "tabby", "tiger cat"}
TEXTS = [
    ("The striker scored twice in the final", "Sports"),
    ("Central bank raises interest rates to fight inflation as markets slide across Asia and Europe", "Business"),
    (" ".join(["Astronomers observed a distant planet whose atmosphere contains water vapour"] * 40), None),
]


# ---- requests and their checks ---------------------------------------------------------------------
@dataclass
class Spec:
    """One distinct request: where it goes, its body, and what a right answer looks like."""

    name: str
    model: str
    body: bytes
    content_type: str
    expect_label: Optional[Iterable[str]] = None  # top-1 label must be one of these (None: not checked)
    reference: Optional[dict] = None  # its answer alone, filled in before the run


def _encode(array, fmt: str) -> bytes:
    from PIL import Image
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, fmt)
    return buffer.getvalue()


def default_specs(models: Iterable[str] = MODELS) -> List[Spec]:
    from skimage import data as skimage_data
    specs = []
    for model in models:
        if KIND_OF.get(model) == "image-classifier":
            imagenet = model == "mobilenet_v2"  # labels are checked where the model's classes are known
            cat, coffee = skimage_data.chelsea(), skimage_data.coffee()
            specs += [Spec("cat.jpg", model, _encode(cat, "JPEG"), "image/jpeg", CAT_LABELS if imagenet else None),
                      Spec("coffee.jpg", model, _encode(coffee, "JPEG"), "image/jpeg", {"espresso"} if imagenet else None),
                      Spec("cat.png", model, _encode(cat, "PNG"), "image/png", CAT_LABELS if imagenet else None)]
        else:
            for i, (text, label) in enumerate(TEXTS):
                expect = {label} if label and model == "minilm_topics" else None
                specs.append(Spec(f"text{i}", model, text.encode(), "text/plain; charset=utf-8", expect))
    return specs


def check(spec: Spec, status: int, body: bytes) -> Optional[str]:
    """None if the answer is right, else what was wrong. An answer of the wrong shape (a 200 whose JSON
    lacks a field, has the wrong type, ...) is a wrong answer, never an exception."""
    try:
        return _check(spec, status, body)
    except Exception as err:  # KeyError, TypeError, IndexError...: the answer is malformed
        return f"malformed answer ({type(err).__name__}: {err}): {body[:200]!r}"


def _check(spec: Spec, status: int, body: bytes) -> Optional[str]:
    if status != 200:
        return f"HTTP {status}: {body[:200]!r}"
    try:
        answer = json.loads(body)
    except ValueError:
        return f"not JSON: {body[:200]!r}"
    if "embedding" in (spec.reference or answer):
        vector = answer.get("embedding")
        if not isinstance(vector, list) or len(vector) != 384:
            return "no 384-float embedding"
        if spec.reference is not None:
            ref = spec.reference["embedding"]
            cosine = sum(a * b for a, b in zip(vector, ref)) / (
                math.sqrt(sum(a * a for a in vector)) * math.sqrt(sum(b * b for b in ref)))
            if cosine < 0.9999:
                return f"embedding differs from the reference (cosine {cosine:.6f})"
        return None
    predictions = answer.get("predictions")
    if not isinstance(predictions, list) or not predictions:
        return f"no predictions: {body[:200]!r}"
    top = predictions[0]
    if spec.expect_label is not None and top["label"] not in spec.expect_label:
        return f"top-1 {top['label']!r}, expected one of {sorted(spec.expect_label)}"
    if spec.reference is not None:
        ref = spec.reference["predictions"][0]
        if top["label"] != ref["label"] or abs(top["probability"] - ref["probability"]) > 1e-3:
            return f"top-1 {top} differs from the reference {ref}"
    return None


# ---- the client ------------------------------------------------------------------------------
@dataclass
class Outcome:
    spec: str
    model: str
    started: float  # time.monotonic()
    ended: float
    status: int  # -1: no HTTP answer (socket error, timeout)
    error: Optional[str]


class LoadClient:
    """Threaded closed-loop client: `concurrency` threads, one keep-alive session each (a raw
    requests.Session per thread: the load loop stays cheap); the token comes from `key()` on every
    request, e.g. from tskit.client (LoadClient.of), so a key the server renews is picked up."""

    def __init__(self, inference_url: str, key: Callable[[], str], timeout: float = 120):
        self.inference_url = inference_url.rstrip("/")
        self.key = key
        self.timeout = timeout
        self._local = threading.local()

    @classmethod
    def of(cls, client: TorchServeClient, timeout: float = 120) -> "LoadClient":
        """Load on the server `client` talks to, with its inference key."""
        return cls(client.inference_url, lambda: client.key("inference") or "", timeout)

    def send(self, spec: Spec, path: Optional[str] = None) -> Outcome:
        """One request and its check. Any exception (socket, timeout, key file, a check that raises) is a
        failed request with status -1 (or the status that came back), never a dead load thread."""
        started = time.monotonic()
        status = -1
        try:
            session = getattr(self._local, "session", None)
            if session is None:
                session = self._local.session = requests.Session()
            key = self.key()
            response = session.post(f"{self.inference_url}{path or '/predictions/' + spec.model}", data=spec.body,
                                    headers={"Content-Type": spec.content_type,
                                             **({"Authorization": f"Bearer {key}"} if key else {})},
                                    timeout=self.timeout)
            status = response.status_code
            error = check(spec, response.status_code, response.content)
        except Exception as err:  # anything at all: counted, so the tests see it
            error = f"{type(err).__name__}: {err}"[:300]
        return Outcome(spec.name, spec.model, started, time.monotonic(), status, error)

    def run(self, specs: List[Spec], count: int, concurrency: int, seed: int = 0) -> List[Outcome]:
        """`count` requests, cycling over `specs` in a shuffled order, at `concurrency`."""
        order = list(specs) * max(1, math.ceil(count / len(specs)))
        random.Random(seed).shuffle(order)
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            return list(pool.map(self.send, order[:count]))

    def background(self, specs: List[Spec], concurrency: int, path: Optional[Callable[[Spec], str]] = None
                   ) -> "BackgroundLoad":
        return BackgroundLoad(self, specs, concurrency, path)


class BackgroundLoad:
    """Load that runs until stopped: `with client.background(specs, 8) as load: ...; load.outcomes`."""

    def __init__(self, client: LoadClient, specs: List[Spec], concurrency: int,
                 path: Optional[Callable[[Spec], str]] = None):
        self.client, self.specs, self.concurrency, self.path = client, specs, concurrency, path
        self.outcomes: List[Outcome] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._loop, args=(i,), daemon=True) for i in range(concurrency)]

    def _loop(self, index: int) -> None:
        for spec in itertools.islice(itertools.cycle(self.specs), index, None):
            if self._stop.is_set():
                return
            started = time.monotonic()
            try:
                outcome = self.client.send(spec, self.path(spec) if self.path else None)
            except Exception as err:  # e.g. the path function: still one counted failed request
                outcome = Outcome(spec.name, spec.model, started, time.monotonic(), -1,
                                  f"{type(err).__name__}: {err}"[:300])
            with self._lock:
                self.outcomes.append(outcome)

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

    def __enter__(self) -> "BackgroundLoad":
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=self.client.timeout + 10)


# ---- the server side: workers and their memory -------------------------------------------------
class Management:
    """The describe calls the soak needs, through tskit.client (its tokens, its bounded retries).
    `headers(kind)`: the Authorization header for a client without a key file (a caller that passes
    keys itself); a client with a key file sets its own."""

    def __init__(self, client: TorchServeClient, headers: Callable[[str], Dict[str, str]] = lambda kind: {}):
        self.client = client
        self.headers = headers

    def describe(self, model: str, version: Optional[str] = None) -> dict:
        path = f"/models/{model}" + (f"/{version}" if version else "")
        return self.client.call("management", "GET", path, headers=self.headers("management"))[0]

    def workers(self, models: Iterable[str]) -> Dict[str, int]:
        """{"<model>/<worker id>": pid} of every worker of each model's default version."""
        return {f"{m}/{w['id']}": w["pid"] for m in models for w in self.describe(m)["workers"]}


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


def soak(inference_url: str, management_url: str, key: Union[str, Callable[[str], str]], requests_total: int,
         concurrency: int = 16, warmup: int = 400, max_growth: float = 0.10,
         models: Iterable[str] = MODELS, log: Callable[[str], None] = lambda line: None,
         overload_factor: int = 4) -> SoakReport:
    """key: the server's key_file.json (tokens through tskit.client), or a function kind -> key."""
    models = list(models)
    key_file = key if isinstance(key, str) else None
    server = TorchServeClient(inference_url, management_url, key_file, timeout=120)

    def headers(kind: str) -> Dict[str, str]:
        return {} if key_file else {"Authorization": f"Bearer {key(kind)}"}

    client = (LoadClient.of(server) if key_file else LoadClient(inference_url, lambda: key("inference")))
    management = Management(server, headers)
    specs = default_specs(models)

    # each distinct request alone: its reference answer (and a first check of it)
    for spec in specs:
        response = server.request("inference", "POST", f"/predictions/{spec.model}", data=spec.body,
                                  headers={"Content-Type": spec.content_type, **headers("inference")})
        problem = check(spec, response.status_code, response.content)
        if problem:
            raise RuntimeError(f"{spec.model} {spec.name} is wrong even alone: {problem}")
        spec.reference = response.json()
    log(f"warm-up: {warmup} requests at concurrency {concurrency}")
    warm = client.run(specs, warmup, concurrency, seed=1)
    pids = management.workers(models)
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
    now_pids = management.workers(models)

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
        overload_errors=len(heavy_errors), overload_p99_ms=round(percentile(sorted(o.ended - o.started for o in heavy), 99) * 1e3, 1) if heavy else 0.0)
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
