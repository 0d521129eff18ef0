"""make optimize's tuning of its winner: the winner's own archive (the variant built under the build root) swept
through the served path by make tune's machinery (benchkit.tune: its Sweep, load points, pruning and `choose`),
on a small grid planned here from the host's cores and the declaration.

The default grid: batch sizes 1, 4, 8 (and the declared one) x maxBatchDelay as declared and one other (a quarter
of it, or four times it when it is 5 ms or less) x the worker/thread layouts whose workers x threads <= cores
(workers 1, 2 and one per core; threads 1 and 2); points of 1 s warm-up + 2 runs of 3 s. The quick grid (what
--quick --tune runs) is the declared layout only, batch sizes 1 and the declared one, the declared delay, one run.
The choice: tune's `choose`, the fastest point whose worst run's p99 meets the target with no failed request.
"""

import argparse
import os
import shutil
import tempfile
from typing import Dict, List, Optional

from tskit import kinds

# the target a tuned point's p99 must meet at the run's concurrency (16): the frontiers make tune measured on the
# project's 2-core host had their chosen points at p99 186-225 ms and the hand-set batch-8 settings at 540-707 ms
P99_MS = 500.0
BATCH_SIZES = (1, 4, 8)
THREADS = (1, 2)
SECONDS, WARMUP, REPEATS = 3.0, 1.0, 2
# tuning's statuses
TUNED, NO_POINT, SKIPPED, FAILED = "tuned", "no point met the target", "skipped", "failed"


def other_delay(declared: int) -> int:
    """The second maxBatchDelay tried: a quarter of the declared one, or four times it when it is 5 ms or less."""
    if declared <= 0:
        return 5
    return declared * 4 if declared <= 5 else max(1, declared // 4)


def plan_grid(cores: int, torchserve: dict, handler: dict, quick: bool = False) -> Dict[str, List[int]]:
    """The sweep's axes for a host of `cores` logical cores and a declaration's torchserve:/handler: values.
    tune.sweep crosses workers x threads and skips layouts above the cores; `layouts` lists those it runs."""
    cores = max(1, int(cores))
    batch = int(torchserve.get("batchSize", 1))
    delay = int(torchserve.get("maxBatchDelay", 5))
    if quick:
        workers, threads = int(torchserve.get("minWorkers", 1)), int(handler.get("intraOpThreads", 1))
        if workers * threads > cores:
            workers, threads = 1, 1
        grid = {"workers": [workers], "threads": [threads], "batch_sizes": sorted({1, batch}), "delays": [delay]}
    else:
        grid = {"workers": sorted(w for w in {1, 2, cores} if w <= cores),
                "threads": [t for t in THREADS if t <= cores],
                "batch_sizes": sorted(set(BATCH_SIZES) | {batch}), "delays": [delay, other_delay(delay)]}
    grid["layouts"] = [[w, t] for t in grid["threads"] for w in grid["workers"] if w * t <= cores]
    return grid


def sweep_args(model: str, grid: dict, args, workload: str) -> argparse.Namespace:
    """The settled arguments tune.sweep reads, from the grid, optimize's options and the input's name."""
    quick = bool(args.quick)
    return argparse.Namespace(
        model=model, workload=workload, workers=grid["workers"], threads=grid["threads"], batch_sizes=grid["batch_sizes"],
        delays=grid["delays"], concurrency=args.concurrency, min_drop=0.03,
        seconds=args.tune_seconds or (args.seconds if quick else SECONDS),
        warmup=args.warmup if quick else WARMUP, repeats=1 if quick else REPEATS)


def explain(rows: List[dict], best: Optional[dict], p99_ms: float, concurrency: int) -> str:
    """Why the chosen point (or none), in words."""
    failed = [r for r in rows if r["errors"] or r.get("warmup_errors")]
    over = [r for r in rows if r not in failed and not r["p99_ms"] <= p99_ms]
    tail = (f"; {len(over)} point(s) over the target" if over else "") + \
        (f"; {len(failed)} with failed requests" if failed else "")
    if best is None:
        return (f"none of the {len(rows)} point(s) met p99 <= {p99_ms:g} ms at concurrency {concurrency} with no "
                f"failed request{tail}: the batching is left as declared")
    return (f"{best['workers']} worker(s) x {best['threads']} thread(s), batchSize {best['batch']}, maxBatchDelay "
            f"{best['delay']} ms: {best['throughput']:.1f} req/s (median of its runs), p99 {best['p99_ms']:.0f} ms "
            f"(worst run): the fastest of the {len(rows) - len(over) - len(failed)} point(s) meeting p99 <= "
            f"{p99_ms:g} ms at concurrency {concurrency} with no failed request{tail}")


def declared_values(best: dict) -> Dict[str, Dict[str, int]]:
    """The declaration's values of a tuned point: {section: {key: value}}."""
    return {"torchserve": {"minWorkers": best["workers"], "maxWorkers": best["workers"], "batchSize": best["batch"],
                           "maxBatchDelay": best["delay"]},
            "handler": {"intraOpThreads": best["threads"]}}


def note(tuning: dict, date: str) -> str:
    """The comment of a batching line make optimize wrote: what was measured."""
    best = tuning["best"]
    return (f"make optimize {date}, tuned on the winner: {best['workers']} worker(s) x {best['threads']} thread(s), "
            f"batch {best['batch']}, {best['delay']} ms -> {best['throughput']:.0f} req/s, p99 {best['p99_ms']:.0f} "
            f"ms <= {tuning['p99_ms']:g} at concurrency {tuning['concurrency']}; results/optimize/")


def skipped(why: str, p99_ms: float, concurrency: int) -> dict:
    return {"status": SKIPPED, "why": why, "p99_ms": p99_ms, "concurrency": concurrency, "rows": [], "best": None}


def tune_winner(decl, archive: str, host_cores: int, args, log) -> dict:
    """Sweep the winner's `archive` on the planned grid and choose; a sweep that fails (its server, an archive)
    is reported, never a failure of the run. Returns the report's `tuning` section."""
    from benchkit import tune
    from benchkit.workloads import make_inputs

    grid = plan_grid(host_cores, decl.torchserve, decl.handler, args.quick)
    workload_name = kinds.kind(decl.kind).bench_workload
    settled = sweep_args(decl.name, grid, args, workload_name)
    out = {"status": FAILED, "archive": archive, "p99_ms": args.p99_ms, "concurrency": args.concurrency,
           "grid": grid, "points": {"seconds": settled.seconds, "warmup_s": settled.warmup,
                                    "repeats": settled.repeats}, "rows": [], "best": None}
    log(f"tuning {os.path.basename(archive)}: layouts {grid['layouts']}, batch sizes {grid['batch_sizes']}, "
        f"delays {grid['delays']} ms, p99 target {args.p99_ms:g} ms")
    inputs = tempfile.mkdtemp(prefix="optimize-tune-")
    try:
        rows = tune.sweep(settled, make_inputs(inputs)[workload_name], source=archive)
    except Exception as err:
        out["why"] = f"the sweep failed ({type(err).__name__}: {err})"[:300] + ": the batching is left as declared"
        log(out["why"])
        return out
    finally:
        shutil.rmtree(inputs, ignore_errors=True)
    best = tune.choose(rows, args.p99_ms)
    out.update(rows=rows, best=best, status=TUNED if best else NO_POINT, workload=workload_name,
               why=explain(rows, best, args.p99_ms, args.concurrency))
    if best:
        out["values"] = declared_values(best)
    log(f"tuning: {out['why']}")
    return out
