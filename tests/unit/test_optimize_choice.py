"""make optimize's choice (benchkit.optimize) on fabricated measurements: no server, no build.

A variant below the agreement bar is never chosen, even when it is the fastest; one that failed to build, cannot
serve on this CPU or failed under load is reported with its reason, never chosen; ties go to the declared
variant, then fp32; embeddings are judged by their smallest cosine. The declaration edit keeps comments and
every other key, and the CPU flags are read from /proc/cpuinfo's format."""

import os
import shutil

import pytest

from benchkit import optimize_choice, optimize_report
from benchkit.optimize_choice import (BELOW_BAR, BUILD_FAILED, CANNOT_SERVE, CHOSEN, KEPT, LOAD_FAILED, NOT_AVAILABLE,
                                      choose, edit_declaration, entry, host_cpu)
from support import REPO

IMAGE, TEXT, EMBEDDING = "image-classifier", "text-classifier", "text-embedding"


def measured(fmt, precision, throughput, top1=None, cosine=None, errors=0, **values):
    agreement = {"probes": 100, "failed": 0}
    if top1 is not None:
        agreement.update(top1_agreement=top1, max_prob_change=0.01)
    if cosine is not None:
        agreement.update(min_cosine=cosine, mean_cosine=cosine)
    return entry(f"m_{fmt}_{precision}", fmt, precision, throughput=throughput, rounds=[throughput, throughput],
                 errors=errors, agreement=agreement, **values)


def by_name(entries):
    return {f"{e['format']} {e['precision']}": e for e in entries}


def test_fastest_below_the_agreement_bar_is_never_chosen():
    entries = [measured("torchscript", "fp32", 150, top1=1.0), measured("onnx", "fp32", 180, top1=1.0),
               measured("onnx", "int8", 400, top1=0.77), measured("aoti", "fp32", 160, top1=0.995)]
    winner, why = choose(entries, IMAGE, ("torchscript", "fp32"))
    assert (winner["format"], winner["precision"]) == ("onnx", "fp32")
    rows = by_name(entries)
    assert rows["onnx int8"]["status"] == BELOW_BAR and "77.0% < 99.0%" in rows["onnx int8"]["reason"]
    assert rows["onnx fp32"]["status"] == CHOSEN and rows["aoti fp32"]["status"] == KEPT
    assert "faster but not kept: onnx int8" in why


def test_exactly_at_the_bar_is_kept_and_just_below_is_not():
    entries = [measured("torchscript", "fp32", 100, top1=1.0), measured("onnx", "int8", 300, top1=0.99)]
    winner, _ = choose(entries, IMAGE, ("torchscript", "fp32"))
    assert winner["precision"] == "int8"
    entries = [measured("torchscript", "fp32", 100, top1=1.0), measured("onnx", "int8", 300, top1=0.9899)]
    winner, _ = choose(entries, IMAGE, ("torchscript", "fp32"))
    assert winner["precision"] == "fp32"


def test_a_failed_agreement_probe_is_below_the_bar():
    fast = measured("onnx", "int8", 300, top1=1.0)
    fast["agreement"]["failed"] = 2
    winner, _ = choose([measured("torchscript", "fp32", 100, top1=1.0), fast], IMAGE, ("torchscript", "fp32"))
    assert winner["precision"] == "fp32" and fast["status"] == BELOW_BAR and "2 agreement probe(s) failed" in fast["reason"]


def test_unsupported_and_failed_variants_are_reported_not_chosen():
    failed_build = entry("m_aoti", "aoti", "fp32", status=BUILD_FAILED, reason="build failed (exit 1): no compiler")
    no_cpu = entry("m_onnx_int8", "onnx", "int8", status=CANNOT_SERVE, reason="illegal instruction (VNNI)")
    bf16 = entry("m_torchscript_bf16", "torchscript", "bf16", status=NOT_AVAILABLE, reason="emulated here")
    under_load = measured("onnx", "fp32", 500, top1=1.0, errors=3, reason="3 failed request(s): status 500")
    entries = [measured("torchscript", "fp32", 100, top1=1.0), failed_build, no_cpu, bf16, under_load]
    winner, _ = choose(entries, IMAGE, ("onnx", "fp32"))
    assert (winner["format"], winner["precision"]) == ("torchscript", "fp32")
    assert (failed_build["status"], no_cpu["status"], bf16["status"]) == (BUILD_FAILED, CANNOT_SERVE, NOT_AVAILABLE)
    assert failed_build["reason"] and no_cpu["reason"] and bf16["reason"]
    assert under_load["status"] == LOAD_FAILED and "status 500" in under_load["reason"]
    # every candidate stays in the report, with its status
    assert len(entries) == 5 and all(e["status"] for e in entries)


def test_nothing_kept_means_no_winner():
    entries = [entry("m_ts", "torchscript", "fp32", status=BUILD_FAILED, reason="x"),
               measured("onnx", "int8", 300, top1=0.5)]
    winner, why = choose(entries, IMAGE, ("torchscript", "fp32"))
    assert winner is None and "left as it is" in why
    assert not any(e["status"] == CHOSEN for e in entries)


def test_a_tie_goes_to_the_declared_variant():
    entries = [measured("torchscript", "fp32", 200, top1=1.0), measured("onnx", "fp32", 196, top1=1.0)]
    winner, why = choose(entries, IMAGE, ("onnx", "fp32"))
    assert winner["format"] == "onnx" and "tie" in why and "declared" in why
    # beyond the margin the faster one wins, declared or not
    entries = [measured("torchscript", "fp32", 220, top1=1.0), measured("onnx", "fp32", 196, top1=1.0)]
    winner, _ = choose(entries, IMAGE, ("onnx", "fp32"))
    assert winner["format"] == "torchscript"


def test_overlapping_rounds_are_a_tie_and_clear_ones_are_not():
    # the mean says aoti (151 vs 120), but onnx's best round is above aoti's worst: drift, not a difference
    aoti = measured("aoti", "fp32", 151, top1=1.0)
    aoti["rounds"] = [158, 144]
    onnx = measured("onnx", "fp32", 120, top1=1.0)
    onnx["rounds"] = [152, 87]
    winner, why = choose([aoti, onnx], IMAGE, ("onnx", "fp32"))
    assert winner is onnx and "rounds overlapping" in why
    # every round of int8 above every round of fp32: a clear win, declared or not
    int8 = measured("torchscript", "int8", 311, top1=1.0)
    int8["rounds"] = [299, 323]
    onnx["rounds"] = [147, 150]
    onnx["status"] = ""
    winner, _ = choose([onnx, int8], TEXT, ("onnx", "fp32"))
    assert winner is int8 and onnx["status"] == KEPT


def test_a_tie_goes_to_fp32_then_higher_agreement_then_format_order():
    entries = [measured("torchscript", "int8", 201, top1=0.995), measured("onnx", "fp32", 200, top1=1.0)]
    winner, _ = choose(entries, TEXT, ("aoti", "fp32"))
    assert (winner["format"], winner["precision"]) == ("onnx", "fp32")
    entries = [measured("aoti", "fp32", 200, top1=1.0), measured("onnx", "fp32", 200, top1=0.995)]
    assert choose(entries, TEXT, ("torchscript", "fp32"))[0]["format"] == "aoti"
    entries = [measured("aoti", "fp32", 200, top1=1.0), measured("onnx", "fp32", 200, top1=1.0)]
    assert choose(entries, TEXT, ("torchscript", "fp32"))[0]["format"] == "onnx"


def test_embeddings_are_judged_by_their_smallest_cosine():
    entries = [measured("torchscript", "fp32", 100, cosine=1.0), measured("onnx", "fp32", 120, cosine=0.99999),
               measured("torchscript", "int8", 300, cosine=0.9985)]
    winner, why = choose(entries, EMBEDDING, ("torchscript", "fp32"))
    assert winner["format"] == "onnx"
    low = by_name(entries)["torchscript int8"]
    assert low["status"] == BELOW_BAR and "0.99850 < 0.99900" in low["reason"]
    # a top-1 figure is no substitute for the cosine
    odd = measured("onnx", "int8", 500, top1=1.0)
    assert choose([odd], EMBEDDING, ("onnx", "fp32"))[0] is None and odd["status"] != KEPT



def test_segmenters_are_judged_by_the_share_of_equal_pixels_in_their_worst_probe():
    def mask(fmt, throughput, pixels):
        e = measured(fmt, "fp32", throughput)
        e["agreement"].update(pixel_agreement=pixels, mean_pixel_agreement=pixels)
        return e

    entries = [mask("torchscript", 100, 1.0), mask("onnx", 130, 0.995), mask("openvino", 150, 0.98)]
    winner, _ = choose(entries, "image-segmenter", ("torchscript", "fp32"))
    assert winner["format"] == "onnx"
    assert by_name(entries)["openvino fp32"]["status"] == BELOW_BAR
    assert "pixel agreement 98.000% < 99.000%" in by_name(entries)["openvino fp32"]["reason"]

# ---- bf16 -------------------------------------------------------------------------------------------------
BF16_HOST = {"model": "Bf16 CPU", "flags": ["avx2", "avx512f", "avx512_bf16", "amx_bf16"], "bf16": True}
AVX2_HOST = {"model": "AVX2 CPU", "flags": ["avx2", "fma"], "bf16": False}


# the bf16 formats planned in the quick and the full form: images AOTInductor only (TorchScript bf16 is slower than
# fp32), even in the quick form that leaves fp32 AOTInductor out; text TorchScript, and AOTInductor in the full form;
# OpenVINO's bf16 hint in the full form, beside them
@pytest.mark.parametrize("model, quick_formats, full_formats", [
    ("mobilenet_v2", ["aoti"], ["aoti", "openvino"]),
    ("minilm_topics", ["torchscript"], ["torchscript", "aoti", "openvino"]),
    ("minilm_embedding", ["torchscript"], ["torchscript", "aoti", "openvino"]),
])
def test_bf16_is_a_candidate_only_where_the_cpu_has_it(model, quick_formats, full_formats):
    from tskit.declaration import load

    decl = load(model)
    for quick, bf16_formats in ((True, quick_formats), (False, full_formats)):
        plan = optimize_choice.candidates(decl, quick=quick, all_declared=[], host=BF16_HOST)
        bf16 = [v for v in plan if v.precision == "bf16"]
        assert [(v.name, v.format) for v in bf16] == [(f"{model}_{f}_bf16", f) for f in bf16_formats]
        assert all(not v.declaration.serve and v.declaration.torchserve == decl.torchserve for v in bf16)
        assert plan[0].is_reference and any(v.precision == "int8" for v in plan)
        assert optimize_choice.bf16_entry(decl, BF16_HOST) is None  # measured like the others, no extra row
        without = optimize_choice.candidates(decl, quick=quick, all_declared=[], host=AVX2_HOST)
        assert [v.name for v in without] == [v.name for v in plan if v.precision != "bf16"]
    # --formats onnx: no bf16 format of the kind is listed, so its first one is measured
    only_onnx = optimize_choice.candidates(decl, formats=["onnx"], all_declared=[], host=BF16_HOST)
    assert [v.format for v in only_onnx if v.precision == "bf16"] == quick_formats[:1]
    row = optimize_choice.bf16_entry(decl, AVX2_HOST)
    assert (row["status"], row["format"], row["precision"]) == (NOT_AVAILABLE, full_formats[0], "bf16")
    assert "neither avx512_bf16 nor AMX" in row["reason"] and "emulated, slower" in row["reason"]
    # an unmeasured row is reported, never chosen and never a failure of the choice
    winner, _ = choose([measured("torchscript", "fp32", 100, top1=1.0, cosine=1.0), row], decl.kind,
                       ("torchscript", "fp32"))
    assert winner["precision"] == "fp32" and row["status"] == NOT_AVAILABLE


def test_the_bench_plan_has_no_bf16():
    from benchkit import variants
    from tskit.declaration import load

    assert all(v.precision != "bf16" for v in variants.plan(load("mobilenet_v2"), all_declared=[]))


def test_bf16_below_the_bar_is_never_chosen_even_when_fastest():
    entries = [measured("torchscript", "fp32", 100, top1=1.0), measured("aoti", "bf16", 250, top1=0.985)]
    winner, why = choose(entries, IMAGE, ("torchscript", "fp32"))
    assert winner["precision"] == "fp32" and entries[1]["status"] == BELOW_BAR
    assert "98.5% < 99.0%" in entries[1]["reason"] and "faster but not kept: aoti bf16" in why
    entries = [measured("torchscript", "fp32", 100, cosine=1.0), measured("torchscript", "bf16", 270, cosine=0.9987)]
    winner, _ = choose(entries, EMBEDDING, ("torchscript", "fp32"))
    assert winner["precision"] == "fp32" and "0.99870 < 0.99900" in entries[1]["reason"]
    # at the bar and faster beyond the tie margin, bf16 wins; within the margin fp32 does
    entries = [measured("torchscript", "fp32", 100, cosine=1.0), measured("torchscript", "bf16", 270, cosine=0.9995)]
    assert choose(entries, EMBEDDING, ("torchscript", "fp32"))[0]["precision"] == "bf16"
    entries = [measured("onnx", "fp32", 100, top1=1.0), measured("torchscript", "bf16", 102, top1=1.0)]
    winner, why = choose(entries, TEXT, ("aoti", "fp32"))
    assert winner["precision"] == "fp32" and "fp32 before int8 or bf16" in why


DECLARATION = """\
# m: the one declaration of this model.
kind: image-classifier
source: python:tskit.bundled:mobilenet_v2   # real weights
format: onnx                # ONNX Runtime: 1.15x
                            # measured side by side
precision: fp32
version: "1.0"

torchserve:
  batchSize: 4              # from make tune
handler:
  topk: 5                     # predictions per answer
"""


def test_the_declaration_edit_keeps_comments_and_keys():
    text, changed = edit_declaration(DECLARATION, {"format": "torchscript", "precision": "fp32"}, "make optimize: x")
    assert changed == ["format"]
    assert "format: torchscript" in text and "# make optimize: x" in text
    assert "ONNX Runtime: 1.15x" not in text and "measured side by side" not in text  # the old value's comment
    for kept in ("# m: the one declaration", "source: python:tskit.bundled:mobilenet_v2   # real weights",
                 "precision: fp32\n", "batchSize: 4              # from make tune", "topk: 5                     #"):
        assert kept in text
    assert text.count("\n") == DECLARATION.count("\n") - 1
    same, changed = edit_declaration(DECLARATION, {"format": "onnx", "precision": "fp32"}, "n")
    assert same == DECLARATION and changed == []


def test_the_declaration_edit_adds_a_missing_precision():
    text, changed = edit_declaration(DECLARATION.replace("precision: fp32\n", ""), {"precision": "int8"}, "n")
    assert changed == ["precision"]
    lines = text.splitlines()
    assert lines[lines.index("                            # measured side by side") + 1].startswith("precision: int8")


def test_write_choice_rewrites_a_real_declaration_that_still_loads(tmp_path):
    models = tmp_path / "models"
    shutil.copytree(os.path.join(REPO, "models", "minilm_topics"), models / "minilm_topics")
    before = (models / "minilm_topics" / "model.yaml").read_text()
    changed = optimize_choice.write_choice("minilm_topics", "torchscript", "int8", "make optimize: test", str(models))
    after = (models / "minilm_topics" / "model.yaml").read_text()
    assert set(changed) == {"format", "precision"}
    from tskit.declaration import load

    loaded = load("minilm_topics", str(models))
    assert (loaded.format, loaded.precision) == ("torchscript", "int8")
    assert loaded.torchserve == load("minilm_topics").torchserve and loaded.handler == load("minilm_topics").handler
    kept_comments = [l for l in before.splitlines() if l.lstrip().startswith("#")]
    assert all(c in after for c in kept_comments)


def test_write_choice_writes_a_bf16_winner(tmp_path):
    models = tmp_path / "models"
    shutil.copytree(os.path.join(REPO, "models", "mobilenet_v2"), models / "mobilenet_v2")
    changed = optimize_choice.write_choice("mobilenet_v2", "aoti", "bf16", "make optimize: bf16 2x", str(models))
    assert set(changed) == {"format", "precision"}
    from tskit.declaration import load

    loaded = load("mobilenet_v2", str(models))
    assert (loaded.format, loaded.precision) == ("aoti", "bf16")
    assert "precision: bf16" in (models / "mobilenet_v2" / "model.yaml").read_text()


def test_write_choice_restores_a_declaration_that_would_not_load(tmp_path):
    models = tmp_path / "models"
    shutil.copytree(os.path.join(REPO, "models", "minilm_topics"), models / "minilm_topics")
    before = (models / "minilm_topics" / "model.yaml").read_text()
    with pytest.raises(Exception):
        optimize_choice.write_choice("minilm_topics", "torchscript", "fp8", "n", str(models))
    assert (models / "minilm_topics" / "model.yaml").read_text() == before


def test_cpu_flags_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Test CPU\nflags\t\t: fpu sse avx2 fma avx512f avx512_vnni\n\n"
                       "processor\t: 1\nmodel name\t: Test CPU\nflags\t\t: fpu sse avx2 fma avx512f avx512_vnni\n")
    host = host_cpu(str(cpuinfo))
    assert host["model"] == "Test CPU"
    assert host["flags"] == ["avx2", "fma", "avx512f", "avx512_vnni"] and not host["bf16"]
    assert "avx512_bf16" in host["missing"]
    cpuinfo.write_text("model name\t: Bf16 CPU\nflags\t\t: avx2 avx512f avx512_bf16 amx_tile amx_bf16\n")
    host = host_cpu(str(cpuinfo))
    assert host["bf16"] and host["flags"] == ["avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16"]


def test_the_report_names_flags_speed_and_agreement(tmp_path):
    entries = [measured("torchscript", "fp32", 150, top1=1.0, reference=True, build_s=3.2),
               measured("onnx", "int8", 400, top1=0.77, build_s=20.0, build_cached=True),
               entry("m_aoti_bf16", "aoti", "bf16", status=NOT_AVAILABLE, reason="emulated here")]
    winner, why = choose(entries, IMAGE, ("torchscript", "fp32"))
    host = host_cpu()
    report = {"model": "m", "kind": IMAGE, "host": host, "runtimes": {"torch": "x"}, "quick": True,
              "batching": "batchSize 4", "run": {"concurrency": 16, "workload": "jpeg_640x480", "rounds": 2},
              "variants": entries, "winner": "torchscript fp32", "why": why, "declaration": "unchanged",
              "tune": "none"}
    optimize_report.write_report(report, str(tmp_path))
    text = (tmp_path / "report.md").read_text()
    assert "150.0 (150.0, 150.0)" in text and "77.0%" in text and "not available here" in text
    assert "below agreement bar" in text and "**Winner:** torchscript fp32" in text and "20.0 (cached)" in text
    assert all(flag in text for flag in host["flags"])
    assert (tmp_path / "speed.png").stat().st_size > 1000 and (tmp_path / "results.json").stat().st_size > 100
