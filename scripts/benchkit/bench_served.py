"""(A), (A2), (B), (P) in benchkit.plan's interleaved order, each checked, and (C) right after each input."""

import json
import os
from typing import Dict, List

from tqdm import tqdm

from benchkit import inprocess
from benchkit.workloads import load_point
from benchkit.checks import answer_check
from benchkit.bench_servers import STORE, declared
from benchkit.bench_points import checked_point
from tskit.server import TorchServe


# ---- (A), (A2), (B), (P), (C) -----------------------------------------------------------------------
def served_section(server: TorchServe, args, groups, inputs: Dict[str, dict], kinds: Dict[str, str],
                   rows: List[dict], log) -> None:
    """Each group's points in benchkit.plan's interleaved order, every one checked; then (C) for that
    input, right after, so that drift between (B) and (C) stays small (the server idles meanwhile)."""
    client = server.client()
    decls = declared()
    progress = tqdm(total=sum(len(g.points) for g in groups), desc="bench", unit="point")
    for group in groups:
        workload = inputs[group.workload]
        checks = {}
        for point in group.points:
            if point.model not in checks:
                try:
                    checks[point.model] = answer_check(
                        client, point.model, group.workload, workload, kinds[group.base],
                        stock=point.setup in ("A", "A2"), pipeline=point.setup == "P")
                except Exception as err:  # wrong even alone: each of its points is a failed row, not timed
                    checks[point.model] = f"the lone answer is wrong: {type(err).__name__}: {err}"[:300]
            check = checks[point.model]
            what = {"setup": point.setup, "model": point.model, "workload": group.workload,
                    "concurrency": point.concurrency}
            if isinstance(check, str):
                row = dict(what, errors=1, requests=0, throughput=0.0, first_error=check, check="lone answer")
                rows.append(row)
            else:
                row = checked_point(rows, what, lambda seconds, p=point, c=check: load_point(
                    server, p.model, workload, p.concurrency, seconds, args.generator, c), args, check, server)
            progress.update(1)
            if row.get("errors") or row.get("warmup_errors"):
                log(f"{point.setup} {point.model} c={point.concurrency}: {row.get('errors')} failed requests "
                    f"(+{row.get('warmup_errors', 0)} in warm-up): {row.get('first_error')}")
            with open(os.path.join(args.out, "rows.partial.json"), "w", encoding="utf-8") as f:
                json.dump(rows, f)  # a crash later keeps what was measured
        if not args.no_raw:
            with open(workload["path"], "rb") as f:
                body = f.read()
            model = group.base
            raw = inprocess.best_rate("C", os.path.join(STORE, f"{model}.mar"), body, max(2.0, args.seconds / 2),
                                     one_layout=args.quick)
            rows.append(dict(raw, setup="C", model=model, workload=group.workload, concurrency=None,
                             batch=int(decls[model].torchserve.get("batchSize", 1)) if model in decls else None,
                             input=f"model input of {group.workload}"))
    progress.close()
