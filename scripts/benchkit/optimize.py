"""make optimize MODEL=<name>: choose the model's serving variant on the host it runs on, by measurement.

1. The host: its CPU model and the flags that decide which kernels run (/proc/cpuinfo: avx2, avx512f,
   avx512_vnni, avx512_bf16, amx_*).
2. The candidates: the declaration's formats x precisions (benchkit.variants.plan: torchscript, onnx, aoti in
   fp32, and the int8 form tskit.precision makes for the kind: static int8 through ONNX Runtime for image
   classifiers, dynamic int8 Linear layers in TorchScript for text models). bf16 is listed too: on a CPU with
   avx512_bf16 or AMX it is reported "not available here" while the package has no bf16 build (tskit.precision
   makes fp32 and int8 only, and a declaration's precision is one of those), never a failure.
   Each is built with tskit into build/optimize/ (reused while unchanged), its build time recorded.
3. Served: one private TorchServe (ts_server.private_server), every built variant registered with the
   declaration's workers and batching; a variant that does not build, does not register or answers wrong even
   alone is reported with its reason (e.g. an instruction set this CPU lacks), never a failure of the run.
4. Agreement with fp32 (the fp32 TorchScript variant, else another fp32 one) from the served answers
   (benchkit.agreement): top-1 agreement and the largest probability change on real photos with crops, flips and
   rescales (image classifiers), on the 48 labelled headlines (text classifiers, with accuracy), smallest cosine
   (embeddings).
5. Speed through the served path: wrk (the Python load generator when wrk is missing) at the model's tuned
   concurrency (16) on the kind's typical request, a warm-up and a timed point per variant per round, rounds in
   alternating order (3; quick 2) so that the drift hits every variant alike; every 10th answer checked.
6. The choice (choose()): only variants with no failed request and top-1 agreement >= 99% (embeddings: smallest
   cosine >= 0.999) are kept; the fastest kept one (mean of its rounds) wins. A kept variant within `tie_margin`
   (3%) of the fastest, or whose best round reaches the fastest's worst round (the drift is larger than the
   difference), ties with it; a tie is settled by: the variant the declaration serves now (no change for noise),
   then fp32, then the higher agreement, then torchscript < onnx < aoti.
7. The winner's format and precision are written into models/<name>/model.yaml by editing those two lines
   (comments and every other key kept; the changed line's own comment is replaced by the measurement), unless
   --dry-run. Batching stays as declared (`make tune` decides it; its last result is quoted in the report).
8. The report: results/optimize/<name>/{report.md, results.json, speed.png}, the markdown printed.
"""

import argparse
import dataclasses
import datetime
import json
import math
import os
import platform
import re
import shutil
import sys
import tempfile
import time
from typing import Dict, List, Optional, Tuple

from benchkit import agreement, variants, workloads
from tskit.declaration import REPO, Declaration, declared
from tskit.declaration import load as load_declaration

TOP1_BAR = 0.99
COSINE_BAR = 0.999
TIE_MARGIN = 0.03
KINDS = ("image-classifier", "text-classifier", "text-embedding")
# The CPU flags that decide which kernels the runtimes use (int8: VNNI; bf16: AVX512_BF16 or AMX)
FLAGS_OF_INTEREST = ("avx2", "fma", "avx_vnni", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
                     "amx_tile", "amx_int8", "amx_bf16")
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
FORMAT_RANK = {fmt: i for i, fmt in enumerate(variants.FORMAT_ORDER)}
QUICK_FORMATS = ("torchscript", "onnx")

# statuses of a candidate
CHOSEN, KEPT, BELOW_BAR = "chosen", "kept", "below agreement bar"
NOT_AVAILABLE, BUILD_FAILED, CANNOT_SERVE, LOAD_FAILED, NO_REFERENCE = (
    "not available here", "build failed", "cannot serve here", "failed under load", "no fp32 reference")
UNMEASURED = (NOT_AVAILABLE, BUILD_FAILED, CANNOT_SERVE)


# ---- the host ------------------------------------------------------------------------------------------------
def host_cpu(cpuinfo: str = "/proc/cpuinfo") -> dict:
    """CPU model, logical cores and the flags of interest present (all flags where /proc/cpuinfo exists)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and value.strip():
                    model = value.strip()
                elif key in ("flags", "Features"):
                    flags.update(value.split())
    except OSError:
        pass
    return {"model": model, "cores": os.cpu_count(), "flags": [f for f in FLAGS_OF_INTEREST if f in flags],
            "missing": [f for f in FLAGS_OF_INTEREST if f not in flags], "all_flags": len(flags),
            "bf16": any(f in flags for f in BF16_FLAGS), "machine": platform.machine()}


def runtime_versions() -> Dict[str, str]:
    out = {"python": platform.python_version()}
    for module in ("torch", "onnxruntime"):
        try:
            out[module] = __import__(module).__version__
        except Exception:  # a runtime that is not installed: its variants fail to build, and say so
            out[module] = "not installed"
    return out


# ---- the candidates ------------------------------------------------------------------------------------------
def candidates(decl: Declaration, quick: bool = False, formats: Optional[List[str]] = None,
               all_declared: Optional[List[Declaration]] = None) -> List[variants.Variant]:
    """benchkit.variants' plan for the model (fp32 TorchScript first), with the int8 form of an embedding
    (tskit.precision makes it; the bench's plan leaves it out, as it judges classifiers' int8 only)."""
    formats = list(formats or (QUICK_FORMATS if quick else variants.FORMAT_ORDER))
    plan = variants.plan(decl, formats=formats, int8=True,
                         all_declared=all_declared if all_declared is not None else declared())
    if decl.kind == "text-embedding" and not any(v.precision == "int8" for v in plan):
        from tskit.precision import INT8_FORMAT

        fmt = INT8_FORMAT[decl.kind]
        name = f"{decl.name}_{fmt}_int8"
        plan.append(variants.Variant(name, decl.name, dataclasses.replace(
            decl, name=name, format=fmt, precision="int8", serve=False)))
    return plan


def bf16_entry(decl: Declaration, host: dict) -> dict:
    """bf16 is reported, never built: the package has no bf16 precision to build or serve."""
    if host["bf16"]:
        flags = ", ".join(f for f in host["flags"] if f in BF16_FLAGS + ("amx_tile",))
        reason = (f"the CPU has {flags}, but this package has no bf16 build: tskit.precision makes fp32 and int8 "
                  "only, and a declaration's precision is one of those")
    else:
        reason = "this CPU has neither avx512_bf16 nor AMX (bf16 would be emulated, slower than fp32)"
    return entry(f"{decl.name}_bf16", "any", "bf16", status=NOT_AVAILABLE, reason=reason)


def entry(name: str, fmt: str, precision: str, **values) -> dict:
    out = {"variant": name, "format": fmt, "precision": precision, "status": "", "reason": "", "throughput": None,
           "rounds": [], "p50_ms": None, "p99_ms": None, "errors": 0, "checked": 0, "agreement": {},
           "build_s": None, "build_cached": False, "max_abs_diff": None, "speedup": None, "declared": False,
           "reference": False}
    out.update(values)
    return out


# ---- the choice (no server: tests/unit/test_optimize_choice.py) ----------------------------------------------
def bar(kind: str) -> Tuple[str, float]:
    """The agreement measure of the kind and the least value kept."""
    return ("min_cosine", COSINE_BAR) if kind == "text-embedding" else ("top1_agreement", TOP1_BAR)


def classify(e: dict, kind: str, top1_bar: float = TOP1_BAR, cosine_bar: float = COSINE_BAR) -> dict:
    """The status of a measured candidate (one with a status already, e.g. built or served it was not, keeps it)."""
    if e["status"] in UNMEASURED or e["status"] == NO_REFERENCE:
        return e
    metric, _ = bar(kind)
    threshold = cosine_bar if kind == "text-embedding" else top1_bar
    value = e["agreement"].get(metric)
    if not e.get("throughput") or e.get("errors"):
        e["status"] = LOAD_FAILED
        e["reason"] = e["reason"] or f"{e.get('errors', 0)} failed request(s) under load"
    elif value is None:
        e["status"], e["reason"] = NO_REFERENCE, e["reason"] or "no fp32 answers to compare with"
    elif not agreement.keeps_agreement(e["agreement"], kind, threshold):
        e["status"] = BELOW_BAR
        failed = e["agreement"].get("failed")
        e["reason"] = (f"{failed} agreement probe(s) failed" if failed else
                       f"{metric.replace('_', ' ')} {_fmt_agreement(value, kind)} < {_fmt_agreement(threshold, kind)}")
    else:
        e["status"] = KEPT
    return e


def _fmt_agreement(value: Optional[float], kind: str) -> str:
    if value is None:
        return "-"
    return f"{value:.5f}" if kind == "text-embedding" else f"{value:.1%}"


def tie(e: dict, fastest: dict, tie_margin: float = TIE_MARGIN) -> bool:
    """`e` cannot be told from the fastest: its mean within `tie_margin`, or its best round at or above the
    fastest's worst round (the machine's drift between rounds is larger than the difference)."""
    if e is fastest or e["throughput"] >= fastest["throughput"] * (1 - tie_margin):
        return True
    return bool(e.get("rounds") and fastest.get("rounds")) and max(e["rounds"]) >= min(fastest["rounds"])


def choose(entries: List[dict], kind: str, declared_now: Tuple[str, str], tie_margin: float = TIE_MARGIN,
           top1_bar: float = TOP1_BAR, cosine_bar: float = COSINE_BAR) -> Tuple[Optional[dict], str]:
    """The winner (or None) and why, in words. Classifies every entry; marks the winner `chosen`."""
    for e in entries:
        classify(e, kind, top1_bar, cosine_bar)
        e["declared"] = (e["format"], e["precision"]) == tuple(declared_now)
    kept = [e for e in entries if e["status"] == KEPT]
    metric, _ = bar(kind)
    threshold = cosine_bar if kind == "text-embedding" else top1_bar
    if not kept:
        return None, (f"no variant kept {metric.replace('_', ' ')} >= {_fmt_agreement(threshold, kind)} with no "
                      "failed request: the declaration is left as it is")
    fastest = max(kept, key=lambda e: e["throughput"])
    tied = [e for e in kept if tie(e, fastest, tie_margin)]
    winner = min(tied, key=lambda e: (not e["declared"], e["precision"] != "fp32",
                                      -(e["agreement"].get(metric) or 0.0), FORMAT_RANK.get(e["format"], 99),
                                      -e["throughput"]))
    winner["status"] = CHOSEN
    why = [f"{winner['format']} {winner['precision']}: {winner['throughput']:.1f} req/s"
           + (f" ({winner['speedup']:.2f}x the fp32 reference)" if winner.get("speedup") else "")
           + f", {metric.replace('_', ' ')} {_fmt_agreement(winner['agreement'].get(metric), kind)}"]
    if len(tied) > 1:
        others = ", ".join(f"{e['format']} {e['precision']} {e['throughput']:.1f}" for e in tied if e is not winner)
        rule = ("the variant declared now" if winner["declared"] else
                "fp32 before int8" if any(e["precision"] != "fp32" for e in tied) and winner["precision"] == "fp32"
                else "the higher agreement, then torchscript < onnx < aoti")
        why.append(f"a tie with {others} req/s (within {tie_margin:.0%} of the fastest, or rounds overlapping it), "
                   f"settled by {rule}")
    else:
        why.append(f"the fastest of the {len(kept)} variant(s) that keep the agreement bar")
    faster = [e for e in entries if e["status"] not in (KEPT, CHOSEN) and e.get("throughput")
              and e["throughput"] > winner["throughput"]]
    if faster:
        why.append("faster but not kept: " + "; ".join(f"{e['format']} {e['precision']} {e['throughput']:.1f} req/s "
                                                        f"({e['status']}: {e['reason']})" for e in faster))
    return winner, "; ".join(why)


# ---- the declaration -----------------------------------------------------------------------------------------
def edit_declaration(text: str, values: Dict[str, str], note: str) -> Tuple[str, List[str]]:
    """The declaration's text with each top-level `key: value` line of `values` set: a changed line gets `note`
    as its comment (its old comment, and the indented comment lines continuing it, described the old value);
    unchanged lines are left byte for byte; a missing key is added after `format:` (or at the end)."""
    lines = text.splitlines(keepends=True)
    changed = []
    for key, value in values.items():
        pattern = re.compile(rf"^{re.escape(key)}:(\s*)([^\s#]+)?(\s*)(#.*)?$")
        index = next((i for i, line in enumerate(lines) if pattern.match(line.rstrip("\r\n"))), None)
        if index is not None:
            match = pattern.match(lines[index].rstrip("\r\n"))
            if (match.group(2) or "").strip("'\"") == value:
                continue
            ending = lines[index][len(lines[index].rstrip("\r\n")):] or "\n"
            head = f"{key}: {value}"
            lines[index] = f"{head}{' ' * max(1, 28 - len(head))}# {note}{ending}"
            # the comment lines that continued the old one (indented, right below it) go with it
            while index + 1 < len(lines) and re.match(r"^\s+#", lines[index + 1]):
                del lines[index + 1]
        else:
            after = next((i for i, line in enumerate(lines) if line.startswith("format:")), len(lines) - 1)
            while after + 1 < len(lines) and re.match(r"^\s+#", lines[after + 1]):
                after += 1
            if lines and not lines[-1].endswith("\n"):
                lines[-1] += "\n"
            lines.insert(after + 1, f"{key}: {value}{' ' * max(1, 28 - len(key) - len(value) - 2)}# {note}\n")
        changed.append(key)
    return "".join(lines), changed


def write_choice(name: str, fmt: str, precision: str, note: str, models_dir: Optional[str] = None) -> List[str]:
    """Set format/precision in models/<name>/model.yaml (textually); the result must load as a declaration, else
    the file is restored and the error raised. Returns the keys changed."""
    from tskit.declaration import MODELS_DIR

    models_dir = models_dir or MODELS_DIR
    path = os.path.join(models_dir, name, "model.yaml")
    with open(path, encoding="utf-8") as f:
        before = f.read()
    after, changed = edit_declaration(before, {"format": fmt, "precision": precision}, note)
    if not changed:
        return []
    with open(path, "w", encoding="utf-8") as f:
        f.write(after)
    try:
        loaded = load_declaration(name, models_dir)
        assert (loaded.format, loaded.precision) == (fmt, precision), (loaded.format, loaded.precision)
    except Exception:
        with open(path, "w", encoding="utf-8") as f:
            f.write(before)
        raise
    return changed


# ---- measuring -----------------------------------------------------------------------------------------------
def load(url: str, token: Optional[str], workload: dict, concurrency: int, seconds: float, check) -> dict:
    """One load point (benchkit.workloads: wrk, else the Python generator); a generator's failure is a failed
    point, and a point with no answer at all too."""
    try:
        out = workloads.load_url(url, token, workload, concurrency, seconds, check=check).as_dict()
        if not out["requests"]:
            out.update(errors=max(1, out["errors"]), first_error=out["first_error"] or "no request answered")
        return out
    except Exception as err:
        return {"errors": 1, "throughput": 0.0, "requests": 0, "p99_ms": float("nan"), "p50_ms": float("nan"),
                "checked": 0, "first_error": f"{type(err).__name__}: {err}"[:300]}


def worker_error(model_log: str, name: str) -> str:
    """The last error a worker of `name` logged (why it died loading, e.g. an instruction this CPU lacks)."""
    pattern = re.compile(r"([A-Za-z_.]*(?:Error|Exception)|Illegal instruction|Segmentation fault)\b:?\s*(.*)")
    found = ""
    try:
        with open(model_log, encoding="utf-8", errors="replace") as f:
            for line in f:
                if f"-{name}_" in line and "MODEL_LOG" in line:
                    message = line.split("MODEL_LOG -", 1)[-1].strip()
                    if pattern.match(message):
                        found = message
    except OSError:
        pass
    return found[:240]


def measure(decl: Declaration, plan: List[variants.Variant], entries: Dict[str, dict], args, log) -> dict:
    """Serve every built variant on one private TorchServe: agreement with the fp32 reference, then the load
    rounds. Fills `entries`; returns what the run used (load generator, input, concurrency)."""
    from benchkit.checks import answer_check
    from load_generators import wrk_available
    from ts_server import private_server, running

    kind = decl.kind
    built = [v for v in plan if v.archive]
    # a short working dir: the workers' Unix sockets live under it (at most 107 bytes a path)
    workdir = tempfile.mkdtemp(prefix="optimize-")
    store = os.path.join(workdir, "model_store")
    os.makedirs(store)
    workload_name = workloads.MAIN_WORKLOAD[kind]
    workload = workloads.make_inputs(os.path.join(workdir, "inputs"))[workload_name]
    probes = agreement.probes(kind, args.agreement_images, {f"text_{k}": t for k, t in workloads.TEXTS.items()})
    server = private_server(workdir, model_store=store, load_models="", models="{}")
    checks, answers = {}, {}
    try:
        with running(server, [], timeout=180):
            client = server.client(timeout=900)
            headers = server.auth_headers("inference")
            token = server.keys()["inference"]
            for variant in built:
                e = entries[variant.name]
                shutil.copy(variant.archive, os.path.join(store, f"{variant.name}.mar"))
                url = f"{server.inference_url}/predictions/{variant.name}"
                try:
                    ts = variant.declaration.torchserve
                    client.register(f"{variant.name}.mar", model_name=variant.name,
                                    initial_workers=ts.get("minWorkers", 1), batch_size=ts.get("batchSize", 1),
                                    max_batch_delay=ts.get("maxBatchDelay", 100),
                                    response_timeout=ts.get("responseTimeout", 120))
                    checks[variant.name] = answer_check(url, headers, workload_name, workload, kind)
                    answers[variant.name] = agreement.collect(url, headers, probes)
                    log(f"{variant.label}: serving, {len(probes)} agreement probes answered")
                except Exception as err:
                    cause = worker_error(server.model_log, variant.name)
                    e["status"] = CANNOT_SERVE
                    e["reason"] = (f"{type(err).__name__}: {err}"[:200] + (f"; the worker: {cause}" if cause else ""))
                    log(f"{variant.label}: {e['status']}: {e['reason']}")
                    try:  # registered but answering wrong: out of the way of the others' load points
                        client.unregister_and_wait(variant.name)
                    except Exception:
                        pass
            serving = [v for v in built if v.name in checks]
            reference = next((v for v in serving if v.is_reference), None) or \
                next((v for v in serving if v.precision == "fp32"), None)
            for variant in serving:
                e = entries[variant.name]
                e["reference"] = variant is reference
                if reference is not None:
                    e["agreement"] = agreement.compare(kind, probes, answers[reference.name], answers[variant.name])
            points: Dict[str, List[dict]] = {v.name: [] for v in serving}
            for round_index in range(args.rounds):
                order = serving if round_index % 2 == 0 else serving[::-1]
                for variant in order:
                    url = f"{server.inference_url}/predictions/{variant.name}"
                    warm = load(url, token, workload, args.concurrency, args.warmup, checks[variant.name]) \
                        if args.warmup else {}
                    point = load(url, token, workload, args.concurrency, args.seconds, checks[variant.name])
                    point["warmup_errors"] = warm.get("errors", 0)
                    points[variant.name].append(point)
                    log(f"round {round_index + 1}: {variant.label}: {point['throughput']:.1f} req/s, "
                        f"p99 {point.get('p99_ms', float('nan')):.0f} ms, {point['errors']} errors")
            for name, mine in points.items():
                e = entries[name]
                e["rounds"] = [round(p["throughput"], 1) for p in mine]
                e["throughput"] = sum(p["throughput"] for p in mine) / len(mine) if mine else None
                e["p50_ms"] = _median([p.get("p50_ms") for p in mine])
                e["p99_ms"] = max((p.get("p99_ms") for p in mine if _number(p.get("p99_ms"))), default=None)
                e["errors"] = sum(p.get("errors", 0) + p.get("warmup_errors", 0) for p in mine)
                e["checked"] = sum(p.get("checked", 0) for p in mine)
                first = next((p.get("first_error") for p in mine if p.get("first_error")), "")
                if e["errors"] and first:
                    e["reason"] = f"{e['errors']} failed request(s): {first}"[:300]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return {"workload": workload_name, "concurrency": args.concurrency, "seconds": args.seconds,
            "warmup_s": args.warmup, "rounds": args.rounds, "generator": "wrk" if wrk_available() else "python",
            "probes": len(probes), "reference": reference.name if reference is not None else None}


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not math.isnan(value)


def _median(values) -> Optional[float]:
    values = sorted(v for v in values if _number(v))
    return values[len(values) // 2] if values else None


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
            "(not applied here: batching stays as declared)")


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
             f"kept: {metric.replace('_', ' ')} >= {_fmt_agreement(threshold, kind)} and no failed request"
             + (" (quick form)" if report.get("quick") else ""), "",
             "| variant | status | req/s (rounds) | x reference | p99 ms | "
             + ("min cosine | mean cosine" if kind == "text-embedding" else "top-1 agreement | max prob change")
             + " | build s | note |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for e in report["variants"]:
        a = e["agreement"]
        if kind == "text-embedding":
            agree = f"{_fmt_agreement(a.get('min_cosine'), kind)} | {_fmt_agreement(a.get('mean_cosine'), kind)}"
        else:
            agree = (f"{_fmt_agreement(a.get('top1_agreement'), kind)}"
                     + (f" (accuracy {a['accuracy']:.1%})" if a.get("accuracy") is not None else "")
                     + f" | {a['max_prob_change']:.3f}" if a.get("max_prob_change") is not None
                     else f"{_fmt_agreement(a.get('top1_agreement'), kind)} | -")
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
              f"**Declaration:** {report['declaration']}", "", f"**Batching:** {report['tune']}", ""]
    return "\n".join(lines)


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
        text = (f"{e['status']}" + (f", {metric.replace('_', ' ')} {_fmt_agreement(value, kind)}"
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


# ---- the command ---------------------------------------------------------------------------------------------
def optimize(args, log) -> dict:
    decl = load_declaration(args.model)
    if decl.kind not in KINDS:
        raise SystemExit(f"make optimize: a {decl.kind} has no agreement measure here "
                         f"(kinds: {', '.join(KINDS)}); nothing is changed")
    host = host_cpu()
    log(f"host: {host['model']}, {host['cores']} cores, flags {', '.join(host['flags'])}")
    plan = candidates(decl, args.quick, args.formats)
    entries = {v.name: entry(v.name, v.format, v.precision) for v in plan}
    for variant in plan:
        started = time.monotonic()
        variants.build(variant, args.build_root, timeout_s=args.build_timeout, reuse=not args.rebuild, log=log)
        e = entries[variant.name]
        build = variant.build or {}
        e["build_s"] = build.get("total_s", build.get("build_s"))
        e["build_cached"] = variant.cached
        e["max_abs_diff"] = build.get("max_abs_diff")
        if variant.error:
            e["status"], e["reason"] = BUILD_FAILED, variant.error
        log(f"{variant.label}: " + (variant.error or f"{'cached' if variant.cached else 'built'} "
                                                     f"({time.monotonic() - started:.0f} s here, "
                                                     f"build {e['build_s']} s)"))
    run = measure(decl, plan, entries, args, log) if any(v.archive for v in plan) else {}
    rows = [entries[v.name] for v in plan] + [bf16_entry(decl, host)]
    reference = next((e for e in rows if e.get("reference") and e.get("throughput")), None)
    for e in rows:
        if reference and e.get("throughput"):
            e["speedup"] = e["throughput"] / reference["throughput"]
    winner, why = choose(rows, decl.kind, (decl.format, decl.precision), args.tie_margin)
    report = {"model": decl.name, "kind": decl.kind, "when": datetime.datetime.now().isoformat(timespec="seconds"),
              "host": host, "runtimes": runtime_versions(), "quick": args.quick, "dry_run": args.dry_run,
              "batching": ", ".join(f"{k} {decl.torchserve[k]}" for k in ("minWorkers", "batchSize", "maxBatchDelay")
                                    if k in decl.torchserve) + f", intraOpThreads {decl.handler.get('intraOpThreads', '-')}",
              "run": run, "variants": rows, "declared_before": f"{decl.format} {decl.precision}",
              "winner": f"{winner['format']} {winner['precision']}" if winner else None,
              "winner_variant": winner["variant"] if winner else None, "why": why, "tune": tune_note(decl.name)}
    if winner is None:
        report["declaration"] = f"unchanged ({decl.format} {decl.precision})"
    elif (winner["format"], winner["precision"]) == (decl.format, decl.precision):
        report["declaration"] = f"unchanged: {decl.format} {decl.precision} is already the winner"
    elif args.dry_run:
        report["declaration"] = (f"--dry-run: would write format {winner['format']}, precision {winner['precision']} "
                                 f"into {os.path.relpath(decl.path, REPO)} (declared now: {decl.format} {decl.precision})")
    else:
        metric, _ = bar(decl.kind)
        note = (f"make optimize {report['when'][:10]} on {host['model']} ({', '.join(host['flags'][-3:])}): "
                f"{winner['throughput']:.0f} req/s"
                + (f", {winner['speedup']:.2f}x the fp32 reference" if winner.get("speedup") else "")
                + f", {metric.replace('_', ' ')} {_fmt_agreement(winner['agreement'].get(metric), decl.kind)}; "
                "results/optimize/")
        changed = write_choice(decl.name, winner["format"], winner["precision"], note,
                               os.path.dirname(decl.folder))
        report["declaration"] = (f"written: {', '.join(changed)} in {os.path.relpath(decl.path, REPO)} "
                                 f"({decl.format} {decl.precision} -> {winner['format']} {winner['precision']}); "
                                 "`make archives` rebuilds its archive")
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a declared model (models/<name>/model.yaml)")
    parser.add_argument("--quick", action="store_true",
                        help="small form: torchscript + onnx fp32 and the int8 variant, 3 s points, 30 photos")
    parser.add_argument("--dry-run", action="store_true", help="report the winner; leave models/ unchanged")
    parser.add_argument("--concurrency", type=int, default=16, help="connections (the models' tuned concurrency)")
    parser.add_argument("--seconds", type=float, help="timed seconds per point (default 8; quick 3)")
    parser.add_argument("--warmup", type=float, help="warm-up seconds per point (default 2; quick 1)")
    parser.add_argument("--rounds", type=int, help="rounds over the variants, in alternating order (default 3; quick 2)")
    parser.add_argument("--agreement-images", type=int, help="photos with crops/flips (default 100; quick 30)")
    parser.add_argument("--formats", nargs="+", choices=list(variants.FORMAT_ORDER), help="default: every format")
    parser.add_argument("--tie-margin", type=float, default=TIE_MARGIN,
                        help="kept variants this close to the fastest are a tie (the declared one, then fp32, wins)")
    parser.add_argument("--build-root", default=os.path.join(REPO, "build", "optimize"))
    parser.add_argument("--build-timeout", type=float, default=900)
    parser.add_argument("--rebuild", action="store_true", help="build every variant again")
    parser.add_argument("--out", help="default results/optimize/<model>")
    args = parser.parse_args(argv)
    names = sorted(d.name for d in declared())
    if args.model not in names:
        parser.error(f"--model {args.model}: not declared (declared: {', '.join(names)})")
    args.seconds = args.seconds or (3.0 if args.quick else 8.0)
    args.rounds = args.rounds or (2 if args.quick else 3)
    args.warmup = args.warmup if args.warmup is not None else (1.0 if args.quick else 2.0)
    args.agreement_images = args.agreement_images or (30 if args.quick else 100)
    out = args.out or os.path.join(REPO, "results", "optimize", args.model)

    def log(message: str) -> None:
        print(f"[optimize {args.model}] {message}", file=sys.stderr, flush=True)

    report = optimize(args, log)
    write_report(report, out)
    print(markdown(report))
    print(f"written: {out}/report.md, results.json, speed.png")
    return 0
