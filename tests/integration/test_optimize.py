"""`make optimize QUICK=1 DRY_RUN=1` on minilm_topics: the small form runs end to end (builds, a private
TorchServe, agreement from the served answers, load rounds), reports every variant with the host's CPU flags, its
speed, agreement and build time, chooses only a variant that keeps the agreement bar, and leaves models/ as it was.
Which variant wins is printed, not asserted: speeds on this shared machine drift by up to 2x."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchkit.optimize_choice import tie
from support import REPO

pytestmark = pytest.mark.heavy(seconds=65)  # seconds in a one-process run on 2 cores (tests/suite_order.py)

MODEL = "minilm_topics"


def declarations_digest() -> str:
    digest = hashlib.sha256()
    for path in sorted(Path(REPO, "models").glob("*/*")):
        if path.is_file():
            digest.update(str(path).encode() + path.read_bytes())
    return digest.hexdigest()


def test_quick_dry_run_reports_and_leaves_the_declarations(tmp_path, tmp_path_factory):
    out = tmp_path / "report"
    scratch = tmp_path_factory.mktemp("scratch")  # the server's working dir (short: Unix socket paths)
    before = declarations_digest()
    result = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "optimize.py"), "--model", MODEL,
                             "--quick", "--dry-run", "--out", str(out), "--build-root", str(tmp_path / "build"),
                             "--seconds", "1", "--warmup", "0.3"],  # the choice is tested in the unit tests
                            capture_output=True, text=True, timeout=900, env={**os.environ, "TMPDIR": str(scratch)})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert declarations_digest() == before, "--dry-run changed models/"

    report = json.loads((out / "results.json").read_text())
    rows = {f"{r['format']} {r['precision']}": r for r in report["variants"]}
    assert {"torchscript fp32", "onnx fp32", "torchscript int8", "torchscript bf16"} <= set(rows)
    host = report["host"]
    bf16 = rows["torchscript bf16"]
    if host["bf16"]:  # built, served and judged like the others
        assert bf16["status"] in ("chosen", "kept", "below agreement bar"), bf16
    else:
        assert bf16["status"] == "not available here" and "emulated" in bf16["reason"]
    assert host["model"]
    assert "avx2" in host["flags"] or host["machine"] != "x86_64"
    measured = [r for r in report["variants"] if r["status"] in ("chosen", "kept", "below agreement bar")]
    assert len(measured) >= 3, rows
    for r in measured:
        assert r["throughput"] > 0 and len(r["rounds"]) == 2 and r["errors"] == 0
        assert r["build_s"] is not None and r["agreement"]["probes"] == 48
    assert rows["torchscript fp32"]["reference"] and rows["torchscript fp32"]["agreement"]["top1_agreement"] == 1.0
    chosen = [r for r in report["variants"] if r["status"] == "chosen"]
    assert len(chosen) == 1 and chosen[0]["agreement"]["top1_agreement"] >= 0.99
    assert report["winner"] == f"{chosen[0]['format']} {chosen[0]['precision']}"
    kept = [r for r in report["variants"] if r["status"] in ("chosen", "kept")]
    fastest = max(kept, key=lambda r: r["throughput"])
    assert tie(chosen[0], fastest)  # the fastest kept variant, or one that cannot be told from it
    assert "dry-run" in report["declaration"] or "unchanged" in report["declaration"]
    # --quick leaves tuning out (a second server and its points; the tuning is tested in tests/unit/)
    assert report["tuning"]["status"] == "skipped" and "--quick" in report["tuning"]["why"]

    text = (out / "report.md").read_text()
    assert all(flag in text for flag in host["flags"]) and "**Winner:**" in text
    assert (out / "speed.png").stat().st_size > 1000
    assert "# make optimize: minilm_topics" in result.stdout
    print("\n" + text)
