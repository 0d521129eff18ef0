"""Variant archives of each bundled model, one per serving format it can give (and int8), built with tskit.

For a served declaration `m`: `m_torchscript`, `m_onnx`, `m_aoti` (fp32), and an int8 variant: a
declared one (serve: false, same kind and source, precision int8: e.g. minilm_topics_int8) or else
`m_onnx_int8` for image classifiers (static int8, ONNX Runtime) and `m_torchscript_int8` for text
classifiers (dynamic int8 Linear layers). Each keeps the declaration's `torchserve:` and `handler:`
settings, so every variant is served with the same workers and batching.

Builds go to the bench's own folder (build/bench/ by default), each in a subprocess with a time limit
(an AOTInductor compile can be slow; a failure is reported, not fatal), and are reused while the
declaration, tskit, the handlers and the model's files are unchanged.

    python -m benchkit.variants <declaration.json> <store> <build_dir>   (one build; used by build())
"""

import dataclasses
import glob
import hashlib
import json
import os
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from typing import List, Optional

from handlers.model_settings import FORMATS
from tskit.declaration import REPO, Declaration, declared
from tskit.declaration import load as load_declaration
from tskit import kinds

STORE_DIR = os.path.join(REPO, "model_store")
BUILD_DIR = os.path.join(REPO, "build")

FORMAT_ORDER = ("torchscript", "onnx", "aoti", "openvino")
REFERENCE_FORMAT = "torchscript"  # fp32 TorchScript: the reference every variant is compared with


@dataclass
class Variant:
    name: str
    base: str                 # the served model it is a variant of
    declaration: Declaration
    archive: str = ""         # the built .mar
    build: Optional[dict] = None
    error: str = ""
    cached: bool = False

    @property
    def format(self) -> str:
        return self.declaration.format

    @property
    def precision(self) -> str:
        return self.declaration.precision

    @property
    def label(self) -> str:
        return f"{self.format} {self.precision}"

    @property
    def is_reference(self) -> bool:
        return self.format == REFERENCE_FORMAT and self.precision == "fp32"


def plan(base: Declaration, formats=None, int8: bool = True, all_declared: Optional[List[Declaration]] = None) -> List[Variant]:
    """Every variant of `base` (a served declaration); the fp32 TorchScript reference first."""
    formats = [f for f in FORMAT_ORDER if f in (formats or FORMATS)]
    if REFERENCE_FORMAT not in formats:
        formats.insert(0, REFERENCE_FORMAT)
    out = [Variant(f"{base.name}_{f}", base.name,
                   dataclasses.replace(base, name=f"{base.name}_{f}", format=f, precision="fp32", serve=False))
           for f in formats]
    int8_format = kinds.kind(base.kind).bench_int8  # the kinds whose int8 agreement the bench measures
    if int8 and int8_format:
        siblings = [d for d in (all_declared if all_declared is not None else declared())
                    if not d.serve and d.kind == base.kind and d.source == base.source and d.precision == "int8"]
        # the declared int8 variant's settings (e.g. minilm_topics_int8), else the base's, in tskit's int8 form;
        # named <base>_<format>_int8 either way, so it never collides with a (B) archive of the same server
        source = siblings[0] if siblings else base
        fmt = source.format if siblings else int8_format
        name = f"{base.name}_{fmt}_int8"
        out.append(Variant(name, base.name, dataclasses.replace(source, name=name, format=fmt, precision="int8",
                                                                serve=False)))
    return out


def _cache_key(declaration: Declaration) -> str:
    digest = hashlib.sha256(json.dumps(dataclasses.asdict(declaration), sort_keys=True, default=str).encode())
    files = sorted(glob.glob(os.path.join(REPO, "scripts", "tskit", "*.py")) +
                   glob.glob(os.path.join(REPO, "handlers", "*.py")) +
                   glob.glob(os.path.join(declaration.folder, "*")))
    for path in files:
        if os.path.isfile(path):
            with open(path, "rb") as f:
                digest.update(path.encode() + f.read())
    return digest.hexdigest()


def _declared_archive(variant: Variant, target: str) -> bool:
    """The variant in the base's declared format and precision is today's archive (model_store/<base>.mar,
    which `make bench` rebuilds first through `make archives`): copied under the variant's name."""
    base = variant.declaration
    mar = os.path.join(STORE_DIR, f"{variant.base}.mar")
    report = os.path.join(BUILD_DIR, variant.base, "build.json")
    try:
        declared_base = load_declaration(variant.base)
    except Exception:
        return False
    if (base.format, base.precision) != (declared_base.format, declared_base.precision) or \
            not os.path.isfile(mar) or not os.path.isfile(report):
        return False
    os.makedirs(os.path.dirname(target), exist_ok=True)
    with zipfile.ZipFile(mar) as source, zipfile.ZipFile(target, "w") as copy:
        for info in source.infolist():
            data = source.read(info)
            if info.filename == "MAR-INF/MANIFEST.json":
                manifest = json.loads(data)
                manifest["model"]["modelName"] = variant.name
                data = json.dumps(manifest, indent=2).encode()
            copy.writestr(info, data)
    with open(report, encoding="utf-8") as f:
        variant.build = json.load(f)
    variant.archive, variant.cached = target, True
    return True


def build(variant: Variant, root: str, timeout_s: float = 900, reuse: bool = True, log=print) -> Variant:
    """Build (or reuse) the variant's archive under `root`: <root>/model_store/<name>.mar. The variant in
    the declared format is model_store's archive itself (renamed), unless `reuse` is off."""
    store = os.path.join(root, "model_store")
    if reuse and _declared_archive(variant, os.path.join(store, f"{variant.name}.mar")):
        return variant
    work = os.path.join(root, "variants", variant.name)
    key_file = os.path.join(root, "variants", f"{variant.name}.key")
    target = os.path.join(store, f"{variant.name}.mar")
    key = _cache_key(variant.declaration)
    if reuse and os.path.isfile(target) and os.path.isfile(key_file):
        with open(key_file, encoding="utf-8") as f:
            cached = json.load(f)
        if cached.get("key") == key:
            variant.archive, variant.build, variant.cached = target, cached["report"], True
            return variant
    os.makedirs(store, exist_ok=True)
    os.makedirs(os.path.dirname(key_file), exist_ok=True)
    spec = os.path.join(root, "variants", f"{variant.name}.declaration.json")
    with open(spec, "w", encoding="utf-8") as f:
        json.dump(dataclasses.asdict(variant.declaration), f)
    log_path = os.path.join(root, "variants", f"{variant.name}.log")
    started = time.perf_counter()
    try:
        with open(log_path, "w", encoding="utf-8") as out:
            result = subprocess.run([sys.executable, "-m", "benchkit.variants", spec, store, work], stdout=out,
                                    stderr=subprocess.STDOUT, timeout=timeout_s, cwd=REPO)
        wall = time.perf_counter() - started
        with open(log_path, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
        report = next((json.loads(l[len("BUILD_JSON "):]) for l in reversed(lines) if l.startswith("BUILD_JSON ")), None)
        if result.returncode != 0 or report is None:
            tail = [l for l in lines if l.strip()][-3:]
            variant.error = f"build failed (exit {result.returncode}): {' | '.join(tail)[-300:]}"
            return variant
    except subprocess.TimeoutExpired:
        variant.error = f"build took over {timeout_s:.0f} s (log: {log_path})"
        return variant
    report["wall_s"] = round(wall, 1)
    variant.archive, variant.build = target, report
    with open(key_file, "w", encoding="utf-8") as f:
        json.dump({"key": key, "report": report}, f)
    return variant


def _build_one(spec: str, store: str, work: str) -> None:
    from tskit.archive import build as build_archive

    with open(spec, encoding="utf-8") as f:
        declaration = Declaration(**json.load(f))
    report = build_archive(declaration, store=store, build_dir=work, archive_name=declaration.name)
    print("BUILD_JSON " + json.dumps(report, default=str), flush=True)


if __name__ == "__main__":
    _build_one(*sys.argv[1:4])
