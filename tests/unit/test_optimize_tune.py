"""make optimize's tuning of its winner (benchkit.optimize_tune, benchkit.optimize.declare, tune.variant_archive):
no server. The grid planned for a host's cores; the archive swept is the one given, its model-config.yaml
rewritten with the wanted values; the choice is make tune's, on fabricated points; the declaration gets the tuned
batching lines (comments and every other key kept) only when a point met the target; the report's table."""

import argparse
import json
import os
import shutil
import zipfile

import pytest
import yaml

from benchkit import optimize, optimize_report, optimize_tune, tune
from benchkit.optimize_choice import edit_section, entry, host_cpu, write_choice
from support import REPO
from tskit.declaration import load

DECLARED = {"minWorkers": 2, "maxWorkers": 2, "batchSize": 4, "maxBatchDelay": 20}
HANDLER = {"intraOpThreads": 1}


# ---- the grid ------------------------------------------------------------------------------------------------
def test_the_grid_on_two_cores_is_three_layouts_three_batches_two_delays():
    grid = optimize_tune.plan_grid(2, DECLARED, HANDLER)
    assert grid["layouts"] == [[1, 1], [2, 1], [1, 2]]  # workers x threads <= 2 cores
    assert grid["batch_sizes"] == [1, 4, 8] and grid["delays"] == [20, 5]
    # a declared batch outside 1, 4, 8 is measured too; a short declared delay gets a longer other one
    grid = optimize_tune.plan_grid(2, dict(DECLARED, batchSize=16, maxBatchDelay=5), HANDLER)
    assert grid["batch_sizes"] == [1, 4, 8, 16] and grid["delays"] == [5, 20]


def test_the_grid_follows_the_core_count():
    assert optimize_tune.plan_grid(1, DECLARED, HANDLER)["layouts"] == [[1, 1]]
    grid = optimize_tune.plan_grid(16, DECLARED, HANDLER)
    assert grid["workers"] == [1, 2, 16] and grid["threads"] == [1, 2]
    assert grid["layouts"] == [[1, 1], [2, 1], [16, 1], [1, 2], [2, 2]]  # 16 x 2 is above the cores
    assert all(w * t <= 16 for w, t in grid["layouts"])


def test_the_quick_grid_is_the_declared_layout_and_two_batches():
    grid = optimize_tune.plan_grid(2, DECLARED, HANDLER, quick=True)
    assert grid["layouts"] == [[2, 1]] and grid["batch_sizes"] == [1, 4] and grid["delays"] == [20]
    # a declared layout the host cannot hold falls back to 1 x 1
    assert optimize_tune.plan_grid(2, DECLARED, {"intraOpThreads": 2}, quick=True)["layouts"] == [[1, 1]]


def test_the_sweep_arguments_are_short_points_and_the_quick_ones_the_run_s():
    grid = optimize_tune.plan_grid(2, DECLARED, HANDLER)
    args = argparse.Namespace(quick=False, concurrency=16, seconds=8.0, warmup=2.0, tune_seconds=None)
    settled = optimize_tune.sweep_args("m", grid, args, "jpeg_640x480")
    assert (settled.seconds, settled.warmup, settled.repeats) == (3.0, 1.0, 2)
    assert settled.batch_sizes == [1, 4, 8] and settled.workers == [1, 2] and settled.model == "m"
    # every argument make tune's own command settles is there (tune.sweep reads them; a missing one failed a run)
    assert settled.workload == "jpeg_640x480"
    assert {"model", "workload", "workers", "threads", "batch_sizes", "delays", "concurrency", "seconds", "warmup",
            "repeats", "min_drop"} <= set(vars(settled))
    quick = optimize_tune.sweep_args("m", grid, argparse.Namespace(quick=True, concurrency=16, seconds=1.0,
                                                                   warmup=0.3, tune_seconds=None), "text_medium")
    assert (quick.seconds, quick.warmup, quick.repeats) == (1.0, 0.3, 1)


# ---- the archive swept ---------------------------------------------------------------------------------------
def fake_mar(path, config):
    with zipfile.ZipFile(path, "w") as mar:
        mar.writestr("MAR-INF/MANIFEST.json", json.dumps({"model": {"modelName": "winner", "configFile":
                                                                    "model-config.yaml", "handler": "h.py"}}))
        mar.writestr("model-config.yaml", yaml.safe_dump(config))
        mar.writestr("model.onnx", b"weights")


def test_variant_archive_copies_the_given_archive_with_the_wanted_values(tmp_path):
    build = tmp_path / "build" / "model_store"
    build.mkdir(parents=True)
    source = build / "m_onnx_fp32.mar"
    fake_mar(source, dict(DECLARED, responseTimeout=60, handler={"intraOpThreads": 1, "topk": 5}))
    store = tmp_path / "store"
    store.mkdir()
    name = tune.variant_archive("m", 2, str(store), source=str(source))
    assert name == "m_t2"
    with zipfile.ZipFile(store / "m_t2.mar") as mar:
        config = yaml.safe_load(mar.read("model-config.yaml"))
        manifest = json.loads(mar.read("MAR-INF/MANIFEST.json"))
        assert mar.read("model.onnx") == b"weights"
    assert manifest["model"]["modelName"] == "m_t2"
    # workers and batching left to the registration; the threads set; every other key kept
    assert config == {"responseTimeout": 60, "handler": {"intraOpThreads": 2, "topk": 5}}
    frontend = {"minWorkers": 1, "maxWorkers": 1, "batchSize": 8, "maxBatchDelay": 5}
    tune.variant_archive("m", 1, str(store), frontend, name="m", source=str(source))
    with zipfile.ZipFile(store / "m.mar") as mar:
        config = yaml.safe_load(mar.read("model-config.yaml"))
    assert config == dict(frontend, responseTimeout=60, handler={"intraOpThreads": 1, "topk": 5})
    with pytest.raises(ValueError):
        tune.variant_archive("m", 1, str(store), source=str(tmp_path / "not-an-archive.zip"))


def test_the_sweep_registers_the_given_archive(tmp_path, monkeypatch):
    monkeypatch.setattr(tune, "private_server", lambda *a, **k: None)
    source = tmp_path / "w.mar"
    fake_mar(source, dict(DECLARED, handler={"intraOpThreads": 1}))
    sweep = tune.Sweep("mobilenet_v2", str(tmp_path / "work"), str(source))
    assert sweep.archive(2) == "mobilenet_v2_t2"
    with zipfile.ZipFile(tmp_path / "work" / "model_store" / "mobilenet_v2_t2.mar") as mar:
        assert yaml.safe_load(mar.read("model-config.yaml"))["handler"]["intraOpThreads"] == 2


# ---- the choice ----------------------------------------------------------------------------------------------
def point(workers, threads, batch, delay, throughput, p99, errors=0):
    return {"workers": workers, "threads": threads, "batch": batch, "delay": delay, "throughput": throughput,
            "p50_ms": p99 / 2, "p99_ms": p99, "errors": errors, "warmup_errors": 0, "spread": 0.05, "checked": 10,
            "runs": [{"throughput": throughput, "p99_ms": p99}], "first_error": "boom" if errors else ""}


ROWS = [point(2, 1, 1, 20, 90, 220), point(2, 1, 4, 20, 120, 310), point(2, 1, 8, 20, 150, 640),
        point(1, 2, 8, 5, 170, 450, errors=2), point(1, 1, 4, 5, 60, 280)]


def run_tuning(tmp_path, monkeypatch, rows, p99_ms=500.0):
    seen = {}

    def fake_sweep(args, workload, source=None):
        seen.update(args=args, source=source, workload=workload)
        if isinstance(rows, Exception):
            raise rows
        return rows

    monkeypatch.setattr(tune, "sweep", fake_sweep)
    args = argparse.Namespace(quick=False, concurrency=16, seconds=8.0, warmup=2.0, tune_seconds=None, p99_ms=p99_ms)
    out = optimize_tune.tune_winner(load("mobilenet_v2"), str(tmp_path / "m_onnx_fp32.mar"), 2, args, lambda m: None)
    return out, seen


def test_tuning_chooses_the_fastest_point_meeting_the_target(tmp_path, monkeypatch):
    out, seen = run_tuning(tmp_path, monkeypatch, ROWS)
    assert seen["source"] == str(tmp_path / "m_onnx_fp32.mar") and seen["args"].model == "mobilenet_v2"
    assert out["status"] == optimize_tune.TUNED and out["best"] is ROWS[1]  # 150 is over 500 ms, 170 failed
    assert out["values"] == {"torchserve": {"minWorkers": 2, "maxWorkers": 2, "batchSize": 4, "maxBatchDelay": 20},
                             "handler": {"intraOpThreads": 1}}
    assert "the fastest of the 3 point(s) meeting p99 <= 500 ms" in out["why"]
    assert "1 point(s) over the target" in out["why"] and "1 with failed requests" in out["why"]


def test_no_point_meeting_the_target_leaves_no_values(tmp_path, monkeypatch):
    out, _ = run_tuning(tmp_path, monkeypatch, ROWS, p99_ms=100)
    assert out["status"] == optimize_tune.NO_POINT and out["best"] is None and "values" not in out
    assert "left as declared" in out["why"]
    failed, _ = run_tuning(tmp_path, monkeypatch, RuntimeError("no server"))
    assert failed["status"] == optimize_tune.FAILED and "no server" in failed["why"] and "values" not in failed


# ---- the declaration -----------------------------------------------------------------------------------------
def copy_model(tmp_path, name="mobilenet_v2"):
    models = tmp_path / "models"
    shutil.copytree(os.path.join(REPO, "models", name), models / name)
    return models, (models / name / "model.yaml").read_text()


def test_write_choice_writes_the_tuned_batching_and_keeps_the_rest(tmp_path):
    models, before = copy_model(tmp_path)
    batching = {"torchserve": {"minWorkers": 1, "maxWorkers": 1, "batchSize": 8, "maxBatchDelay": 20},
                "handler": {"intraOpThreads": 2}}
    changed = write_choice("mobilenet_v2", "onnx", "fp32", "n", str(models), batching, "tuned: 1 x 2, batch 8")
    after = (models / "mobilenet_v2" / "model.yaml").read_text()
    assert changed == ["torchserve.minWorkers", "torchserve.maxWorkers", "torchserve.batchSize",
                       "handler.intraOpThreads"]  # maxBatchDelay was 20 already: its line is untouched
    loaded, original = load("mobilenet_v2", str(models)), load("mobilenet_v2")
    assert loaded.torchserve == dict(original.torchserve, minWorkers=1, maxWorkers=1, batchSize=8)
    assert loaded.handler == dict(original.handler, intraOpThreads=2)
    assert (loaded.format, loaded.precision) == (original.format, original.precision)
    assert "  batchSize: 8              # tuned: 1 x 2, batch 8\n" in after
    assert "  intraOpThreads: 2           # tuned: 1 x 2, batch 8\n" in after  # the old comment's column
    assert "from `make tune` (docs/tuning.md)" not in after and "2 OpenMP threads collapse" not in after
    assert "other core is busy" not in after  # the old comment's continuation line went with it
    assert "  maxBatchDelay: 20         # ms to wait for a batch to fill before running a partial one" in after
    changed_lines = {"minWorkers", "maxWorkers", "batchSize", "intraOpThreads", "other core is busy"}
    for line in before.splitlines():
        if not any(key in line for key in changed_lines):
            assert line in after.splitlines(), line  # every other line, comments included, byte for byte
    assert len(after.splitlines()) == len(before.splitlines()) - 1


def test_edit_section_adds_a_missing_key_at_the_block_s_indentation():
    text = "kind: x\ntorchserve:\n    batchSize: 4   # b\n    responseTimeout: 60\n                   # more\nhandler:\n  topk: 5\n"
    out, changed = edit_section(text, "torchserve", {"maxBatchDelay": 5, "batchSize": 4}, "n")
    assert changed == ["torchserve.maxBatchDelay"]
    assert out == text.replace("# more\n", "# more\n    maxBatchDelay: 5        # n\n")
    assert yaml.safe_load(out)["torchserve"] == {"batchSize": 4, "responseTimeout": 60, "maxBatchDelay": 5}
    out, changed = edit_section("kind: x\n", "handler", {"intraOpThreads": 2}, "n")
    assert yaml.safe_load(out) == {"kind": "x", "handler": {"intraOpThreads": 2}}


def report_for(decl, winner, tuning):
    return {"host": host_cpu(), "when": "2026-01-01T00:00:00", "tuning": tuning, "model": decl.name}


def winner_of(decl, fmt=None):
    return entry(f"{decl.name}_x", fmt or decl.format, decl.precision, throughput=120.0, speedup=1.1,
                 agreement={"top1_agreement": 1.0})


def test_declare_writes_the_tuned_batching_even_when_the_variant_stays(tmp_path, monkeypatch):
    out, _ = run_tuning(tmp_path, monkeypatch, [point(1, 2, 8, 5, 150, 300)])
    models, before = copy_model(tmp_path)
    decl = load("mobilenet_v2", str(models))
    said = optimize.declare(decl, winner_of(decl), report_for(decl, None, out), argparse.Namespace(dry_run=True))
    assert said.startswith("--dry-run: would write") and "batchSize 8" in said and "intraOpThreads 2" in said
    assert (models / "mobilenet_v2" / "model.yaml").read_text() == before
    said = optimize.declare(decl, winner_of(decl), report_for(decl, None, out), argparse.Namespace(dry_run=False))
    assert "torchserve.batchSize" in said and "handler.intraOpThreads" in said
    loaded = load("mobilenet_v2", str(models))
    assert (loaded.torchserve["batchSize"], loaded.torchserve["maxBatchDelay"], loaded.torchserve["minWorkers"],
            loaded.handler["intraOpThreads"]) == (8, 5, 1, 2)
    assert "make optimize 2026-01-01, tuned on the winner: 1 worker(s) x 2 thread(s)" in \
        (models / "mobilenet_v2" / "model.yaml").read_text()


def test_declare_leaves_the_batching_when_no_point_met_the_target(tmp_path, monkeypatch):
    out, _ = run_tuning(tmp_path, monkeypatch, ROWS, p99_ms=100)
    models, before = copy_model(tmp_path)
    decl = load("mobilenet_v2", str(models))
    said = optimize.declare(decl, winner_of(decl), report_for(decl, None, out), argparse.Namespace(dry_run=False))
    assert said.startswith("unchanged") and (models / "mobilenet_v2" / "model.yaml").read_text() == before
    other = "torchscript" if decl.format != "torchscript" else "onnx"
    said = optimize.declare(decl, winner_of(decl, other), report_for(decl, None, out), argparse.Namespace(dry_run=False))
    loaded = load("mobilenet_v2", str(models))
    assert loaded.format == other and loaded.torchserve == decl.torchserve and loaded.handler == decl.handler
    assert "torchserve." not in said and "handler." not in said


# ---- the report ----------------------------------------------------------------------------------------------
def test_the_report_has_the_tuning_table_and_the_verdict(tmp_path, monkeypatch):
    out, _ = run_tuning(tmp_path, monkeypatch, ROWS)
    text = "\n".join(optimize_report.tuning_lines({"tuning": out, "tune": "-"}))
    assert "## Batching, tuned on the winner" in text and "m_onnx_fp32.mar" in text and "2x1, 1x2" in text
    assert text.count("\n| 2 | 1 | ") == 3 and "| 170.0 |" in text  # every point, the failed one too
    assert "**Chosen:** 2 worker(s) x 1 thread(s), batchSize 4, maxBatchDelay 20 ms: 120.0 req/s" in text
    none, _ = run_tuning(tmp_path, monkeypatch, ROWS, p99_ms=100)
    assert "**No point chosen:** none of the 5 point(s) met p99 <= 100 ms" in \
        "\n".join(optimize_report.tuning_lines({"tuning": none}))
    skipped = optimize_tune.skipped("--no-tune: the batching is left as declared", 500, 16)
    assert "Not tuned: --no-tune" in "\n".join(optimize_report.tuning_lines({"tuning": skipped, "tune": "x"}))
