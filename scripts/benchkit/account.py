"""make account MODEL=<name>: where a request's CPU goes, in the Java frontend and in the Python workers.

A private server of the repo's config with the one model, the package's load generator (wrk when installed)
at a fixed concurrency with the kind's bench input, in a background thread; over a window inside that load,
psutil's CPU counters of the frontend, the workers and the load generator, and `py-spy record -f raw` on each
worker. Each worker sample is sorted into a category by its frames (`categorize`), and the workers' CPU per
request is split by those shares. py-spy samples only running (non-idle) threads at 100 Hz, and costs a
little CPU of its own on the same cores.
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from typing import Dict, Iterable, Iterator, List, Optional, Tuple

import psutil

from benchkit.workloads import load_url, make_inputs
from tskit import declaration, kinds
from tskit.server import private_server, running

# (category, frame pattern); a sample goes to the category of its innermost frame that matches one.
CATEGORIES: List[Tuple[str, str]] = [
    ("model", r"Session\.run \(onnxruntime/|torch/jit/|ScriptModule|torch/_inductor/|AOTI"),
    ("image decode", r"torchvision/io/|image_decoding\.py"),
    ("resize and normalise", r"interpolate \(torch/nn/functional\.py|torchvision/transforms/v2/functional/"
                             r"|image_transforms\.py"),
    ("tokenize", r"tokenizers/|text_tokenization\.py"),
    ("logging", r"\(logging/"),
    ("metrics", r"ts/metrics/|handler_metrics\.py"),
    ("answer", r"classification\.py|\(json/"),
    ("TorchServe worker loop and protocol", r"ts/model_service_worker\.py|ts/protocol/|ts/service\.py"),
]
OTHER = "other"
# The frontend's threads by name (jcmd Thread.print), first match wins: where the Java side's CPU goes.
FRONTEND_THREADS: List[Tuple[str, str]] = [
    ("worker log readers (stdout/stderr)", r"-std(out|err)$"),
    ("batching and worker IPC (W- threads)", r"^W-\d+-"),
    ("netty event loops (HTTP and worker sockets)", r"EventLoopGroup|^epoll|^nioEventLoop"),
    ("garbage collection", r"^G1 |^GC Thread|^VM Periodic|^VM Thread"),
    ("JIT compiler", r"CompilerThread|^C[12] Compiler"),
]
FRONTEND_OTHER = "other threads"
FRONTEND_NAMES = [name for name, _ in FRONTEND_THREADS] + [FRONTEND_OTHER]
_THREAD = re.compile(r'^"(?P<name>[^"]+)".*\bnid=(?P<nid>0x[0-9a-f]+)')
NAMES = [name for name, _ in CATEGORIES] + [OTHER]
_COMPILED = [(name, re.compile(pattern)) for name, pattern in CATEGORIES]
_FILE = re.compile(r"\(([^():]+)(?::\d+)?\)\s*$")  # "function (path/file.py:line)" -> the file


def parse_raw(raw_lines: Iterable[str]) -> Iterator[Tuple[List[str], int]]:
    """py-spy's raw (collapsed-stack) format: `root;...;leaf count` per line -> (frames, count)."""
    for line in raw_lines:
        stack, _, count = line.strip().rpartition(" ")
        if stack and count.isdigit():
            yield stack.split(";"), int(count)


def category(frames: List[str]) -> str:
    """The category of the innermost frame that matches one. The handler's own modules sit flat in the
    .mar (a file without a directory): reaching one that matches nothing stops the walk ("other"), so that
    TorchServe's loop at the root of every stack claims only what it runs itself."""
    for frame in reversed(frames):
        for name, pattern in _COMPILED:
            if pattern.search(frame):
                return name
        where = _FILE.search(frame)
        if where and "/" not in where.group(1) and where.group(1).endswith(".py"):
            return OTHER
    return OTHER


def categorize(raw_lines: Iterable[str]) -> Dict[str, float]:
    """Shares of the samples per category (every category present, summing to 1; all 0 without samples)."""
    counts: Counter = Counter()
    for frames, count in parse_raw(raw_lines):
        counts[category(frames)] += count
    total = sum(counts.values())
    return {name: (counts[name] / total if total else 0.0) for name in NAMES}


def thread_category(name: str) -> str:
    return next((label for label, pattern in FRONTEND_THREADS if re.search(pattern, name)), FRONTEND_OTHER)


def thread_names(thread_dump: str) -> Dict[int, str]:
    """`jcmd <pid> Thread.print` -> {native thread id: Java thread name}."""
    out = {}
    for line in thread_dump.splitlines():
        found = _THREAD.match(line)
        if found:
            out[int(found.group("nid"), 16)] = found.group("name")
    return out


def frontend_threads(pid: int) -> Dict[int, str]:
    """The frontend's threads by native id; {} where jcmd is missing or fails (the split is then not made)."""
    jcmd = os.path.join(os.path.dirname(os.path.realpath(shutil.which("java") or "java")), "jcmd")
    try:
        dump = subprocess.run([jcmd, str(pid), "Thread.print"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    return thread_names(dump)


def thread_cpu_s(pid: int) -> Dict[int, float]:
    """CPU seconds of each thread of `pid` (/proc/<pid>/task/<tid>/stat: utime + stime)."""
    out, tick = {}, os.sysconf("SC_CLK_TCK")
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat", encoding="utf-8") as f:
                fields = f.read().rpartition(")")[2].split()
            out[int(tid)] = (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError, ValueError):
            continue  # a thread that ended meanwhile
    return out


def frontend_split(names: Dict[int, str], before: Dict[int, float], after: Dict[int, float]) -> Dict[str, float]:
    """CPU seconds per frontend category between two thread_cpu_s readings (threads born meanwhile count whole)."""
    out = {name: 0.0 for name in FRONTEND_NAMES}
    for tid, used in after.items():
        out[thread_category(names.get(tid, ""))] += used - before.get(tid, 0.0)
    return out


def workload_of(model: str, work: str, name: Optional[str] = None) -> dict:
    """The bench's input `name` (default: the one of the model's kind), written under `work`."""
    name = name or kinds.kind(declaration.load(model).kind).bench_workload
    if not name:
        raise SystemExit(f"{model}: its kind has no bench input to send")
    inputs = make_inputs(os.path.join(work, "inputs"))
    if name not in inputs:
        raise SystemExit(f"no bench input {name!r}: one of {', '.join(inputs)}")
    return dict(inputs[name], name=name)


def processes(server) -> Tuple[psutil.Process, List[psutil.Process]]:
    """The Java frontend and its Python workers."""
    front = psutil.Process(server.pid())
    java = next(p for p in [front] + front.children(recursive=True) if "java" in p.name())
    workers = [p for p in java.children(recursive=True) if "model_service_worker" in " ".join(p.cmdline())]
    return java, workers


def cpu_s(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def load_generators() -> List[psutil.Process]:
    """wrk, run by the load thread: a child of this process."""
    return [p for p in psutil.Process().children() if p.name() == "wrk"]


def spy(pid: int, seconds: int, out: str) -> subprocess.Popen:
    py_spy = os.path.join(os.path.dirname(sys.executable), "py-spy")
    return subprocess.Popen([py_spy, "record", "-p", str(pid), "-d", str(seconds), "-r", "100", "-f", "raw",
                             "-o", out, "--nonblocking"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def window(server, seconds: int, work: str) -> dict:
    """CPU seconds of the frontend, the workers and wrk over `seconds`, py-spy's raw stacks of the workers,
    and the batch sizes the model log reported meanwhile."""
    java, workers = processes(server)
    wrk = load_generators()
    everyone = [java] + workers + wrk
    before = {p.pid: cpu_s(p) for p in everyone}
    logged = len(server.batch_sizes())
    names, threads_before = frontend_threads(java.pid), thread_cpu_s(java.pid)
    outs = [os.path.join(work, f"worker-{i}.raw.txt") for i in range(len(workers))]
    spies = [spy(w.pid, seconds, out) for w, out in zip(workers, outs)]
    start = time.monotonic()
    for s in spies:
        s.wait()
    elapsed = time.monotonic() - start
    used = {p.pid: cpu_s(p) - before[p.pid] for p in everyone}
    frontend = frontend_split(names, threads_before, thread_cpu_s(java.pid)) if names else {}
    raw: List[str] = []
    for out in outs:
        if os.path.exists(out):
            with open(out, encoding="utf-8", errors="replace") as f:
                raw.extend(f.read().splitlines())
    sizes = server.batch_sizes()[logged:]
    return {"seconds": elapsed, "java_s": used[java.pid], "workers_s": sum(used[w.pid] for w in workers),
            "wrk_s": sum(used[p.pid] for p in wrk), "workers": len(workers), "wrk": bool(wrk),
            "raw": raw, "batches": sizes, "frontend": frontend}


def measure(server, model: str, workload: dict, seconds: int, concurrency: int, work: str,
            warmup: float = 30) -> Tuple[dict, object]:
    """Warm-up, then the load in a thread with the window measured inside it (2 s after its start)."""
    client = server.client()
    url, token = client.prediction_url(model), client.key("inference")
    # warm-up: the frontend's JIT compiles for the first ~30 s of load (measured: at 5 s, C2 still took half of the
    # frontend's CPU), and the steady state is what a server spends per request
    load_url(url, token, workload, concurrency, warmup)
    result = {}
    thread = threading.Thread(target=lambda: result.update(
        load=load_url(url, token, workload, concurrency, seconds + 6)), daemon=True)
    thread.start()
    time.sleep(2)
    measured = window(server, seconds, work)
    thread.join()
    return measured, result["load"]


def report(model: str, workload: dict, concurrency: int, measured: dict, load) -> dict:
    requests = load.throughput * measured["seconds"]
    per_request = (lambda s: round(s / requests * 1e3, 3) if requests else float("nan"))
    shares = categorize(measured["raw"])
    workers_ms = per_request(measured["workers_s"])
    sizes = measured["batches"]
    client_ms = (per_request(measured["wrk_s"]) if measured["wrk"]
                 else round(load.client_cpu_s / max(1, load.requests) * 1e3, 3))
    return {"model": model, "input": workload["name"], "concurrency": concurrency, "generator": load.generator,
            "window_s": round(measured["seconds"], 1), "requests_per_s": round(load.throughput, 1),
            "errors": load.errors, "workers": measured["workers"],
            "mean_batch": round(sum(sizes) / len(sizes), 2) if sizes else None,
            "frontend_ms": per_request(measured["java_s"]), "workers_ms": workers_ms,
            "load_generator_ms": client_ms, "samples": sum(c for _, c in parse_raw(measured["raw"])),
            "shares": {k: round(v, 4) for k, v in shares.items()},
            "workers_ms_by_category": {k: round(v * workers_ms, 3) for k, v in shares.items()},
            "frontend_ms_by_thread": {k: per_request(v) for k, v in measured["frontend"].items()}}


def account(model: str, seconds: int = 15, concurrency: int = 16, work: str = "",
            settings: Optional[Dict[str, str]] = None, warmup: float = 30, workload: Optional[str] = None) -> dict:
    """The whole measurement on a private server of the repo's config with `model` alone; `settings`: config.properties
    keys that replace the repo's (e.g. number_of_netty_threads), to measure what a frontend setting buys."""
    work = work or tempfile.mkdtemp(prefix=f"account-{model}-")
    os.makedirs(work, exist_ok=True)
    workload = workload_of(model, work, workload)
    server = private_server(os.path.join(work, "server"), load_models=f"{model}.mar", **(settings or {}))
    with running(server, [model]):
        measured, load = measure(server, model, workload, seconds, concurrency, work, warmup)
    return {**report(model, workload, concurrency, measured, load), "settings": dict(settings or {})}


def table(result: dict) -> str:
    """The report as a markdown table: per request, the frontend, the workers by category, wrk."""
    lines = [f"{result['model']}: {result['requests_per_s']} req/s at concurrency {result['concurrency']} "
             f"({result['input']}, {result['generator']}, {result['errors']} errors), "
             f"{result['workers']} worker(s), mean batch {result['mean_batch']}, "
             f"window {result['window_s']} s, {result['samples']} py-spy samples"
             + "".join(f", {k}={v}" for k, v in result.get("settings", {}).items()),
             "", "| where | CPU ms per request | share of the workers |", "|---|---:|---:|",
             f"| Java frontend | {result['frontend_ms']:.2f} | |"]
    lines += [f"| frontend: {name} | {ms:.2f} | |" for name, ms in result.get("frontend_ms_by_thread", {}).items()]
    lines.append(f"| Python workers, all | {result['workers_ms']:.2f} | 100% |")
    for name in NAMES:
        lines.append(f"| workers: {name} | {result['workers_ms_by_category'][name]:.2f} "
                     f"| {result['shares'][name]:.0%} |")
    lines.append(f"| load generator ({result['generator']}) | {result['load_generator_ms']:.2f} | |")
    return "\n".join(lines)

