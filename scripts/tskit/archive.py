"""Build `model_store/<name>.mar` from a declaration: source -> serving format -> checked -> archive.

Everything the worker needs travels inside the archive, so it loads on any TorchServe 0.12 with the
pinned Python packages: the model file, labels (index_to_name.json), the tokenizer, model-config.yaml
(the declaration's `torchserve:` keys at top level and its `handler:` section), and every handler module.
Writes `build/<name>/build.json` (format, build time, parity with the source) and `build/<name>/deps.mk`
(the files the archive was built from, so `make` rebuilds it when they change).
"""

import glob
import json
import os
import shutil
import subprocess
import sys
import time
from typing import List, Optional

import torch
import yaml

from handlers.classification import load_labels
from handlers.cpu_requirements import build_host_requirement
from handlers.model_settings import check_labels
from tskit import kinds
from tskit.archive_queue import QUEUE_KEY
from tskit.causal_lm import build_folder, check_caps, load_causal_lm
from tskit.declaration import REPO, Declaration, DeclarationError
from tskit.formats import build_model_file
from tskit.precision import to_precision
from tskit.sources import LoadedSource, SourceError, load_source

HANDLERS_DIR = os.path.join(REPO, "handlers")
BUILD_DIR = os.path.join(REPO, "build")
STORE_DIR = os.path.join(REPO, "model_store")


def build(declaration: Declaration, store: str = STORE_DIR, build_dir: Optional[str] = None,
          version: Optional[str] = None, archive_name: Optional[str] = None) -> dict:
    """Build the archive; returns the build report. `archive_name` names the .mar file (default: the model)."""
    started = time.perf_counter()
    archive_name = archive_name or declaration.name
    work = build_dir or os.path.join(BUILD_DIR, archive_name)
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    torch.manual_seed(0)
    if kinds.kind(declaration.kind).model_input.builds_folder:
        return build_generator(declaration, store, work, version or declaration.version, archive_name, started)
    kind = kinds.kind(declaration.kind)
    loaded = load_source(declaration.source, kind, declaration.folder)
    # the settings the worker will read (model-config.yaml), checkpoint limits included: the export's
    # dynamic sequence range and the parity check must use the same maxTokens as the server
    settings = kind.parse_settings(served_handler(declaration, loaded))
    fp32_module = loaded.module
    loaded = to_precision(loaded, kind, declaration, settings, work)
    # int8 and bf16 differ from fp32 by design: their difference from the fp32 source is reported
    # (build.json's max_abs_diff), not refused; agreement on real data is judged by make bench / make optimize
    report = build_model_file(loaded, kind, declaration.format, settings, work,
                              strict=declaration.precision == "fp32", reference_module=fp32_module)
    extra = write_side_files(declaration, loaded, settings, work, report["outputs"]) + report.pop("extra")
    config_file = write_model_config(declaration, loaded, work)
    mar = archive(declaration, report["file"], extra, config_file, store, version or declaration.version,
                  archive_name, work)
    report.update(model=declaration.name, kind=declaration.kind, precision=declaration.precision,
                  source=loaded.description, archive=mar, total_s=round(time.perf_counter() - started, 1),
                  built_for_isa=settings.builtForIsa, required_cpu_flags=settings.requiredCpuFlags)
    with open(os.path.join(work, "build.json"), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
    write_deps(declaration, loaded, mar, work)
    return report


def build_generator(declaration: Declaration, store: str, work: str, version: str, archive_name: str,
                    started: float) -> dict:
    """A causal LM: its folder (tskit.causal_lm: weights or decoder.onnx) is the archive's model, at its root."""
    if declaration.precision != "fp32":
        raise DeclarationError(f"{declaration.path}: a text-generator is built fp32 (precision: fp32); "
                               f"handler.dtype: bfloat16 serves it in bf16")
    settings = kinds.parse_settings(declaration.kind, served_handler(declaration, None))  # before the long load
    lm = load_causal_lm(declaration.source, declaration.folder)
    check_caps(lm, settings)
    report = build_folder(lm, work, declaration.format)
    config_file = write_model_config(declaration, None, work)
    mar = archive(declaration, report["file"], report.pop("extra"), config_file, store, version, archive_name, work)
    report.update(model=declaration.name, kind=declaration.kind, precision="fp32", source=lm.description,
                  archive=mar, total_s=round(time.perf_counter() - started, 1))
    with open(os.path.join(work, "build.json"), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
    write_deps(declaration, LoadedSource(lm.description, (), dependencies=lm.dependencies), mar, work)
    return report


def write_side_files(declaration: Declaration, loaded: LoadedSource, settings, work: str, width: int) -> List[str]:
    """Labels and tokenizer into the archive; labels checked against the model's `width` outputs now, not at load."""
    files = []
    if settings.labelsFile:
        labels = resolve_labels(declaration, loaded) or [str(i) for i in range(width)]
        check_labels(labels, width, labels_source(declaration))
        path = os.path.join(work, settings.labelsFile)
        with open(path, "w", encoding="utf-8") as f:
            json.dump({str(i): name for i, name in enumerate(labels)}, f, indent=0, ensure_ascii=False)
        files.append(path)
    if kinds.kind(declaration.kind).model_input.checkpoint_folder:
        if not loaded.tokenizer_file:
            raise SourceError(f"{loaded.description} brings no tokenizer.json")
        path = os.path.join(work, settings.tokenizerFile)
        shutil.copy(loaded.tokenizer_file, path)
        files.append(path)
    return files


def labels_source(declaration: Declaration) -> str:
    return declaration.resolve(declaration.labels) if declaration.labels else "the source's labels"


def resolve_labels(declaration: Declaration, loaded: LoadedSource) -> List[str]:
    """The declaration's labels file (a JSON list or an index_to_name.json map), else the source's own,
    else none (the caller names the classes "0".."C-1")."""
    if declaration.labels:
        path = declaration.resolve(declaration.labels)
        with open(path, encoding="utf-8") as f:
            document = json.load(f)
        if isinstance(document, list) and all(isinstance(x, str) for x in document):
            return document
        if isinstance(document, dict):
            return load_labels(path)
        raise DeclarationError(f"{path}: expected a JSON list of names or an index_to_name.json map")
    return loaded.labels or []


def served_handler(declaration: Declaration, loaded: Optional[LoadedSource]) -> dict:
    """The `handler:` section of model-config.yaml: the declaration's, with the model format, for aoti the
    CPU instruction sets its kernels need (handlers/cpu_requirements) and, for text, the checkpoint's own
    limits unless the declaration says otherwise."""
    handler = dict(declaration.handler, modelFormat=declaration.format)
    if declaration.format == "aoti":  # its kernels are compiled for this host's CPU: the worker checks its own
        handler["builtForIsa"], handler["requiredCpuFlags"] = build_host_requirement()
    if kinds.kind(declaration.kind).model_input.checkpoint_folder:
        handler.setdefault("maxTokens", loaded.max_tokens or 512)
        handler.setdefault("padToken", loaded.pad_token or "[PAD]")
    return handler


def write_model_config(declaration: Declaration, loaded: Optional[LoadedSource], work: str) -> str:
    """model-config.yaml: TorchServe's keys at the top, the handler's typed settings under `handler:`. No
    jobQueueSize: the queue is the model's share of a server's budget, which `make config` writes into the
    served archive (tskit.archive_queue); the declaration's jobQueueSize is what the model asks for."""
    torchserve = {k: v for k, v in declaration.torchserve.items() if k != QUEUE_KEY}
    document = dict(torchserve, handler=served_handler(declaration, loaded))
    path = os.path.join(work, "model-config.yaml")
    with open(path, "w", encoding="utf-8") as f:
        f.write(f"# Written by scripts/tskit from {os.path.relpath(declaration.path, REPO)}: edit that file.\n")
        yaml.safe_dump(document, f, sort_keys=False)
    return path


def stage_runtime(handler_file: str, work: str) -> str:
    """A folder holding the package `handlers/` (every module but the entry point): the archive carries it whole
    (small), so it needs nothing from this repo. torch-model-archiver copies an extra-files folder's contents to
    the archive's root, and TorchServe puts the model folder on the worker's PYTHONPATH (ahead of site-packages):
    the entry module at the root imports `handlers.<module>` from the archive, as it does here from the repo."""
    folder = os.path.join(work, "runtime")
    package = os.path.join(folder, "handlers")
    os.makedirs(package)
    for path in sorted(glob.glob(os.path.join(HANDLERS_DIR, "*.py"))):
        if os.path.basename(path) != handler_file:
            shutil.copy2(path, package)
    return folder


def archive(declaration: Declaration, model_file: str, extra: List[str], config_file: str, store: str,
            version: str, archive_name: str, work: str) -> str:
    os.makedirs(store, exist_ok=True)
    staging = os.path.join(work, "archive")
    os.makedirs(staging, exist_ok=True)
    archiver = os.path.join(os.path.dirname(sys.executable), "torch-model-archiver")
    subprocess.run([
        archiver, "--force", "--model-name", declaration.name, "--version", version,
        "--serialized-file", model_file, "--handler", os.path.join(HANDLERS_DIR, declaration.handler_file),
        "--extra-files", ",".join([stage_runtime(declaration.handler_file, work)] + extra),
        "--config-file", config_file, "--export-path", staging,
        # uncompressed: the weights deflate by only 8%, and `make config` rewrites the archive to stamp its
        # queue (tskit.archive_queue): 0.5 s for a 90 MB text model instead of 4.4 s with deflate
        "--archive-format", "zip-store",
    ], check=True)
    target = os.path.join(store, f"{archive_name}.mar")
    shutil.move(os.path.join(staging, f"{declaration.name}.mar"), target)
    return target


def write_deps(declaration: Declaration, loaded: LoadedSource, mar: str, work: str) -> None:
    """A make fragment: the archive depends on its source files too (they may live outside the repo)."""
    files = [declaration.path] + [p for p in loaded.dependencies if os.path.isfile(p)]
    if declaration.labels:
        files.append(declaration.resolve(declaration.labels))
    escaped = " ".join(p.replace(" ", "\\ ") for p in files)
    with open(os.path.join(work, "deps.mk"), "w", encoding="utf-8") as f:
        f.write(f"{os.path.relpath(mar, REPO)}: {escaped}\n")
