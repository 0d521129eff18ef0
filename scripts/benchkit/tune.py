"""make tune's sweep (scripts/tune.py is its command): workers x intra-op threads x batchSize x maxBatchDelay
for one model, and the best setting whose p99 meets a latency target, written as a config fragment.

One TorchServe is started for the whole sweep (own ports, working dir, TMPDIR); settings are applied
through the management API: each intra-op thread count is a variant of the model's archive (the
thread count lives in its model-config.yaml), registered with `batch_size` and `max_batch_delay`,
then scaled to each worker count. Per point: one lone request whose answer must be right (bench's
answer check), a warm-up, then --repeats timed runs (3; 2 with --quick) of wrk at a fixed concurrency
on a realistic input (bench.py's), every 10th answer checked; a failed request in any of them (a
non-200, a wrong answer, a socket error, any client exception) is an error of the point, and a point
with errors is never chosen. A point's throughput is the median of its runs, its p99 the worst run's,
its spread (max - min) / median: the noise this machine showed on that point.

The grid is pruned: workers x threads above the core count are skipped, and batch sizes stop growing
for a worker count only when a larger batch is slower beyond the measured noise: every run of it below
every run of the best batch so far, and its median more than --min-drop (3%) below. A drop within the
runs' spread is noise (one setting measured twice has differed by up to 1.5x here), not a reason to stop.

Management calls go through tskit.client: a 500 ConcurrentModificationException (seen on the final
unregister while a worker was still stopping) or a 503 is retried, bounded, with backoff, each retry
logged; registration (POST) is not retried, as it is not idempotent.

Writes results/tune/<model>/: frontier.md, frontier.png, results.json, config-fragment.properties
(a `models=` entry for config.properties) and model-config-values.yaml (the same values for the
model's models/<name>/model.yaml (torchserve: and handler:)).
"""

import json
import os
import shutil
import statistics
import sys
import tempfile
import zipfile
from typing import Dict, List, Optional

import psutil
import yaml
from tqdm import tqdm

from benchkit.archives import copy_archive
from benchkit.workloads import load_point, make_inputs
from benchkit.checks import answer_check
from tskit.server import REPO, private_server
from tskit.client import TorchServeClient
from tskit import kinds
from tskit.declaration import load as load_declaration

FRONTEND_KEYS = ("minWorkers", "maxWorkers", "batchSize", "maxBatchDelay")


def default_workload(model: str) -> str:
    """The workload of the model's kind, from its declaration."""
    return kinds.kind(load_declaration(model).kind).bench_workload


def variant_archive(model: str, threads: int, store: str, frontend: Optional[dict] = None,
                    name: Optional[str] = None, source: Optional[str] = None) -> str:
    """A copy of an archive whose model-config.yaml sets `threads` intra-op threads: `source` (a .mar path; make
    optimize passes its winner's, built under its build root), by default the model's model_store/<model>.mar.
    Without `frontend`, workers and batching are left out of it, so the registration decides them
    (TorchServe lets the archive's model-config.yaml win over config.properties and the API);
    with `frontend` ({"minWorkers": ..., "batchSize": ...}) they are written in."""
    name = name or f"{model}_t{threads}"
    source = source or os.path.join(REPO, "model_store", f"{model}.mar")
    if not source.endswith(".mar"):
        raise ValueError(f"not a model archive (.mar): {source}")
    with zipfile.ZipFile(source) as mar:
        config_name = json.loads(mar.read("MAR-INF/MANIFEST.json"))["model"]["configFile"]

    def set_threads(data: bytes) -> bytes:
        config = yaml.safe_load(data)
        for key in FRONTEND_KEYS:
            config.pop(key, None)
        config.update(frontend or {})
        config.setdefault("handler", {})["intraOpThreads"] = threads
        return yaml.safe_dump(config, sort_keys=False).encode()

    copy_archive(os.path.basename(source)[:-len(".mar")], store, name, {config_name: set_threads},
                 source_store=os.path.dirname(os.path.abspath(source)))
    return name


def log(message: str) -> None:
    tqdm.write(f"[tune] {message}", file=sys.stderr)


class Sweep:
    """The sweep's server and its management calls, through tskit.client: its tokens, and its bounded,
    logged retries of transient failures (500 ConcurrentModificationException, 503)."""

    def __init__(self, model: str, workdir: str, source: Optional[str] = None):
        self.model = model
        self.source = source  # the archive swept (variant_archive's `source`): default model_store/<model>.mar
        self.kind = load_declaration(model).kind
        self.store = os.path.join(workdir, "model_store")
        os.makedirs(self.store, exist_ok=True)
        self.server = private_server(workdir, model_store=self.store, load_models="", models="{}")

    @property
    def client(self) -> TorchServeClient:
        return self.server.client(timeout=600)

    def archive(self, threads: int) -> str:
        """The swept archive with `threads` intra-op threads, in the sweep's store: its model name."""
        return variant_archive(self.model, threads, self.store, source=self.source)

    def register(self, name: str, batch: int, delay: int, workers: int) -> None:
        self.client.register(f"{name}.mar", model_name=name, initial_workers=workers, batch_size=batch,
                             max_batch_delay=delay)

    def scale(self, name: str, workers: int) -> None:
        self.client.scale(name, workers)

    def unregister(self, name: str) -> None:
        self.client.unregister_and_wait(name)

    def measure(self, name: str, workload_name: str, workload: dict, concurrency: int, seconds: float,
                warmup: float, repeats: int) -> dict:
        """One point: a lone checked answer, a warm-up, `repeats` timed runs; every run's answers checked."""
        try:
            check = answer_check(self.client, name, workload_name, workload, self.kind)
        except Exception as err:  # wrong even alone: a failed point, not timed
            return {"errors": 1, "warmup_errors": 0, "throughput": 0.0, "p50_ms": float("nan"),
                    "p99_ms": float("nan"), "spread": float("nan"), "runs": [],
                    "first_error": f"lone answer: {type(err).__name__}: {err}"[:300]}
        warm = load_point(self.server, name, workload, concurrency, warmup, check=check) if warmup else None
        runs = [load_point(self.server, name, workload, concurrency, seconds, check=check).as_dict()
                for _ in range(max(1, repeats))]
        return summarise(runs, warm.as_dict() if warm else None)


def summarise(runs: List[dict], warm: Optional[dict] = None) -> dict:
    """A point from its repeated runs: median throughput, worst p99, spread; every failure counted."""
    rates = [r["throughput"] for r in runs]
    middle = statistics.median(rates)
    failures = [r["first_error"] for r in ([warm] if warm else []) + runs if r.get("first_error")]
    return {"throughput": middle, "p50_ms": statistics.median(r["p50_ms"] for r in runs),
            "p99_ms": max(r["p99_ms"] for r in runs), "errors": sum(r["errors"] for r in runs),
            "warmup_errors": warm["errors"] if warm else 0, "requests": sum(r["requests"] for r in runs),
            "checked": sum(r["checked"] for r in runs), "wrong": sum(r["wrong"] for r in runs),
            "spread": (max(rates) - min(rates)) / middle if middle else float("nan"),
            "runs": [{"throughput": round(r["throughput"], 1), "p99_ms": round(r["p99_ms"], 1)} for r in runs],
            "first_error": failures[0] if failures else ""}


def slower_beyond_noise(point: dict, best: dict, min_drop: float = 0.03) -> bool:
    """True when `point` is slower than `best` by more than the noise its runs measured: every run of
    it below every run of `best`, and its median more than `min_drop` below. One run each (repeats 1):
    the ranges are single values, and only the median rule is left (the old, noisy behaviour)."""
    mine = [r["throughput"] for r in point["runs"]]
    theirs = [r["throughput"] for r in best["runs"]]
    if not mine or not theirs:
        return False
    return max(mine) < min(theirs) and point["throughput"] < best["throughput"] * (1 - min_drop)


def frontier(rows: List[dict]) -> List[dict]:
    """Points no other point beats on both throughput and p99."""
    return [r for r in rows if not any(o["throughput"] >= r["throughput"] and o["p99_ms"] <= r["p99_ms"]
                                       and (o["throughput"], -o["p99_ms"]) != (r["throughput"], -r["p99_ms"])
                                       for o in rows)]


def choose(rows: List[dict], p99_ms: float) -> Optional[dict]:
    """The fastest point (median of its runs) whose worst run meets the p99 target, with no failed request."""
    meeting = [r for r in rows if r["p99_ms"] <= p99_ms and r["errors"] == 0 and not r.get("warmup_errors")]
    return max(meeting, key=lambda r: r["throughput"]) if meeting else None


def write_outputs(out: str, model: str, rows: List[dict], best: Optional[dict], args) -> None:
    """frontier.md, results.json, the config fragments (when a point was chosen) and frontier.png in `out`."""
    os.makedirs(out, exist_ok=True)
    verdict = (f"chosen (p99 <= {args.p99_ms:g} ms at concurrency {args.concurrency}): workers {best['workers']}, "
               f"threads {best['threads']}, batchSize {best['batch']}, maxBatchDelay {best['delay']} ms -> "
               f"{best['throughput']:.1f} req/s, p99 {best['p99_ms']:.1f} ms" if best else
               f"no setting met p99 <= {args.p99_ms:g} ms at concurrency {args.concurrency}")
    with open(os.path.join(out, "frontier.md"), "w", encoding="utf-8") as f:
        f.write(f"# make tune: {model}\n\n{verdict}\n\n" + "\n".join(frontier_table(rows)) + "\n")
    with open(os.path.join(out, "results.json"), "w", encoding="utf-8") as f:
        json.dump({"model": model, "rows": rows, "best": best, "p99_ms": args.p99_ms,
                   "concurrency": args.concurrency, "workload": args.workload, "repeats": args.repeats,
                   "min_drop": args.min_drop}, f, indent=1)
    if best:
        write_fragments(out, model, best, verdict, args)
    plot_frontier(os.path.join(out, "frontier.png"), model, rows, best, args)


def frontier_table(rows: List[dict]) -> List[str]:
    """Every point, fastest first, as markdown lines; the points with failed requests named below."""
    lines = ["| workers | threads | batchSize | maxBatchDelay | req/s (median) | runs req/s | spread | p50 ms "
             "| p99 ms (worst run) | errors (checked) | frontier | pruned after |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    front = frontier(rows)
    for r in sorted(rows, key=lambda r: -r["throughput"]):
        runs = ", ".join(f"{run['throughput']:.1f}" for run in r.get("runs", []))
        errors = r["errors"] + r.get("warmup_errors", 0)
        lines.append(f"| {r['workers']} | {r['threads']} | {r['batch']} | {r['delay']} | {r['throughput']:.1f} "
                     f"| {runs} | {r.get('spread', float('nan')):.0%} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} "
                     f"| {errors} ({r.get('checked', 0)}) | {'*' if r in front else ''} "
                     f"| {'yes: ' + r['pruned'] if r.get('pruned') else ''} |")
    failed = [r for r in rows if r["errors"] or r.get("warmup_errors")]
    if failed:
        lines += ["", "Points with failed requests (never chosen): " + "; ".join(
            f"workers {r['workers']} threads {r['threads']} batch {r['batch']} delay {r['delay']}: "
            f"{r['first_error'][:160]}" for r in failed)]
    return lines


def write_fragments(out: str, model: str, best: dict, verdict: str, args) -> None:
    """config-fragment.properties (a `models=` entry) and model-config-values.yaml (the declaration's values)."""
    entry = {model: {"1.0": {"marName": f"{model}.mar", "minWorkers": best["workers"], "maxWorkers": best["workers"],
                             "batchSize": best["batch"], "maxBatchDelay": best["delay"], "responseTimeout": 60}}}
    with open(os.path.join(out, "config-fragment.properties"), "w", encoding="utf-8") as f:
        f.write(f"# make tune {model}: {verdict}\n# merge this entry into models= in config.properties, and put the\n"
                "# same values in models/<model>/model.yaml (the archive's values win in TorchServe)\n")
        f.write("models=" + json.dumps(entry) + "\n")
    with open(os.path.join(out, "model-config-values.yaml"), "w", encoding="utf-8") as f:
        f.write(f"# make tune {model}: {verdict}\n")
        yaml.safe_dump({"minWorkers": best["workers"], "maxWorkers": best["workers"], "batchSize": best["batch"],
                        "maxBatchDelay": best["delay"], "handler": {"intraOpThreads": best["threads"]},
                        "measured": {"throughput_rps": round(best["throughput"], 1), "p99_ms": round(best["p99_ms"], 1),
                                     "concurrency": args.concurrency, "workload": args.workload}},
                       f, sort_keys=False)


def plot_frontier(path: str, model: str, rows: List[dict], best: Optional[dict], args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for (workers, threads) in sorted({(r["workers"], r["threads"]) for r in rows}):
        pts = sorted((r["p99_ms"], r["throughput"], r["batch"]) for r in rows if (r["workers"], r["threads"]) == (workers, threads))
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], label=f"{workers} workers x {threads} threads")
        for p99, tput, batch in pts:
            ax.annotate(f"b{batch}", (p99, tput), fontsize=7)
    ax.axvline(args.p99_ms, color="red", linestyle="--", label=f"p99 target {args.p99_ms:g} ms")
    if best:
        ax.scatter([best["p99_ms"]], [best["throughput"]], s=160, facecolors="none", edgecolors="black", label="chosen")
    ax.set_xlabel(f"p99 latency (ms) at concurrency {args.concurrency}")
    ax.set_ylabel("throughput (req/s)")
    ax.set_title(f"make tune: {model} ({args.workload})")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def prune(row: dict, best_so_far: Dict[int, dict], workers: int, stopped: set, min_drop: float) -> None:
    """Stop growing the batch for `workers` when this batch is slower than the best so far beyond the
    measured noise (a larger batch that is really slower will not recover); a point with failed
    requests neither prunes nor becomes the best."""
    if row["errors"] or row.get("warmup_errors"):
        return
    best = best_so_far.get(workers)
    if best is not None and slower_beyond_noise(row, best, min_drop):
        stopped.add(workers)
        row["pruned"] = (f"below batch {best['batch']} beyond noise ({row['throughput']:.1f} vs "
                         f"{best['throughput']:.1f} req/s, spreads {row['spread']:.0%} / {best['spread']:.0%})")
        log(f"workers {workers}: batch sizes above {row['batch']} not tried: {row['pruned']}")
    elif best is None or row["throughput"] > best["throughput"]:
        best_so_far[workers] = row


def settle(args) -> None:
    """What --quick implies, and the input: the one named, or the default of the model's kind (ValueError
    for a kind without one)."""
    if args.quick:
        args.threads, args.batch_sizes, args.delays, args.seconds, args.warmup = [1], [1, 4, 8], [5], 3, 1
        args.repeats = min(args.repeats, 2)
    kind = load_declaration(args.model).kind
    if not args.workload and not kinds.kind(kind).bench_workload:
        raise ValueError(f"no default input for a {kind}: pass --workload (one of bench.py's inputs)")
    args.workload = args.workload or default_workload(args.model)


def sweep(args, workload: dict, source: Optional[str] = None) -> List[dict]:
    """Every point of the grid on one server of its own (always stopped), pruned as `prune` says; the archive
    swept is `source` (a .mar path), by default model_store/<model>.mar."""
    cores = psutil.cpu_count(logical=True)
    workdir = tempfile.mkdtemp(prefix="tune-server-")
    tuning = Sweep(args.model, workdir, source)
    rows: List[dict] = []
    total = sum(1 for t in args.threads for w in args.workers if w * t <= cores) * len(args.delays) * len(args.batch_sizes)
    progress = tqdm(total=total, desc=f"tune {args.model}", unit="point")
    tuning.server.start()
    try:
        tuning.server.wait_ready([], timeout=120)
        for threads in args.threads:
            workers_list = [w for w in args.workers if w * threads <= cores]
            if not workers_list:
                continue
            name = tuning.archive(threads)
            for delay in args.delays:
                best_so_far: Dict[int, dict] = {}
                stopped = set()
                for batch in args.batch_sizes:
                    if len(stopped) == len(workers_list):
                        progress.update(len(workers_list))
                        continue
                    tuning.register(name, batch, delay, workers_list[0])
                    try:
                        for workers in workers_list:
                            progress.update(1)
                            if workers in stopped:
                                continue
                            tuning.scale(name, workers)
                            result = tuning.measure(name, args.workload, workload, args.concurrency, args.seconds,
                                                   args.warmup, args.repeats)
                            row = dict(result, workers=workers, threads=threads, batch=batch, delay=delay)
                            rows.append(row)
                            prune(row, best_so_far, workers, stopped, args.min_drop)
                    finally:
                        tuning.unregister(name)
    finally:
        progress.close()
        tuning.server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return rows


def run(args) -> int:
    """The sweep, the choice and the report (settled args: see `settle`); 2 when no point met the target."""
    out = args.out or os.path.join(REPO, "results", "tune", args.model)
    workload = make_inputs(os.path.join(out, "inputs"))[args.workload]
    rows = sweep(args, workload)
    best = choose(rows, args.p99_ms)
    write_outputs(out, args.model, rows, best, args)
    with open(os.path.join(out, "frontier.md"), encoding="utf-8") as f:
        print(f.read())
    print(f"written: {out}/frontier.md, frontier.png, config-fragment.properties, model-config-values.yaml")
    return 0 if best else 2
