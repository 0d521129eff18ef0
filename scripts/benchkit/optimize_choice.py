"""make optimize's choice: the host's CPU flags, the candidate variants, which one wins and why, and the
declaration's two lines it writes (format, precision). Pure over measurements: tests fabricate them.
benchkit/optimize.py measures; optimize_report.py writes the report."""

import dataclasses
import os
import platform
import re
from typing import Dict, List, Optional, Tuple

from benchkit import agreement, variants
from handlers.cpu_requirements import cpuinfo_field, cpuinfo_flags, read_cpuinfo
from tskit import kinds
from tskit.declaration import Declaration, declared
from tskit.declaration import load as load_declaration

TOP1_BAR = 0.99
COSINE_BAR = 0.999
PIXEL_BAR = 0.99  # a mask: the share of pixels given the same class, in the probe that agrees least
TIE_MARGIN = 0.03
# the kinds make optimize can judge: those with an agreement measure (and bench inputs to measure it on)
KINDS = tuple(k.name for k in kinds.with_bench_inputs() if k.agreement_metric)
# the least agreement kept, per measure
BAR_OF_METRIC = {"top1_agreement": TOP1_BAR, "min_cosine": COSINE_BAR, "pixel_agreement": PIXEL_BAR}
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
    """CPU model, logical cores and the flags of interest present (all flags where /proc/cpuinfo exists; ARM's
    `Features` too), parsed as the workers' CPU guard parses them (handlers/cpu_requirements)."""
    text = read_cpuinfo(cpuinfo) or ""
    model = cpuinfo_field(text, ("model name",)) or platform.processor() or platform.machine()
    flags = cpuinfo_flags(text, ("flags", "Features"))
    return {"model": model, "cores": os.cpu_count(), "flags": [f for f in FLAGS_OF_INTEREST if f in flags],
            "missing": [f for f in FLAGS_OF_INTEREST if f not in flags], "all_flags": len(flags),
            "bf16": any(f in flags for f in BF16_FLAGS), "machine": platform.machine()}


def runtime_versions() -> Dict[str, str]:
    out = {"python": platform.python_version()}
    for module in ("torch", "onnxruntime", "openvino"):
        try:
            out[module] = __import__(module).__version__
        except Exception:  # a runtime that is not installed: its variants fail to build, and say so
            out[module] = "not installed"
    return out


# ---- the candidates ------------------------------------------------------------------------------------------
def candidates(decl: Declaration, quick: bool = False, formats: Optional[List[str]] = None,
               all_declared: Optional[List[Declaration]] = None, host: Optional[dict] = None) -> List[variants.Variant]:
    """benchkit.variants' plan for the model (fp32 TorchScript first), with the int8 form of an embedding
    (tskit.precision makes it; the bench's plan leaves it out, as it judges classifiers' int8 only), and the
    bf16 form where `host` (default: this machine's host_cpu()) has the bf16 instructions (plans_bf16)."""
    formats = list(formats or (QUICK_FORMATS if quick else variants.FORMAT_ORDER))
    plan = variants.plan(decl, formats=formats, int8=True,
                         all_declared=all_declared if all_declared is not None else declared())
    kind = kinds.kind(decl.kind)
    # int8 is made in one format per kind, whatever `formats` lists, as the bench does
    wanted = [("int8", kind.int8_format)] if kind.int8_format and not any(v.precision == "int8" for v in plan) else []
    if "openvino" in formats and "int8" in kind.openvino_precisions:  # NNCF's int8 beside the kind's own
        wanted.append(("int8", "openvino"))
    wanted += [("bf16", fmt) for fmt in bf16_formats(decl, formats, host)]
    for precision, fmt in wanted:
        name = f"{decl.name}_{fmt}_{precision}"
        plan.append(variants.Variant(name, decl.name, dataclasses.replace(
            decl, name=name, format=fmt, precision=precision, serve=False)))
    return plan


def bf16_formats(decl: Declaration, formats: List[str], host: Optional[dict] = None) -> List[str]:
    """The kind's bf16 formats this run measures (those among `formats`, else the kind's first: QUICK=1 leaves
    AOTInductor out, yet an image classifier's bf16 is AOTInductor only), where plans_bf16."""
    if not plans_bf16(decl, host):
        return []
    kind_formats = kinds.kind(decl.kind).precision_formats("bf16")
    return [f for f in kind_formats if f in formats] or list(kind_formats[:1])


def plans_bf16(decl: Declaration, host: Optional[dict] = None) -> bool:
    """bf16 is a candidate where the CPU runs it natively (AVX512_BF16 or AMX) and the kind has a bf16 form;
    elsewhere it is emulated, slower than fp32, and not worth a build."""
    return bool((host or host_cpu())["bf16"] and kinds.kind(decl.kind).bf16_formats)


def bf16_entry(decl: Declaration, host: dict) -> Optional[dict]:
    """The report's row for bf16 where it is not a candidate (None where it is: it is measured like the others)."""
    if plans_bf16(decl, host):
        return None
    fmt = next(iter(kinds.kind(decl.kind).bf16_formats), None)
    if not fmt:
        reason = f"tskit.precision makes no bf16 form for the {decl.kind} kind"
    else:
        reason = "this CPU has neither avx512_bf16 nor AMX (bf16 would be emulated, slower than fp32): not built"
    return entry(f"{decl.name}_{fmt or 'any'}_bf16", fmt or "any", "bf16", status=NOT_AVAILABLE, reason=reason)


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
    metric = kinds.kind(kind).agreement_metric
    return metric, BAR_OF_METRIC[metric]


def threshold_of(kind: str, top1_bar: float, cosine_bar: float) -> float:
    """The bar of the kind's measure, from the caller's bars for top-1 and cosine (the others': BAR_OF_METRIC)."""
    metric, default = bar(kind)
    return {"top1_agreement": top1_bar, "min_cosine": cosine_bar}.get(metric, default)


def classify(e: dict, kind: str, top1_bar: float = TOP1_BAR, cosine_bar: float = COSINE_BAR) -> dict:
    """The status of a measured candidate (one with a status already, e.g. built or served it was not, keeps it)."""
    if e["status"] in UNMEASURED or e["status"] == NO_REFERENCE:
        return e
    metric, _ = bar(kind)
    threshold = threshold_of(kind, top1_bar, cosine_bar)
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
                       f"{metric.replace('_', ' ')} {fmt_agreement(value, kind)} < {fmt_agreement(threshold, kind)}")
    else:
        e["status"] = KEPT
    return e


def fmt_agreement(value: Optional[float], kind: str) -> str:
    return kinds.kind(kind).answer.shown(value)


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
    threshold = threshold_of(kind, top1_bar, cosine_bar)
    if not kept:
        return None, (f"no variant kept {metric.replace('_', ' ')} >= {fmt_agreement(threshold, kind)} with no "
                      "failed request: the declaration is left as it is")
    fastest = max(kept, key=lambda e: e["throughput"])
    tied = [e for e in kept if tie(e, fastest, tie_margin)]
    winner = min(tied, key=lambda e: (not e["declared"], e["precision"] != "fp32",
                                      -(e["agreement"].get(metric) or 0.0), FORMAT_RANK.get(e["format"], 99),
                                      -e["throughput"]))
    winner["status"] = CHOSEN
    why = [f"{winner['format']} {winner['precision']}: {winner['throughput']:.1f} req/s"
           + (f" ({winner['speedup']:.2f}x the fp32 reference)" if winner.get("speedup") else "")
           + f", {metric.replace('_', ' ')} {fmt_agreement(winner['agreement'].get(metric), kind)}"]
    if len(tied) > 1:
        others = ", ".join(f"{e['format']} {e['precision']} {e['throughput']:.1f}" for e in tied if e is not winner)
        reduced_tied = winner["precision"] == "fp32" and any(e["precision"] != "fp32" for e in tied)
        rule = ("the variant declared now" if winner["declared"] else "fp32 before int8 or bf16" if reduced_tied
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
def _replace_line(lines: List[str], index: int, head: str, note: str, column: int, continues) -> int:
    """lines[index] becomes `head` with `note` as its comment at `column` (its line ending kept); the comment lines
    right below it that `continues` (they went on with the old comment, which described the old value) go with
    it. Returns how many lines were removed. A line that continues a comment is never a key line, so the search
    stops at the next key whatever block it belongs to."""
    ending = lines[index][len(lines[index].rstrip("\r\n")):] or "\n"
    lines[index] = f"{head}{' ' * max(1, column - len(head))}# {note}{ending}"
    removed = 0
    while index + 1 < len(lines) and continues(lines[index + 1]):
        del lines[index + 1]
        removed += 1
    return removed


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
            _replace_line(lines, index, f"{key}: {value}", note, 28, lambda line: re.match(r"^\s+#", line))
        else:
            after = next((i for i, line in enumerate(lines) if line.startswith("format:")), len(lines) - 1)
            while after + 1 < len(lines) and re.match(r"^\s+#", lines[after + 1]):
                after += 1
            if lines and not lines[-1].endswith("\n"):
                lines[-1] += "\n"
            lines.insert(after + 1, f"{key}: {value}{' ' * max(1, 28 - len(key) - len(value) - 2)}# {note}\n")
        changed.append(key)
    return "".join(lines), changed


def edit_section(text: str, section: str, values: Dict[str, object], note: str) -> Tuple[str, List[str]]:
    """The declaration's text with each `key: value` line of `values` set inside the top-level `section:` block
    (its direct children: the first child's indentation), as edit_declaration does at the top: a changed line
    gets `note` as its comment at its old comment's column (the indented comment lines continuing the old
    comment go with it), unchanged lines stay byte for byte, a missing key is added after the block's last key
    (a missing block at the end). Returns the text and the keys changed, as `section.key`."""
    lines = text.splitlines(keepends=True)
    header = re.compile(rf"^{re.escape(section)}:\s*(#.*)?$")
    start = next((i for i, line in enumerate(lines) if header.match(line.rstrip("\r\n"))), None)
    if start is None:
        if lines and not lines[-1].endswith("\n"):
            lines[-1] += "\n"
        lines.append(f"{section}:\n")
        start = len(lines) - 1
    end = next((i for i in range(start + 1, len(lines)) if re.match(r"^[^\s#]", lines[i])), len(lines))
    indent = next((m.group(1) for m in (re.match(r"^(\s+)[^\s#]", lines[i]) for i in range(start + 1, end)) if m),
                  "  ")
    changed = []
    for key, value in values.items():
        value = str(value)
        pattern = re.compile(rf"^{indent}{re.escape(key)}:(\s*)([^\s#]+)?(\s*)(#.*)?$")
        index = next((i for i in range(start + 1, end) if pattern.match(lines[i].rstrip("\r\n"))), None)
        head = f"{indent}{key}: {value}"
        if index is not None:
            match = pattern.match(lines[index].rstrip("\r\n"))
            if (match.group(2) or "").strip("'\"") == value:
                continue
            column = match.start(4) if match.group(4) else 28
            end -= _replace_line(lines, index, head, note, column, lambda line: _continues(line, indent))
        else:
            last = max((i for i in range(start + 1, end) if lines[i].startswith(indent) and
                        re.match(r"^\s+[^\s#]", lines[i])), default=start)
            while last + 1 < end and _continues(lines[last + 1], indent):
                last += 1
            lines.insert(last + 1, f"{head}{' ' * max(1, 28 - len(head))}# {note}\n")
            end += 1
        changed.append(f"{section}.{key}")
    return "".join(lines), changed


def _continues(line: str, indent: str) -> bool:
    """A comment-only line indented deeper than the block's keys: the continuation of the comment above it."""
    match = re.match(r"^(\s*)#", line)
    return bool(match) and len(match.group(1)) > len(indent)


def write_choice(name: str, fmt: str, precision: str, note: str, models_dir: Optional[str] = None,
                 batching: Optional[Dict[str, Dict[str, int]]] = None, batching_note: str = "") -> List[str]:
    """Set format/precision in models/<name>/model.yaml (textually), and the tuned `batching` values
    ({"torchserve": {"batchSize": 4, ...}, "handler": {"intraOpThreads": 1}}, with `batching_note` as the changed
    lines' comment) when given; the result must load as a declaration with those values, else the file is
    restored and the error raised. Returns the keys changed (`section.key` for the batching ones)."""
    from tskit.declaration import MODELS_DIR

    models_dir = models_dir or MODELS_DIR
    path = os.path.join(models_dir, name, "model.yaml")
    with open(path, encoding="utf-8") as f:
        before = f.read()
    after, changed = edit_declaration(before, {"format": fmt, "precision": precision}, note)
    for section, values in (batching or {}).items():
        after, more = edit_section(after, section, values, batching_note or note)
        changed += more
    if not changed:
        return []
    with open(path, "w", encoding="utf-8") as f:
        f.write(after)
    try:
        loaded = load_declaration(name, models_dir)
        assert (loaded.format, loaded.precision) == (fmt, precision), (loaded.format, loaded.precision)
        for section, values in (batching or {}).items():
            written = getattr(loaded, section)
            assert all(written.get(k) == v for k, v in values.items()), (section, written, values)
    except Exception:
        with open(path, "w", encoding="utf-8") as f:
            f.write(before)
        raise
    return changed
