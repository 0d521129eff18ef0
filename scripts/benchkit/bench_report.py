"""make bench's tables, ratio lines and plot."""

from typing import List, Optional


from benchkit.plan import PIPELINE_SUFFIX, STOCK_PREFIX, stock_b_layout_name
from tskit.kinds import KINDS




# ---- report ----------------------------------------------------------------------------------------
def fmt(value: Optional[float], digits: int = 1) -> str:
    return "" if value is None or value != value else f"{value:.{digits}f}"


def table(rows: List[dict]) -> str:
    lines = ["| setup | model | input | conc | req/s | p50 ms | p90 ms | p99 ms | errors (checked) | server CPU (cores) | client CPU (cores) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        where = r["workload"] if r.get("input", r["workload"]) == r["workload"] else f"{r['input']} (next to {r['workload']})"
        how = r.get("concurrency") or f"batch {r.get('batch')}, {r.get('layout')}"
        if r.get("round"):
            how = f"{how} (round {r['round']})"
        errors = "" if "errors" not in r else f"{r['errors']}" + (f" ({r['checked']})" if r.get("checked") is not None else "")
        lines.append(f"| {r['setup']} | {r['model']} | {where} | {how} "
                     f"| {fmt(r['throughput'])} | {fmt(r.get('p50_ms'))} | {fmt(r.get('p90_ms'))} | {fmt(r.get('p99_ms'))} "
                     f"| {errors} | {fmt(r.get('server_cores'), 2)} | {fmt(r.get('client_cores'), 2)} |")
    return "\n".join(lines)


def formats_table(summaries: List[dict]) -> str:
    lines = ["| model | variant | format | precision | build s (export / total) | req/s | p99 ms | vs torchscript "
             "| top-1 agreement | largest prob change | min cosine | accuracy | errors | serve |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for s in summaries:
        for e in s["variants"]:
            a = e["agreement"]
            build = "" if e["build_s"] is None else f"{e['build_s']:.1f} / {e['build_total_s']:.0f}" + (" (reused)" if e["cached"] else "")
            accuracy = f"{a['right']}/{a['labelled']}" if "labelled" in a else ""
            speedup = "" if e.get("speedup") is None else f"{e['speedup']:.2f}x"
            agree = "" if "top1_agreement" not in a else f"{a['top1_agreement']:.1%} of {a['probes'] - a['failed']}"
            lines.append(
                f"| {s['model']} | {e['variant']} | {e['format']} | {e['precision']} | {build} | {fmt(e.get('throughput'))} "
                f"| {fmt(e.get('p99_ms'))} | {speedup} | {agree} "
                f"| {fmt(a.get('max_prob_change'), 3)} | {fmt(a.get('min_cosine'), 5)} | {accuracy} "
                f"| {e.get('errors', '') if not e['error'] else e['error'][:120]} | {'**yes**' if e['chosen'] else ''} |")
    return "\n".join(lines)


def ratios(rows: List[dict], top_concurrency: int, summaries: Optional[List[dict]] = None) -> List[str]:
    def find(setup, model, workload, concurrency=None):
        return next((r for r in rows if r["setup"] == setup and r["model"] == model and r["workload"] == workload
                     and (concurrency is None or r.get("concurrency") == concurrency)), None)

    out = []
    for model in sorted({r["model"] for r in rows if r["setup"] == "B"}):
        for workload in sorted({r["workload"] for r in rows if r["setup"] == "B" and r["model"] == model}):
            b = find("B", model, workload, top_concurrency)
            c = find("C", model, workload)
            a = find("A", STOCK_PREFIX + model, workload, top_concurrency)
            a2 = find("A2", stock_b_layout_name(model), workload, top_concurrency)
            p = find("P", model + PIPELINE_SUFFIX, workload, top_concurrency)
            vision = workload.startswith("jpeg")
            label = f"{model} {workload} c={top_concurrency}"
            if a and b and a["throughput"] > 0:
                out.append(f"{label}: B/A throughput {b['throughput'] / a['throughput']:.2f}x "
                           f"(target >= 3), p99 B {b['p99_ms']:.0f} ms vs A {a['p99_ms']:.0f} ms (target: no worse)")
            if a2 and b and a2["throughput"] > 0:
                out.append(f"{label}: B/A2 (stock in B's worker layout) throughput "
                           f"{b['throughput'] / a2['throughput']:.2f}x, p99 B {b['p99_ms']:.0f} ms vs A2 "
                           f"{a2['p99_ms']:.0f} ms")
            if b and c and c["throughput"] > 0:
                out.append(f"{label}: B/C {b['throughput'] / c['throughput']:.0%} (target >= {75 if vision else 70}%)")
            if b and c and p and p["throughput"] > 0:
                # per request, (B) pays the pipeline's CPU and the model's: at best 1 / (1/P + 1/C)
                cap = 1 / (1 / p["throughput"] + 1 / c["throughput"])
                out.append(f"{label}: without the model (P) {p['throughput']:.0f} req/s, so "
                           f"(B) can reach about 1/(1/P+1/C) = {cap:.0f} req/s = {cap / c['throughput']:.0%} of (C) here; "
                           f"(B) is at {b['throughput'] / cap:.0%} of that estimate")
    for s in summaries or []:
        ref = next((e for e in s["variants"] if e["format"] == "torchscript" and e["precision"] == "fp32"), None)
        chosen = next((e for e in s["variants"] if e["chosen"]), None)
        if not chosen:
            out.append(f"{s['model']} formats: no variant kept agreement >= 99% with fp32 and answered without errors")
            continue
        line = (f"{s['model']} formats ({chosen['workload']}, c={chosen['concurrency']}): serve {chosen['variant']} "
                f"({chosen['format']} {chosen['precision']}): {chosen['throughput']:.1f} req/s, "
                f"{chosen['speedup']:.2f}x the TorchScript fp32 archive ({ref['throughput']:.1f} req/s), p99 "
                f"{chosen['p99_ms']:.0f} vs {ref['p99_ms']:.0f} ms")
        if KINDS[s["kind"]].formats_target:  # the target set for the kind's formats
            line += f" (target >= {KINDS[s['kind']].formats_target}x)"
        out.append(line)
        a = find("A", STOCK_PREFIX + s["model"], chosen["workload"], top_concurrency)
        if a and a["throughput"] > 0:
            out.append(f"{s['model']}: chosen variant / A (stock) {chosen['throughput'] / a['throughput']:.2f}x")
        j = s.get("J") or {}  # (J) is of the served variant: against its own (F) rounds
        j_entry = next((e for e in s["variants"] if e["variant"] == j.get("model") and e.get("throughput")), None)
        if j.get("throughput") and j_entry:
            out.append(f"{s['model']}: {j_entry['variant']} served (F) / whole job in process (J, {j.get('layout')}, "
                       f"{j['throughput']:.1f}/s) = {j_entry['throughput'] / j['throughput']:.0%}")
        f_json, peer = s.get("F_json"), s.get("L")
        if f_json and peer and peer.get("throughput"):
            out.append(f"{s['model']}: JSON bodies, TorchServe {f_json['throughput']:.1f} req/s (p99 "
                       f"{fmt(f_json.get('p99_ms'), 0)} ms) vs LitServe {peer['throughput']:.1f} req/s (p99 "
                       f"{fmt(peer.get('p99_ms'), 0)} ms): {f_json['throughput'] / peer['throughput']:.2f}x")
    return out


def plot(rows: List[dict], path: str, summaries: Optional[List[dict]] = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({(r["model"], r["workload"]) for r in rows if r["setup"] in ("A", "A2", "B")})
    workloads = sorted({w for _, w in groups})
    panels = len(workloads) + (1 if summaries else 0)
    fig, axes = plt.subplots(1, max(1, panels), figsize=(4.2 * max(1, panels), 3.8), squeeze=False)
    for ax, workload in zip(axes[0], workloads):
        for model, w in groups:
            if w != workload:
                continue
            points = sorted((r["concurrency"], r["throughput"]) for r in rows
                            if r["model"] == model and r["workload"] == w and r["setup"] in ("A", "A2", "B"))
            setup = next(r["setup"] for r in rows if r["model"] == model)
            ax.plot(*zip(*points), marker="o", label=f"{setup}: {model}")
        for r in rows:
            if r["setup"] == "C" and r["workload"] == workload:
                ax.axhline(r["throughput"], linestyle="--", color="gray")
                ax.text(1, r["throughput"], f"C: {r['model']}", fontsize=7, va="bottom")
        ax.set_title(workload, fontsize=9)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrency")
        ax.set_ylabel("req/s")
        ax.legend(fontsize=7)
    if summaries:
        ax = axes[0][-1]
        names, values = [], []
        for s in summaries:
            for e in s["variants"]:
                if e.get("throughput"):
                    names.append(e["variant"])
                    values.append(e["throughput"])
        ax.barh(names, values, color="tab:blue")
        ax.set_title("formats at the top concurrency (req/s)", fontsize=9)
        ax.tick_params(axis="y", labelsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
