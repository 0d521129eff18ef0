"""make optimize's report: markdown (printed), JSON and a bar chart of every variant's speed and agreement."""

import json
import math
import os
from typing import List

from benchkit.optimize_choice import BELOW_BAR, CHOSEN, KEPT, fmt_agreement, bar
from benchkit.optimize_tune import NO_POINT, SKIPPED, TUNED
from benchkit.tune import frontier_table
from tskit import kinds
from tskit.declaration import REPO


# ---- the report ----------------------------------------------------------------------------------------------
def tune_note(name: str) -> str:
    path = os.path.join(REPO, "results", "tune", name, "results.json")
    try:
        with open(path, encoding="utf-8") as f:
            best = json.load(f).get("best")
    except (OSError, ValueError):
        return "no `make tune` result on record for this model (results/tune/%s/)" % name
    if not best:
        return f"`make tune`'s last run ({path}) met no target"
    return (f"`make tune`'s last result (results/tune/{name}/): {best['workers']} workers x {best['threads']} "
            f"thread(s), batchSize {best['batch']}, maxBatchDelay {best['delay']} ms, {best['throughput']:.1f} req/s "
            "(make tune's own run, on model_store's archive)")


def markdown(report: dict) -> str:
    kind = report["kind"]
    metric, threshold = bar(kind)
    host = report["host"]
    run = report.get("run") or {}
    lines = [f"# make optimize: {report['model']} ({kind})", "",
             f"- host: {host['model']}, {host['cores']} logical cores, {host['machine']}; "
             f"CPU flags: {', '.join(host['flags']) or 'none of interest'}"
             + (f" (absent: {', '.join(host['missing'])})" if host["missing"] else ""),
             "- runtimes: " + ", ".join(f"{k} {v}" for k, v in report["runtimes"].items()),
             f"- served path: a private TorchServe, the declaration's workers and batching "
             f"({report['batching']}), {run.get('generator', '-')} at concurrency {run.get('concurrency', '-')} on "
             f"{run.get('workload', '-')}, {run.get('rounds', '-')} alternating rounds of {run.get('warmup_s', '-')} s "
             f"warm-up + {run.get('seconds', '-')} s",
             f"- agreement with fp32 ({run.get('reference') or 'no reference'}) on {run.get('probes', '-')} probes; "
             f"kept: {metric.replace('_', ' ')} >= {fmt_agreement(threshold, kind)} and no failed request"
             + (" (quick form)" if report.get("quick") else ""), "",
             "| variant | status | req/s (rounds) | x reference | p99 ms | "
             + " | ".join(kinds.kind(kind).answer.columns) + " | build s | note |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for e in report["variants"]:
        agree = " | ".join(kinds.kind(kind).answer.cells(e["agreement"]))
        speed = (f"{e['throughput']:.1f} ({', '.join(f'{r:.1f}' for r in e['rounds'])})"
                 if e.get("throughput") is not None else "-")
        build = "-" if e.get("build_s") is None else f"{e['build_s']:.1f}" + (" (cached)" if e.get("build_cached") else "")
        tags = [t for t, on in (("declared before", e.get("declared")), ("reference", e.get("reference"))) if on]
        note = "; ".join(tags + ([e["reason"].replace("|", "/")] if e.get("reason") else []))
        speedup = f"{e['speedup']:.2f}" if e.get("speedup") else "-"
        p99 = "-" if e.get("p99_ms") is None else f"{e['p99_ms']:.0f}"
        lines.append(f"| {e['format']} {e['precision']} | **{e['status']}** | {speed} | {speedup} | {p99} | {agree} "
                     f"| {build} | {note} |")
    lines += ["", f"**Winner:** {report['winner'] or 'none'}. {report['why']}", "",
              f"**Declaration:** {report['declaration']}", ""] + tuning_lines(report)
    return "\n".join(lines)


def tuning_lines(report: dict) -> List[str]:
    """The batching section: the winner's sweep (make tune's table of points) and the point chosen, or why none."""
    tuning = report.get("tuning")
    if not tuning:
        return [f"**Batching:** {report.get('tune', 'as declared')}", ""]
    lines = ["## Batching, tuned on the winner", ""]
    if tuning["status"] == SKIPPED:
        return lines + [f"Not tuned: {tuning['why']}. {report.get('tune', '')}".rstrip(), ""]
    grid, points = tuning.get("grid") or {}, tuning.get("points") or {}
    lines += [f"- archive: {os.path.basename(tuning.get('archive') or '-')} (the winner's, as built); layouts "
              f"(workers x threads) {', '.join(f'{w}x{t}' for w, t in grid.get('layouts', []))}, batch sizes "
              f"{grid.get('batch_sizes')}, maxBatchDelay {grid.get('delays')} ms",
              f"- per point: {points.get('warmup_s', '-')} s warm-up + {points.get('repeats', '-')} run(s) of "
              f"{points.get('seconds', '-')} s at concurrency {tuning['concurrency']} on {tuning.get('workload', '-')}; "
              f"chosen: the fastest whose worst run's p99 <= {tuning['p99_ms']:g} ms with no failed request", ""]
    if tuning.get("rows"):
        lines += frontier_table(tuning["rows"]) + [""]
    verdict = {TUNED: "**Chosen:**", NO_POINT: "**No point chosen:**"}.get(tuning["status"], "**Tuning failed:**")
    return lines + [f"{verdict} {tuning['why']}", ""]


def plot(report: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kind = report["kind"]
    metric, _ = bar(kind)
    rows = report["variants"]
    colours = {CHOSEN: "tab:green", KEPT: "tab:blue", BELOW_BAR: "tab:red"}
    fig, ax = plt.subplots(figsize=(7.5, 0.55 * len(rows) + 1.6))
    labels = [f"{e['format']} {e['precision']}" for e in rows]
    values = [e.get("throughput") or 0.0 for e in rows]
    ax.barh(range(len(rows)), values, color=[colours.get(e["status"], "lightgrey") for e in rows])
    top = max(values + [1.0])
    for i, e in enumerate(rows):
        value = e["agreement"].get(metric)
        text = (f"{e['status']}" + (f", {metric.replace('_', ' ')} {fmt_agreement(value, kind)}"
                                    if value is not None else ""))
        ax.text((e.get("throughput") or 0.0) + top * 0.01, i, text, va="center", fontsize=7)
    ax.set_yticks(range(len(rows)), labels)
    ax.invert_yaxis()
    ax.set_xlim(0, top * 1.9)
    run = report.get("run") or {}
    ax.set_xlabel(f"served req/s at concurrency {run.get('concurrency', '-')} ({run.get('workload', '-')})")
    host = report["host"]
    ax.set_title(f"make optimize: {report['model']} on {host['model']} ({host['cores']} cores)\n"
                 f"flags: {', '.join(host['flags'])}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _clean(value):
    """JSON without NaN (null instead)."""
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def write_report(report: dict, out: str) -> None:
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "results.json"), "w", encoding="utf-8") as f:
        json.dump(_clean(report), f, indent=1)
    with open(os.path.join(out, "report.md"), "w", encoding="utf-8") as f:
        f.write(markdown(report))
    plot(report, os.path.join(out, "speed.png"))
