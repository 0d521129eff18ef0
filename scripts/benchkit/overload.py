"""(O) Overload: each model at 1x, 4x and 16x its tuned concurrency, ours beside stock TorchServe.

Clients that retry at once (wrk sends the next request on a connection as soon as an answer, a 503
included, comes back) at several times the concurrency the model was tuned for. Each point records the
right answers per second (goodput), the refusals (503) and whether they carry the contract's JSON body,
any other failure, p99 of the answers, and worker restarts (worker pids from the describe API before
and after). Stock TorchServe runs with its default config (job_queue_size 100, the JVM's default heap,
its stock handler: what a user gets without this package) on the same inputs, in the same run,
alternating which goes first at each point.

Targets (docs/limits-and-overload.md): at 4x every request is answered 200 with p99 inside
responseTimeout; at 16x goodput is at least 80% of the goodput at 1x, refusals are 503 with the
contract's body, and no worker restarts.
"""

import os
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import requests

from benchkit.checks import check_answer
from tskit.load import LoadResult
from tskit.server import TorchServe

FACTORS = (1, 4, 16)
MIN_GOODPUT_AT_16X = 0.8
# The second engine (docs/engines.md): at the top factor, goodput at least this share of TorchServe's on the same
# archive; every bundled model ready within this many seconds; less memory than TorchServe for the same models.
ENGINE_GOODPUT_OF_TORCHSERVE = 0.9
ENGINE_READY_S = 20
# What a user gets from `torchserve --start` with no config: the keys this package sets, back to
# TorchServe's defaults (job_queue_size 100, max_request_size 6553500, netty threads = cores, no -Xmx).
# default_workers_per_model 0: one worker per core; `models` empty: the stock archive's own settings.
STOCK_DEFAULTS = {"job_queue_size": "100", "max_request_size": "6553500", "number_of_netty_threads": "0",
                  "netty_client_threads": "0", "vmargs": "", "default_workers_per_model": "0", "models": "{}"}


@dataclass
class Side:
    """One server and the model on it that the overload points load."""

    name: str          # "ours" (TorchServe, this package's config), "stock" or "kserve" (the second engine)
    model: str
    base: str          # the declared model it stands for
    response_timeout_s: int
    url: str           # the model's prediction URL
    key: Callable[[], str]
    pids: Callable[[], List[int]]  # the processes serving the model: a restart changes them
    ask: Callable[[bytes, str], requests.Response]  # one lone request: the answer check's reference


def torchserve_side(name: str, server: TorchServe, model: str, base: str, response_timeout_s: int) -> Side:
    client = server.client()

    def pids() -> List[int]:
        return sorted(w["pid"] for w in client.describe(model)[0].get("workers", []))

    return Side(name, model, base, response_timeout_s, client.prediction_url(model), lambda: client.key("inference"),
                pids, lambda body, content_type: client.infer(model, body, content_type, timeout=120))


def engine_side(engine, model: str, response_timeout_s: int) -> Side:
    """The KServe engine (tskit.kserve_server.KServeEngine) on the same archive: one process serves every model."""
    url = f"{engine.inference_url}/predictions/{model}"

    def ask(body: bytes, content_type: str) -> requests.Response:
        return requests.post(url, data=body, headers={"Content-Type": content_type, **engine.auth_headers()},
                             timeout=120)

    return Side("kserve", model, model, response_timeout_s, url,
                lambda: engine.auth_headers()["Authorization"].removeprefix("Bearer "), lambda: [engine.pid()], ask)


def point(side: Side, workload_name: str, workload: dict, kind: str, connections: int, seconds: float,
          load: Callable[..., LoadResult]) -> dict:
    """One overload point: the load, then what it did to the serving processes."""
    with open(workload["path"], "rb") as f:
        lone = side.ask(f.read(), workload["content_type"])
    check = check_answer(lone, side.url, workload_name, kind, stock=side.name == "stock")
    before = side.pids()
    result = load(side.url, side.key(), workload, connections, seconds, check=check)
    after = side.pids()
    refused = result.refused
    return {"setup": "O", "server": side.name, "model": side.base, "workload": workload_name,
            "concurrency": connections, "requests": result.requests, "goodput": result.throughput,
            "refused": refused, "refused_bad": result.refused_bad, "other_errors": result.errors - refused,
            "p99_ms": result.p99_ms, "restarts": len(set(before) - set(after)),
            "response_timeout_s": side.response_timeout_s, "first_error": result.first_error,
            "checked": result.checked, "wrong": result.wrong}


def run(sides: Dict[str, List[Side]], workloads: Dict[str, dict], inputs: Dict[str, str],
        kinds: Dict[str, str], tuned: int, seconds: float, load: Callable[..., LoadResult],
        factors=FACTORS, log=print, rounds: int = 2) -> List[dict]:
    """Every model's points: `rounds` passes over the factors, the second in reverse order (1, 4, 16,
    16, 4, 1), so that drift of the machine during a model's points weighs on every factor alike; at each
    point each side, the order alternating."""
    rows = []
    for model, model_sides in sides.items():
        order = [(r, f) for r in range(rounds) for f in (factors if r % 2 == 0 else list(reversed(factors)))]
        for i, (round_, factor) in enumerate(order):
            for side in (model_sides if i % 2 == 0 else list(reversed(model_sides))):
                row = point(side, inputs[model], workloads[inputs[model]], kinds[model], tuned * factor, seconds, load)
                row.update(factor=factor, round=round_)
                rows.append(row)
                log(f"O {side.name} {model} x{factor} ({tuned * factor} connections): {row['goodput']:.1f} right/s, "
                    f"{row['refused']} refused, {row['other_errors']} other failures, p99 {row['p99_ms']:.0f} ms, "
                    f"{row['restarts']} restarts")
    return rows


def combined(rows: List[dict]) -> List[dict]:
    """One row per (model, server, factor): goodput averaged over the rounds, counts summed, worst p99."""
    groups: Dict[tuple, List[dict]] = {}
    for row in (r for r in rows if r["setup"] == "O"):  # (the engines' "E" rows: engine_verdicts)
        groups.setdefault((row["model"], row["server"], row["factor"]), []).append(row)
    out = []
    for (model, server, factor), group in groups.items():
        row = dict(group[0], rounds=len(group), goodput=sum(r["goodput"] for r in group) / len(group),
                   p99_ms=max(r["p99_ms"] for r in group),
                   first_error=next((r["first_error"] for r in group if r["first_error"]), ""))
        for key in ("requests", "refused", "refused_bad", "other_errors", "restarts", "checked", "wrong"):
            row[key] = sum(r[key] for r in group)
        out.append(row)
    return out


def verdicts(rows: List[dict]) -> List[str]:
    """Our rows against the targets; a line each, "MISSED" where one is not met."""
    lines = []
    ours = [r for r in combined(rows) if r["server"] == "ours"]
    for model in sorted({r["model"] for r in ours}):
        by_factor = {r["factor"]: r for r in ours if r["model"] == model}
        base = by_factor.get(1)
        for factor, row in sorted(by_factor.items()):
            lines.append(f"{model} x{factor}: " + "; ".join(target_checks(row, base)))
    return lines


def engine_verdicts(rows: List[dict]) -> List[str]:
    """The KServe engine beside TorchServe ("ours"): goodput at the top factor, time to ready, memory ("E" rows)."""
    lines, by = [], {(r["model"], r["server"], r["factor"]): r for r in combined(rows)}
    for model, _, factor in sorted(k for k in by if k[1] == "kserve"):
        theirs, ours = by[(model, "kserve", factor)], by.get((model, "ours", factor))
        if ours and ours["goodput"] and factor == max(f for m, s, f in by if m == model and s == "kserve"):
            share = theirs["goodput"] / ours["goodput"]
            lines.append(f"{model} x{factor}: KServe engine goodput {share:.2f} of TorchServe's, p99 "
                         f"{theirs['p99_ms']:.0f} vs {ours['p99_ms']:.0f} ms" + (
                             "" if share >= ENGINE_GOODPUT_OF_TORCHSERVE else
                             f" (MISSED: target {ENGINE_GOODPUT_OF_TORCHSERVE:.1f})"))
    sides = {e["server"]: e for e in rows if e["setup"] == "E"}
    if "kserve" in sides and "ours" in sides:
        engine, torchserve = sides["kserve"], sides["ours"]
        lines.append(f"KServe engine ready in {engine['ready_s']:.1f} s for {', '.join(engine['models'])} (TorchServe: "
                     f"{torchserve['ready_s']:.1f} s for every served model, the text generator included)"
                     + ("" if engine["ready_s"] <= ENGINE_READY_S else f" (MISSED: target {ENGINE_READY_S} s)"))
        lines.append(f"memory for the same models: KServe engine {engine['rss_mb']:.0f} MB, TorchServe "
                     f"{torchserve['rss_mb']:.0f} MB" + ("" if engine["rss_mb"] < torchserve["rss_mb"] else
                                                          " (MISSED: target less than TorchServe)"))
    return lines


def target_checks(row: dict, base: Optional[dict]) -> List[str]:
    said = []
    if row["restarts"]:
        said.append(f"MISSED: {row['restarts']} worker restarts")
    if row["other_errors"]:
        said.append(f"MISSED: {row['other_errors']} failures other than 503 ({row['first_error'][:80]})")
    if row["refused_bad"]:
        said.append(f"MISSED: {row['refused_bad']} refusals without the contract's JSON body")
    if row["factor"] <= 4:
        ok = row["refused"] == 0 and row["p99_ms"] < row["response_timeout_s"] * 1000
        said.append(("all answered 200" if row["refused"] == 0 else f"MISSED: {row['refused']} refused")
                    + f", p99 {row['p99_ms']:.0f} ms" + ("" if ok else f" (responseTimeout {row['response_timeout_s']} s)"))
    if row["factor"] >= 16 and base and base["goodput"]:
        share = row["goodput"] / base["goodput"]
        said.append(f"goodput {share:.0%} of x1" + ("" if share >= MIN_GOODPUT_AT_16X else
                                                      f" (MISSED: target {MIN_GOODPUT_AT_16X:.0%})"))
    return said or ["ok"]


def table(rows: List[dict]) -> str:
    head = ("| model | server | connections | right answers/s (mean of rounds) | refused (503) | 503 without JSON body | "
            "other failures | p99 ms | worker restarts |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    lines = [f"| {r['model']} | {r['server']} | {r['concurrency']} (x{r['factor']}) | {r['goodput']:.1f} | "
             f"{r['refused']} of {r['requests']} | {r['refused_bad']} | {r['other_errors']} | {r['p99_ms']:.0f} | "
             f"{r['restarts']} |" for r in combined(rows)]
    return "\n".join([head] + lines)


def rss_mb(pids: List[int]) -> float:
    """Resident memory of these processes and their children, in MB."""
    import psutil

    total, seen = 0, set()
    for pid in pids:
        try:
            process = psutil.Process(pid)
            for member in [process] + process.children(recursive=True):
                if member.pid not in seen:
                    seen.add(member.pid)
                    total += member.memory_info().rss
        except psutil.Error:
            continue
    return total / 1e6


def torchserve_pids(server: TorchServe, models: List[str]) -> List[int]:
    """The frontend and the workers of `models` (not those of other models the server holds)."""
    client = server.client()
    return [server.pid()] + [w["pid"] for m in models for w in client.describe(m)[0].get("workers", [])]


def stock_config(workdir: str) -> Dict[str, str]:
    """config.properties overrides for the stock side (see STOCK_DEFAULTS), with its own log dir."""
    return dict(STOCK_DEFAULTS, model_store=os.path.join(workdir, "model_store"))
