"""Keeps `make bench` from rotting: its --quick mode end to end (own server, load, the pipeline
without the model, raw model, report)."""

import json
import os
import subprocess
import sys

from support import REPO


def test_bench_quick_mode_writes_a_report(tmp_path):
    out = tmp_path / "bench"
    result = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "bench.py"), "--quick", "--out", str(out)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((out / "results.json").read_text())
    served = [r for r in report["rows"] if r["setup"] in ("B", "P")]
    raw = [r for r in report["rows"] if r["setup"] == "C"]
    assert {r["setup"] for r in served} == {"B", "P"} and raw
    assert all(r["errors"] == 0 and r["throughput"] > 0 and r["p99_ms"] >= r["p50_ms"] for r in served)
    assert raw[0]["throughput"] > 0 and raw[0]["layout"] in ("1x2", "2x1")
    assert any("1/(1/P+1/C)" in line for line in report["ratios"])
    assert "| B | mobilenet_v2 | jpeg_640x480 |" in (out / "table.md").read_text()
    assert (out / "bench.png").stat().st_size > 1000
