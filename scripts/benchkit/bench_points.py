"""One load point of make bench as a row: the warm-up and the timed run, both checked, the server's and
the client's CPU."""

import time
from typing import Callable, List, Optional


from tskit.load import AnswerCheck, LoadResult
from tskit.server import TorchServe
from benchkit.bench_servers import server_cpu_seconds


def _run(run: Callable[[], LoadResult]) -> dict:
    try:
        return run().as_dict()
    except Exception as err:  # the generator itself failed: a failed point, not a crash
        return {"errors": 1, "throughput": 0.0, "requests": 0, "first_error": f"{type(err).__name__}: {err}"[:300]}


def measure(rows: List[dict], row: dict, run: Callable[[], LoadResult], server: Optional[TorchServe] = None,
            check: Optional[AnswerCheck] = None, warmup: Optional[Callable[[], LoadResult]] = None) -> dict:
    """One load point: its result as a row. The warm-up's answers are checked too: its failed requests
    are kept in the row (warmup_errors), never dropped with its timings."""
    warm = _run(warmup) if warmup else {}
    cpu_before, wall_before = (server_cpu_seconds(server) if server else float("nan")), time.monotonic()
    result = _run(run)
    wall = time.monotonic() - wall_before
    if not result.get("requests"):  # nothing answered within the point: a failed point, not 0 req/s
        result["errors"] = max(1, result.get("errors", 0))
        result["first_error"] = result.get("first_error") or "no request was answered within the load point"
        result["stalled"] = True
    row = dict(result, **row)
    row["check"] = check.describe() if check else "status 200"
    if warmup:
        row["warmup_errors"] = warm.get("errors", 0)
        if warm.get("errors") and not row.get("first_error"):
            row["first_error"] = f"warm-up: {warm.get('first_error', '')}"
    if server is not None:
        row["server_cores"] = (server_cpu_seconds(server) - cpu_before) / wall
    if "client_cpu_s" in result:
        row["client_cores"] = result["client_cpu_s"] / wall
    rows.append(row)
    return row


def checked_point(rows: List[dict], row: dict, go: Callable[[float], LoadResult], args, check: AnswerCheck,
                  server: Optional[TorchServe] = None) -> dict:
    """A warm-up of args.warmup s and a timed point of args.seconds s, both with `go(seconds)`, both
    checked with `check`: one row."""
    warmup = (lambda: go(args.warmup)) if args.warmup else None
    return measure(rows, row, lambda: go(args.seconds), server, check, warmup)
