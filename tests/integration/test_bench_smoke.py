"""Keeps `make bench` from rotting: its --quick mode end to end (own server, checked load, the pipeline
without the model, raw model, two format variants with agreement from served answers, the whole job in
process, the LitServe peer, a tiny response-cache run off vs on, a tiny overload run at 1x and 4x, report)."""

import json
import os
import subprocess
import sys

import pytest

from support import REPO

pytestmark = pytest.mark.heavy(seconds=120)  # seconds in a one-process run on 2 cores (tests/suite_order.py)


def test_bench_quick_mode_writes_a_report(tmp_path, tmp_path_factory):
    out = tmp_path / "bench"
    # bench.py's own temp dirs (its server's workdir, with the worker sockets) go into pytest's temp dir,
    # kept short: a Unix socket path has at most 107 bytes
    scratch = tmp_path_factory.mktemp("scratch")
    result = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "bench.py"), "--quick", "--out", str(out),
                             "--build-root", str(tmp_path / "build")],
                            capture_output=True, text=True, timeout=900, env={**os.environ, "TMPDIR": str(scratch)})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((out / "results.json").read_text())
    rows = report["rows"]
    served = [r for r in rows if r["setup"] in ("B", "P", "F", "L")]
    raw = [r for r in rows if r["setup"] == "C"]
    assert {r["setup"] for r in served} == {"B", "P", "F", "L"} and raw
    # every load point answered, without errors, and checked a sample of its answers
    assert all(r["errors"] == 0 and r["throughput"] > 0 and r["p99_ms"] >= r["p50_ms"] and r["checked"] > 0
               for r in served), [(r["setup"], r["model"], r.get("first_error")) for r in served]
    assert raw[0]["throughput"] > 0 and raw[0]["layout"] in ("1x2", "2x1")
    assert any("1/(1/P+1/C)" in line for line in report["ratios"])
    # formats: the declared TorchScript archive and ONNX, agreement measured on real photos from served answers
    (formats,) = report["formats"]
    by_format = {v["format"]: v for v in formats["variants"]}
    assert set(by_format) == {"torchscript", "onnx"} and all(not v["error"] for v in by_format.values())
    for variant in by_format.values():
        assert variant["agreement"]["probes"] >= 20 and variant["agreement"]["failed"] == 0
        assert variant["agreement"]["top1_agreement"] >= 0.95 and variant["build_total_s"] is not None
    assert by_format["torchscript"]["agreement"]["top1_agreement"] == 1.0
    assert formats["chosen"] in {v["variant"] for v in by_format.values()}
    (job,) = [r for r in rows if r["setup"] == "J"]
    assert job["throughput"] > 0 and job["layout"] in ("1x2", "2x1")
    table = (out / "table.md").read_text()
    assert "| B | mobilenet_v2 | jpeg_640x480 |" in table and "| serve |" in table
    # the host first (CPU, cores, flags: optimize_choice.host_cpu), and the targets: every one met, MISSED or
    # not judged with its reason; the image model's served / (J) is judged (B at c=4 vs J of the served variant),
    # the peer target only on an AVX-512 host, the text models' (not in --quick) not judged
    assert table.startswith("host: ") and "CPU flags: " in table.splitlines()[0] and "host: " in result.stdout
    assert "## Targets" in table and "## Targets" in result.stdout
    judged = {(t["target"], t["model"], t["workload"]): t for t in report["targets"]}
    assert all(t["status"] in ("met", "MISSED") or (t["status"] == "not judged" and t["reason"]) for t in judged.values())
    assert judged[("a", "mobilenet_v2", "jpeg_640x480")]["status"] in ("met", "MISSED"), judged
    (peer,) = [t for t in judged.values() if t["target"] == "b"]
    assert (peer["status"] == "not judged") == ("avx512f" not in report["host"]["flags"]), peer
    assert all(t["status"] == "not judged" for t in judged.values() if t["model"].startswith("minilm"))
    assert all(f"({t['target']}) {t['model']}" in table for t in judged.values())
    # the answer-check table, and no served row with a wrong answer (every answer of (K), a sample elsewhere)
    assert "## Answer checks" in table
    checked_rows = [r for r in rows if r["setup"] not in ("C", "J")]
    assert all(r.get("check") and r.get("wrong", 0) == 0 for r in checked_rows), \
        [(r["setup"], r["model"], r.get("wrong"), r.get("first_error")) for r in checked_rows]
    assert (out / "bench.png").stat().st_size > 1000
    check_cache_and_overload(report, rows, table)


def check_cache_and_overload(report: dict, rows: list, table: str) -> None:
    """(K) and (O) of the quick run: what the cache and the overload sections must show."""
    # (K): the response cache off and on, for the repeated and the all-unique stream; the server counted hits
    # on the repeated stream, none on the unique one
    cache = {(r["stream"], r["cache"]): r for r in rows if r["setup"] == "K"}
    assert set(cache) == {("repeat30", "off"), ("repeat30", "on"), ("unique", "off"), ("unique", "on")}, cache
    assert all(r["errors"] == 0 and r["checked"] == r["requests"] > 0 for r in cache.values())
    assert cache[("repeat30", "on")]["hit_ratio"] > 0 and cache[("repeat30", "on")]["repeats"] > 0
    unique = cache[("unique", "on")]
    assert unique["hits"] == 0 and unique["misses"] == unique["requests"], unique
    assert "## Response cache" in table and any("cache repeat30" in line for line in report["ratios"])
    # (O): the image model at its tuned concurrency and at 4x, on TorchServe of its own and on the KServe engine
    # beside it (the same archives): every request answered right (a sample checked), none refused, no restart
    overload = {(r["server"], r["factor"]): r for r in report["overload"] if r["setup"] == "O"}
    assert set(overload) == {("ours", 1), ("ours", 4), ("kserve", 1), ("kserve", 4)}, set(overload)
    assert overload[("ours", 4)]["concurrency"] == 4 * overload[("ours", 1)]["concurrency"]
    assert all(r["refused"] == r["other_errors"] == r["restarts"] == r["wrong"] == 0 < r["checked"]
               for r in overload.values()), overload
    assert "## Overload" in table and "x4: all answered 200" in table
    # the engines' time to ready and memory for the same models, and the engine's verdict lines
    engines = {r["server"]: r for r in report["overload"] if r["setup"] == "E"}
    assert set(engines) == {"ours", "kserve"} and all(r["ready_s"] > 0 and r["rss_mb"] > 0 for r in engines.values())
    assert "KServe engine goodput" in table and "KServe engine ready in" in table
