"""make optimize MODEL=<name>: choose the model's serving variant on the host it runs on, by measurement.

1. The host: its CPU model and the flags that decide which kernels run (/proc/cpuinfo: avx2, avx512f,
   avx512_vnni, avx512_bf16, amx_*).
2. The candidates: the declaration's formats x precisions (benchkit.variants.plan: torchscript, onnx, aoti in
   fp32, and the int8 form tskit.precision makes for the kind: static int8 through ONNX Runtime for image
   classifiers, dynamic int8 Linear layers in TorchScript for text models), and on a CPU with avx512_bf16 or
   AMX the bf16 form (tskit.precision.to_bf16) in the kind's bf16 formats that the run measures (images:
   AOTInductor; text: TorchScript, and AOTInductor unless quick). Without those flags bf16 would be emulated,
   slower than fp32: it is reported "not available here" with that reason, not built, never a failure.
   Each is built with tskit into build/optimize/ (reused while unchanged), its build time recorded.
3. Served: one private TorchServe (tskit.server.private_server), every built variant registered with the
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
7. The winner's batching, tuned through the served path (benchkit.optimize_tune): its own archive (the one built
   under --build-root) swept by make tune's machinery (benchkit.tune.sweep: its own server, workers x intra-op
   threads x batchSize x maxBatchDelay) on a small grid (batch sizes 1, 4, 8 x the declared delay and one other x
   the layouts whose workers x threads <= cores), chosen with tune.choose at --p99-ms (500 ms) at --concurrency.
   --no-tune skips it; --quick skips it unless --tune is given (then: the declared layout, batch 1 and the
   declared one). No point meeting the target (or a failed sweep) leaves the batching as declared.
8. The winner's format and precision, and the tuned minWorkers/maxWorkers, batchSize, maxBatchDelay (torchserve:)
   and intraOpThreads (handler:), are written into models/<name>/model.yaml by editing those lines (comments and
   every other key kept; a changed line's own comment is replaced by the measurement), unless --dry-run.
9. The report: results/optimize/<name>/{report.md, results.json, speed.png}, the markdown printed, with the
   tuning's table of points and its choice.
"""

import argparse
import datetime
import math
import os
import re
import shutil
import sys
import tempfile
import time
from typing import Dict, List, Optional

from benchkit import agreement, optimize_tune, variants, workloads
from benchkit.optimize_choice import (BUILD_FAILED, CANNOT_SERVE, KINDS, TIE_MARGIN, bar, bf16_entry, candidates, choose,
                                      entry, fmt_agreement, host_cpu, runtime_versions, write_choice)
from benchkit.optimize_report import markdown, tune_note, write_report
from tskit import kinds
from tskit.declaration import REPO, Declaration, declared
from tskit.declaration import load as load_declaration


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
    from tskit.load import wrk_available
    from tskit.server import private_server, running

    kind = decl.kind
    built = [v for v in plan if v.archive]
    # a short working dir: the workers' Unix sockets live under it (at most 107 bytes a path)
    workdir = tempfile.mkdtemp(prefix="optimize-")
    os.makedirs(os.path.join(workdir, "model_store"))
    workload_name = kinds.kind(kind).bench_workload
    workload = workloads.make_inputs(os.path.join(workdir, "inputs"))[workload_name]
    probes = agreement.probes(kind, args.agreement_images, {f"text_{k}": t for k, t in workloads.TEXTS.items()})
    server = private_server(workdir, model_store=os.path.join(workdir, "model_store"), load_models="", models="{}")
    try:
        with running(server, [], timeout=180):
            checks, answers = serve_and_probe(server, built, entries, kind, (workload_name, workload), probes, log)
            serving = [v for v in built if v.name in checks]
            reference = next((v for v in serving if v.is_reference), None) or \
                next((v for v in serving if v.precision == "fp32"), None)
            for variant in serving:
                e = entries[variant.name]
                e["reference"] = variant is reference
                if reference is not None:
                    e["agreement"] = agreement.compare(kind, probes, answers[reference.name], answers[variant.name])
            points = load_rounds(server, serving, checks, workload, args, log)
            for name, mine in points.items():
                summarise(entries[name], mine)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return {"workload": workload_name, "concurrency": args.concurrency, "seconds": args.seconds,
            "warmup_s": args.warmup, "rounds": args.rounds, "generator": "wrk" if wrk_available() else "python",
            "probes": len(probes), "reference": reference.name if reference is not None else None}


def serve_and_probe(server, built: List[variants.Variant], entries: Dict[str, dict], kind: str, named_workload,
                    probes, log) -> tuple:
    """Register each built variant with its declaration's batching, check a lone answer, collect its answers
    to the agreement probes; a variant that cannot serve is reported (with its worker's error) and removed.
    Returns ({variant: its answer check}, {variant: its probe answers})."""
    from benchkit.checks import answer_check

    client = server.client(timeout=900)
    store = server.props["model_store"]
    checks, answers = {}, {}
    for variant in built:
        e = entries[variant.name]
        shutil.copy(variant.archive, os.path.join(store, f"{variant.name}.mar"))
        try:
            ts = variant.declaration.torchserve
            client.register(f"{variant.name}.mar", model_name=variant.name, initial_workers=ts.get("minWorkers", 1),
                            batch_size=ts.get("batchSize", 1), max_batch_delay=ts.get("maxBatchDelay", 100),
                            response_timeout=ts.get("responseTimeout", 120))
            checks[variant.name] = answer_check(client, variant.name, *named_workload, kind)
            answers[variant.name] = agreement.collect(client, variant.name, probes)
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
    return checks, answers


def load_rounds(server, serving: List[variants.Variant], checks: dict, workload: dict, args, log) -> Dict[str, List[dict]]:
    """args.rounds passes over the serving variants, every other one reversed: {variant: its load points}."""
    client = server.client()
    token = client.key("inference")
    points: Dict[str, List[dict]] = {v.name: [] for v in serving}
    for round_index in range(args.rounds):
        for variant in (serving if round_index % 2 == 0 else serving[::-1]):
            url = client.prediction_url(variant.name)
            warm = load(url, token, workload, args.concurrency, args.warmup, checks[variant.name]) if args.warmup else {}
            point = load(url, token, workload, args.concurrency, args.seconds, checks[variant.name])
            point["warmup_errors"] = warm.get("errors", 0)
            points[variant.name].append(point)
            log(f"round {round_index + 1}: {variant.label}: {point['throughput']:.1f} req/s, "
                f"p99 {point.get('p99_ms', float('nan')):.0f} ms, {point['errors']} errors")
    return points


def summarise(e: dict, mine: List[dict]) -> None:
    """A variant's entry from its load points: mean throughput, median p50, worst p99, failures."""
    e["rounds"] = [round(p["throughput"], 1) for p in mine]
    e["throughput"] = sum(p["throughput"] for p in mine) / len(mine) if mine else None
    e["p50_ms"] = _median([p.get("p50_ms") for p in mine])
    e["p99_ms"] = max((p.get("p99_ms") for p in mine if _number(p.get("p99_ms"))), default=None)
    e["errors"] = sum(p.get("errors", 0) + p.get("warmup_errors", 0) for p in mine)
    e["checked"] = sum(p.get("checked", 0) for p in mine)
    first = next((p.get("first_error") for p in mine if p.get("first_error")), "")
    if e["errors"] and first:
        e["reason"] = f"{e['errors']} failed request(s): {first}"[:300]


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not math.isnan(value)


def _median(values) -> Optional[float]:
    values = sorted(v for v in values if _number(v))
    return values[len(values) // 2] if values else None


# ---- the command ---------------------------------------------------------------------------------------------
def build_all(plan: List[variants.Variant], entries: Dict[str, dict], args, log) -> None:
    """Build (or reuse) every candidate under the build root; its build time and failure into its entry."""
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


def tuning(decl: Declaration, plan: List[variants.Variant], winner: Optional[dict], host: dict, args, log) -> dict:
    """The winner's archive swept by make tune's machinery (benchkit.optimize_tune), or why it was not."""
    if not args.tune:
        why = ("--no-tune" if not args.quick else "--quick (pass --tune for the quick grid)")
        return optimize_tune.skipped(f"{why}: the batching is left as declared", args.p99_ms, args.concurrency)
    archive = next((v.archive for v in plan if winner and v.name == winner["variant"]), None)
    if not archive:
        return optimize_tune.skipped("no winner to tune: the batching is left as declared", args.p99_ms,
                                     args.concurrency)
    return optimize_tune.tune_winner(decl, archive, host["cores"], args, log)


def declare(decl: Declaration, winner: Optional[dict], report: dict, args) -> str:
    """Write the winner's format and precision and its tuned batching into the declaration (not with --dry-run);
    what was written, or would be, in words."""
    tuned = report["tuning"].get("values") or {}
    current = {"torchserve": decl.torchserve, "handler": decl.handler}
    batching = {f"{k} {v}" for section, values in tuned.items() for k, v in values.items()
                if current[section].get(k) != v}
    relpath = os.path.relpath(decl.path, REPO)
    if winner is None:
        return f"unchanged ({decl.format} {decl.precision})"
    variant_same = (winner["format"], winner["precision"]) == (decl.format, decl.precision)
    if variant_same and not batching:
        return (f"unchanged: {decl.format} {decl.precision} is already the winner"
                + (", and its tuned batching is the declared one" if tuned else ""))
    wanted = ([] if variant_same else [f"format {winner['format']}", f"precision {winner['precision']}"]) + \
        sorted(batching)
    if args.dry_run:
        return f"--dry-run: would write {', '.join(wanted)} into {relpath} (declared now: {decl.format} {decl.precision})"
    host = report["host"]
    metric, _ = bar(decl.kind)
    when = f"make optimize {report['when'][:10]} on {host['model']} ({', '.join(host['flags'][-3:])})"
    note = (f"{when}: {winner['throughput']:.0f} req/s"
            + (f", {winner['speedup']:.2f}x the fp32 reference" if winner.get("speedup") else "")
            + f", {metric.replace('_', ' ')} {fmt_agreement(winner['agreement'].get(metric), decl.kind)}; "
            "results/optimize/")
    batching_note = optimize_tune.note(report["tuning"], report["when"][:10]) if tuned else ""
    changed = write_choice(decl.name, winner["format"], winner["precision"], note, os.path.dirname(decl.folder),
                           batching=tuned, batching_note=batching_note)
    return (f"written: {', '.join(changed)} in {relpath} ({decl.format} {decl.precision} -> {winner['format']} "
            f"{winner['precision']})" + ("" if tuned else "; the batching left as declared (not tuned)")
            + "; `make archives` rebuilds its archive")


def optimize(args, log) -> dict:
    decl = load_declaration(args.model)
    if decl.kind not in KINDS:
        raise SystemExit(f"make optimize: a {decl.kind} has no agreement measure here "
                         f"(kinds: {', '.join(KINDS)}); nothing is changed")
    host = host_cpu()
    log(f"host: {host['model']}, {host['cores']} cores, flags {', '.join(host['flags'])}")
    plan = candidates(decl, args.quick, args.formats, host=host)
    entries = {v.name: entry(v.name, v.format, v.precision) for v in plan}
    build_all(plan, entries, args, log)
    run = measure(decl, plan, entries, args, log) if any(v.archive for v in plan) else {}
    # bf16 not planned (a CPU without its instructions) is still a row, saying why
    rows = [entries[v.name] for v in plan] + [e for e in (bf16_entry(decl, host),) if e]
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
    report["tuning"] = tuning(decl, plan, winner, host, args, log)
    report["declaration"] = declare(decl, winner, report, args)
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
    parser.add_argument("--p99-ms", type=float, default=optimize_tune.P99_MS,
                        help="tuning: the p99 a point must meet at --concurrency (default %(default)g ms)")
    parser.add_argument("--no-tune", dest="tune", action="store_false", default=None,
                        help="leave the batching as declared (default: tune the winner; not with --quick)")
    parser.add_argument("--tune", dest="tune", action="store_true",
                        help="tune the winner even with --quick (on the quick grid)")
    parser.add_argument("--tune-seconds", type=float,
                        help=f"timed seconds per tuning run (default {optimize_tune.SECONDS:g}; quick: --seconds)")
    args = parser.parse_args(argv)
    names = sorted(d.name for d in declared())
    if args.model not in names:
        parser.error(f"--model {args.model}: not declared (declared: {', '.join(names)})")
    args.seconds = args.seconds or (3.0 if args.quick else 8.0)
    args.rounds = args.rounds or (2 if args.quick else 3)
    args.warmup = args.warmup if args.warmup is not None else (1.0 if args.quick else 2.0)
    args.agreement_images = args.agreement_images or (30 if args.quick else 100)
    args.tune = (not args.quick) if args.tune is None else args.tune
    out = args.out or os.path.join(REPO, "results", "optimize", args.model)

    def log(message: str) -> None:
        print(f"[optimize {args.model}] {message}", file=sys.stderr, flush=True)

    report = optimize(args, log)
    write_report(report, out)
    print(markdown(report))
    print(f"written: {out}/report.md, results.json, speed.png")
    return 0
