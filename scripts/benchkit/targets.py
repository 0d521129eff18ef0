"""The bench's targets, judged on one run's measurements: a line each with the measured ratio, the target and
"met" or "MISSED", or "not judged: <reason>" when this run cannot judge it (never dropped). Pure over rows,
(F)'s summaries and the host (benchkit.optimize_choice.host_cpu): tests fabricate them.

  (a) every served image and text model, on its main input, served (B at the top concurrency) >= 0.9 of
      (J), the whole job in process, of the variant it serves;
  (b) on a host with avx512f: mobilenet_v2 on TorchServe >= 1.75x LitServe on the same fp32 weights
      (F_json vs L: the same variant, the same JSON bodies, the same batching);
  (c) every served text model >= 0.85 of (J) of the variant it serves at every text length of the bench.

(B) is what the issue calls served: the archive make archives built (model_store/<model>.mar), registered
with the declaration's settings, loaded at the top concurrency (full batches, as (J) runs them); (J) is
that same variant in process (the (F) variant in the declaration's format and precision: a renamed copy
of the same archive), the same request body, the same batch size.
"""

from typing import Dict, List, Optional

from benchkit.workloads import MAIN_WORKLOAD, TEXTS, WORKLOAD_KIND

SERVED_OF_JOB = 0.9                     # (a)
TEXT_SERVED_OF_JOB = 0.85               # (c), at every text length
PEER_RATIO = {"mobilenet_v2": 1.75}     # (b): TorchServe / LitServe, JSON bodies, fp32
PEER_FLAG = "avx512f"                   # (b) applies only where the host has it
TEXT_WORKLOADS = tuple(f"text_{length}" for length in TEXTS)
MET, MISSED, NOT_JUDGED = "met", "MISSED", "not judged"


def _find(rows: List[dict], setup: str, model: str, workload: str, concurrency: Optional[int] = None) -> Optional[dict]:
    return next((r for r in rows if r["setup"] == setup and r["model"] == model and r["workload"] == workload
                 and (concurrency is None or r.get("concurrency") == concurrency)), None)


def _verdict(target: str, model: str, workload: Optional[str], bar: float, what: str, measured: Optional[float] = None,
             reason: str = "", detail: str = "") -> dict:
    """One target's record; `reason` set: not judged; else met or MISSED on `measured` against `bar`."""
    if reason:
        status = NOT_JUDGED
    else:
        status = MET if measured >= bar else MISSED
    return {"target": target, "model": model, "workload": workload, "what": what, "bar": bar,
            "measured": None if reason else round(measured, 3), "status": status, "reason": reason,
            "detail": detail}


def _served_vs_job(target: str, rows: List[dict], summary: Optional[dict], model: str, workload: str, top: int,
                   bar: float) -> dict:
    """(B) at the top concurrency over (J) of the served variant, for one model and input."""
    what = f"served (B, c={top}) / whole job in process (J)"
    judge = lambda **kw: _verdict(target, model, workload, bar, what, **kw)
    b = _find(rows, "B", model, workload, top)
    if b is None:
        return judge(reason=f"no (B) point of {model} on {workload} at c={top} in this run")
    if summary is None:
        return judge(reason=f"{model} is not in this run's formats section, so no (J)")
    served = summary.get("served_variant")
    if not served:
        return judge(reason=summary.get("served_missing") or "the served variant was not measured in (F)")
    j = _find(rows, "J", served, workload)
    if j is None:
        return judge(reason=f"no (J) of {served} on {workload} in this run")
    if j.get("errors") or not j.get("throughput"):
        return judge(reason=f"(J) of {served} on {workload} failed: {j.get('first_error', 'no throughput')}")
    detail = (f"B {b['throughput']:.1f} req/s / J {j['throughput']:.1f}/s ({served}, {j.get('layout')}, "
              f"batch {j.get('batch')})")
    if b.get("errors"):
        detail += f"; (B) had {b['errors']} failed requests"
        return dict(judge(measured=b["throughput"] / j["throughput"], detail=detail), status=MISSED)
    return judge(measured=b["throughput"] / j["throughput"], detail=detail)


def _peer(model: str, summary: Optional[dict], host: dict, bar: float) -> dict:
    """(b): TorchServe (F_json) over LitServe (L), the same variant and JSON bodies, where the host has PEER_FLAG."""
    what = "TorchServe / LitServe, JSON bodies, the same fp32 variant"
    judge = lambda workload=None, **kw: _verdict("b", model, workload, bar, what, **kw)
    if PEER_FLAG not in host.get("flags", []):
        return judge(reason=f"this host has no {PEER_FLAG} (flags of interest: {', '.join(host.get('flags', [])) or 'none'})")
    if summary is None:
        return judge(reason=f"{model} is not in this run's formats section")
    chosen = next((e for e in summary.get("variants", []) if e.get("chosen")), None)
    if chosen is None:
        return judge(reason="no variant of it was chosen in (F), so no peer comparison")
    if chosen["precision"] != "fp32":
        return judge(reason=f"the compared variant {chosen['variant']} is {chosen['precision']}, not the fp32 weights")
    f_json, peer = summary.get("F_json"), summary.get("L")
    if not f_json or not peer:
        return judge(reason="no LitServe peer in this run (--no-peer or --no-formats)")
    workload = peer.get("workload")
    if peer.get("errors") or not peer.get("throughput"):
        return judge(workload, reason=f"the LitServe peer did not run cleanly: {peer.get('first_error', 'no throughput')}")
    ratio = f_json["throughput"] / peer["throughput"]
    detail = f"{chosen['variant']}: TorchServe {f_json['throughput']:.1f} req/s vs LitServe {peer['throughput']:.1f} req/s"
    if f_json.get("errors"):
        return dict(judge(workload, measured=ratio, detail=detail + f"; TorchServe had {f_json['errors']} failed requests"),
                    status=MISSED)
    return judge(workload, measured=ratio, detail=detail)


def judge(rows: List[dict], summaries: List[dict], host: dict, top: int, models: Dict[str, str]) -> List[dict]:
    """Every target for `models` (served model -> kind: the image and text models the targets cover, in this
    run or not), judged on this run's rows, (F) summaries and host at the top concurrency `top`."""
    by_model = {s["model"]: s for s in summaries}
    out = []
    for model, kind in sorted(models.items()):
        summary, main = by_model.get(model), MAIN_WORKLOAD.get(kind)
        if main is None:
            out.append(_verdict("a", model, None, SERVED_OF_JOB, "served / (J)",
                                reason=f"the bench has no inputs for its kind {kind}"))
            continue
        out.append(_served_vs_job("a", rows, summary, model, main, top, SERVED_OF_JOB))
        if WORKLOAD_KIND.get(kind) == "text":
            out += [_served_vs_job("c", rows, summary, model, workload, top, TEXT_SERVED_OF_JOB)
                    for workload in TEXT_WORKLOADS]
    for model, bar in sorted(PEER_RATIO.items()):
        if model in models:
            out.append(_peer(model, by_model.get(model), host, bar))
        else:
            out.append(_verdict("b", model, None, bar, "TorchServe / LitServe", reason=f"{model} is not a served model"))
    return sorted(out, key=lambda t: t["target"])  # (a), (b), (c); stable: models and lengths in order


def line(t: dict) -> str:
    """One target as a report line."""
    where = f"{t['model']}" + (f" {t['workload']}" if t["workload"] else "")
    head = f"({t['target']}) {where}: {t['what']}"
    if t["status"] == NOT_JUDGED:
        return f"{head} (target >= {t['bar']:.2f}): not judged: {t['reason']}"
    return f"{head} = {t['measured']:.2f} (target >= {t['bar']:.2f}): {t['status']}; {t['detail']}"


def host_line(host: dict) -> str:
    """The host the run measured, as optimize_choice.host_cpu reads it."""
    return (f"host: {host['model']}, {host['cores']} logical cores, {host.get('machine', '')}; CPU flags: "
            f"{', '.join(host['flags']) or 'none of interest'}"
            + (f" (absent: {', '.join(host['missing'])})" if host.get("missing") else ""))
