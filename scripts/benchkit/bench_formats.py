"""(F), (J) and (L): every format of each served model on the bench server, agreement with fp32 from the
served answers, the whole job in process and the LitServe peer for the variant to serve."""

import os
import shutil
import time
from typing import Dict, List, Optional


from benchkit import agreement, inprocess, variants
from tskit.unpacked import peek
from benchkit.workloads import TEXTS, WORKLOAD_KIND, load_point, load_url
from benchkit.checks import answer_check, check_answer
from benchkit.litserve_peer import LitServePeer
from benchkit.bench_servers import declared, free_port
from benchkit.bench_points import checked_point
from tskit.load import AnswerCheck
from tskit import declaration as declarations
from tskit import kinds
from tskit.client import ClientError
from tskit.server import TorchServe


# ---- (F): formats -----------------------------------------------------------------------------------
class Management:
    """(F)'s registrations through tskit.client (its tokens; its bounded, logged retries of transient
    management failures)."""

    def __init__(self, server: TorchServe):
        self.client = server.client(timeout=900)

    def register(self, name: str, decl: declarations.Declaration) -> None:
        ts = decl.torchserve
        self.client.register(f"{name}.mar", model_name=name, initial_workers=ts.get("minWorkers", 1),
                             batch_size=ts.get("batchSize", 1), max_batch_delay=ts.get("maxBatchDelay", 100),
                             response_timeout=ts.get("responseTimeout", 120))

    def unregister(self, name: str) -> None:
        """A failure is left to the caller's report, not raised (the bench's server is stopped at the end anyway)."""
        try:
            self.client.unregister_and_wait(name)
        except ClientError:
            pass


def formats_section(server: TorchServe, args, workloads: Dict[str, dict], rows: List[dict], log) -> List[dict]:
    """(F), (J) and (L) for each served model in args.format_models; returns one summary per model."""
    decls = declared()
    manage = Management(server)
    store = server.props["model_store"]
    summaries = []
    for base in args.format_models:
        decl = decls[base]
        plan = variants.plan(decl, formats=args.formats, int8=not args.no_int8, all_declared=list(decls.values()))
        log(f"formats: {base}: building {', '.join(v.name for v in plan)} (reused while unchanged)")
        for variant in plan:
            started = time.monotonic()
            variants.build(variant, args.build_root, timeout_s=args.build_timeout, reuse=not args.rebuild)
            log(f"  {variant.name}: " + (variant.error or
                f"{'cached' if variant.cached else 'built'} in {time.monotonic() - started:.0f} s"))
        registered = []
        try:
            summaries.append(model_formats(server, args, decl, plan, workloads, rows, manage, registered, log))
        finally:
            for name in registered:
                manage.unregister(name)
                try:
                    os.remove(os.path.join(store, f"{name}.mar"))
                except OSError:
                    pass
    return summaries


def model_formats(server: TorchServe, args, decl, plan, workloads: Dict[str, dict], rows: List[dict],
                  manage: Management, registered: List[str], log) -> dict:
    """One model's built variants served side by side: agreement with the fp32 reference, the load rounds,
    the choice; (J) and (L) for the chosen one. `registered` collects what the caller unregisters."""
    kind, workload_name = decl.kind, kinds.kind(decl.kind).bench_workload
    workload, client, top = workloads[workload_name], server.client(), max(args.concurrency)
    checks, answers = {}, {}
    probes = agreement.probes(kind, args.agreement_images, {f"text_{k}": t for k, t in TEXTS.items()})
    for variant in (v for v in plan if v.archive):
        shutil.copy(variant.archive, os.path.join(server.props["model_store"], f"{variant.name}.mar"))
        try:
            manage.register(variant.name, variant.declaration)
            registered.append(variant.name)
            checks[variant.name] = answer_check(client, variant.name, workload_name, workload, kind)
            answers[variant.name] = agreement.collect(client, variant.name, probes)
        except Exception as err:
            variant.error = f"serving failed: {type(err).__name__}: {err}"[:300]
            log(f"  {variant.name}: {variant.error}")
    serving = [v for v in plan if v.name in checks]
    reference = next((v for v in serving if v.is_reference), None)
    results = {v.name: (agreement.compare(kind, probes, answers[reference.name], answers[v.name]) if reference else {})
               for v in serving}
    # the load points: every variant at the top concurrency, in alternating order per round
    points: Dict[str, List[dict]] = {v.name: [] for v in serving}
    for round_index in range(args.format_rounds):
        for variant in (serving if round_index % 2 == 0 else serving[::-1]):
            row = checked_point(rows, {"setup": "F", "model": variant.name, "workload": workload_name,
                                       "concurrency": top, "round": round_index + 1,
                                       "format": variant.format, "precision": variant.precision},
                                lambda seconds, v=variant: load_point(server, v.name, workload, top, seconds,
                                                                      args.generator, checks[v.name]),
                                args, checks[variant.name], server)
            points[variant.name].append(row)
    table_rows = [variant_entry(decl.name, v, points.get(v.name, []), results.get(v.name, {}), workload_name, top)
                  for v in plan]
    summary = choose_variant(decl.name, kind, table_rows, reference, args.min_agreement)
    served = served_variant(decl, plan, serving)
    summary["served_variant"] = served.name if served else None
    if not served:
        summary["served_missing"] = (f"the served variant ({decl.format} {decl.precision}) is not among this run's "
                                     f"served formats")
    if summary["chosen"]:
        variant = next(v for v in plan if v.name == summary["chosen"])
        summary.update(references(server, args, variant, served, workload_name, workloads, rows, checks, log))
    return summary


def served_variant(decl, plan, serving) -> Optional[variants.Variant]:
    """The variant in the declaration's format and precision (model_store's archive, renamed) when it serves here."""
    names = {v.name for v in serving}
    return next((v for v in plan if v.name in names and (v.format, v.precision) == (decl.format, decl.precision)), None)


def job_workloads(args, base: str, kind: str, workload_name: str, rows: List[dict]) -> List[str]:
    """The inputs (J) runs on: the model's main one; for a text model also every other text input (B) measured
    it on in this run (the per-length targets), except in --quick, which measures the main one only."""
    names = [workload_name]
    if not args.quick and WORKLOAD_KIND[kind] == "text":
        names += sorted({r["workload"] for r in rows if r["setup"] == "B" and r["model"] == base
                         and r["workload"].startswith("text_") and r["workload"] != workload_name})
    return names


def variant_entry(base: str, variant, mine: List[dict], agreement_result: dict, workload_name: str, top: int) -> dict:
    entry = {"model": base, "variant": variant.name, "format": variant.format,
             "precision": variant.precision, "error": variant.error, "cached": variant.cached,
             "build_s": (variant.build or {}).get("build_s"), "build_total_s": (variant.build or {}).get("total_s"),
             "max_abs_diff": (variant.build or {}).get("max_abs_diff"),
             "agreement": agreement_result, "workload": workload_name, "concurrency": top}
    if mine:
        entry.update(throughput=sum(r["throughput"] for r in mine) / len(mine),
                     p99_ms=sum(r.get("p99_ms", float("nan")) for r in mine) / len(mine),
                     errors=sum(r.get("errors", 0) for r in mine),
                     rounds=[round(r["throughput"], 1) for r in mine])
    return entry


def choose_variant(base: str, kind: str, table_rows: List[dict], reference, min_agreement: float) -> dict:
    """The fastest variant without errors that keeps the agreement bar; speed-ups against the reference."""
    ref_entry = next((e for e in table_rows if e["variant"] == (reference.name if reference else None)), None)
    eligible = [e for e in table_rows if e.get("throughput") and not e.get("errors")
                and agreement.keeps_agreement(e["agreement"], kind, min_agreement)]
    chosen = max(eligible, key=lambda e: e["throughput"]) if eligible else None
    for e in table_rows:
        e["speedup"] = (e["throughput"] / ref_entry["throughput"]
                        if ref_entry and ref_entry.get("throughput") and e.get("throughput") else None)
        e["chosen"] = e is chosen
    return {"model": base, "kind": kind, "variants": table_rows, "chosen": chosen["variant"] if chosen else None,
            "speedup": chosen["speedup"] if chosen else None}


def references(server: TorchServe, args, variant: variants.Variant, served: Optional[variants.Variant],
               workload_name: str, workloads: Dict[str, dict], rows: List[dict], checks: Dict[str, AnswerCheck],
               log) -> dict:
    """(J) for the served variant (the chosen one when the served one is not in this run), on the main input
    and, for a text model, every text length (B) measured; (L) for the chosen variant, with the same variant
    on TorchServe with LitServe's JSON body."""
    out = {}
    top = max(args.concurrency)
    json_name = f"json_{workload_name}"
    if not args.no_inprocess:
        job_variant = served or variant
        for name in job_workloads(args, variant.base, variant.declaration.kind, workload_name, rows):
            row = job_row(args, job_variant, name, workloads[name], log)
            rows.append(row)
            out.setdefault("J", row)  # the main input's: the report's ratio line
    if not args.no_peer:
        json_workload = workloads[json_name]
        kind = variant.declaration.kind
        check = answer_check(server.client(), variant.name, json_name, json_workload, kind)
        out["F_json"] = checked_point(rows, {"setup": "F", "model": variant.name, "workload": json_name,
                                             "concurrency": top},
                                      lambda seconds: load_point(server, variant.name, json_workload, top, seconds,
                                                                 args.generator, check), args, check, server)
        log(f"  (L) {variant.name}: LitServe peer")
        peer = LitServePeer(variant.archive, free_port(), os.path.join(args.out, f"litserve-{variant.name}.log"))
        try:
            peer.start()
            check = check_answer(peer.ask(json_workload), peer.url, json_name, kind)
            out["L"] = checked_point(rows, {"setup": "L", "model": f"litserve:{variant.name}", "workload": json_name,
                                            "concurrency": top},
                                     lambda seconds: load_url(peer.url, None, json_workload, top, seconds,
                                                              args.generator, check), args, check)
        except Exception as err:
            out["L"] = {"setup": "L", "model": f"litserve:{variant.name}", "workload": json_name, "throughput": 0.0,
                        "errors": 1, "first_error": f"{type(err).__name__}: {err}"[:300]}
            rows.append(out["L"])
            log(f"  (L) failed: {out['L']['first_error']}")
        finally:
            peer.stop()
    return out


def job_row(args, variant: variants.Variant, workload_name: str, workload: dict, log) -> dict:
    """(J): the whole job in process for `variant` on one input, at its batch size, best of the layouts."""
    log(f"  (J) {variant.name} on {workload_name}: the whole job in process")
    with open(workload["path"], "rb") as f:
        body = f.read()
    try:
        best = inprocess.best_rate("J", variant.archive, body, max(2.0, args.seconds / 2), one_layout=args.quick)
        return {"setup": "J", "model": variant.name, "workload": workload_name, "concurrency": None,
                "batch": unpack_batch(variant.archive), **best}
    except Exception as err:
        return {"setup": "J", "model": variant.name, "workload": workload_name, "throughput": 0.0, "errors": 1,
                "first_error": f"{type(err).__name__}: {err}"[:300]}


def unpack_batch(mar: str) -> int:
    return peek(mar).batch_size
