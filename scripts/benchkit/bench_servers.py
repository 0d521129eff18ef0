"""make bench's servers and archives: the declarations it reads, (A)'s stock archive, (P)'s archive
without the model, the one bench server that holds (A), (A2), (B) and (P), and its CPU time."""

import io
import json
import os
import shutil
import subprocess
import sys
import zipfile
from typing import Dict, List

import psutil
import torch
import yaml

from benchkit.archives import copy_archive
from tskit.unpacked import peek
from benchkit.plan import PIPELINE_SUFFIX, STOCK_PREFIX, base_of, stock_b_layout_name
from tskit import declaration as declarations
from tskit import kinds
from tskit.server import REPO, TorchServe, free_ports, private_server




STORE = os.path.join(REPO, "model_store")
BENCH_BUILD = os.path.join(REPO, "build", "bench")

PIPELINE = "mobilenet_v2_without_model"


# ---- declarations ---------------------------------------------------------------------------------
def declared() -> Dict[str, declarations.Declaration]:
    return {d.name: d for d in declarations.declared()}


def kind_of(model: str, decls: Dict[str, declarations.Declaration]) -> str:
    base = base_of(model)
    return decls[base].kind if base in decls else unpack_kind(base)


def unpack_kind(model: str) -> str:
    return peek(os.path.join(STORE, f"{model}.mar")).kind


# ---- the bench server -------------------------------------------------------------------------------
def free_port() -> int:
    return free_ports(1)[0]


def build_stock_archive(model: str, store: str, work: str) -> str:
    """The stock recipe: torch-model-archiver --handler <the kind's stock handler> on the plainly scripted model
    (its declared source, real weights) and its labels."""
    from tskit.formats import to_torchscript
    from tskit.sources import load_source

    decl = declarations.load(model)
    kind = kinds.kind(decl.kind)
    loaded = load_source(decl.source, kind, decl.folder)
    os.makedirs(work, exist_ok=True)
    model_file, labels_file = os.path.join(work, "model.pt"), os.path.join(work, "index_to_name.json")
    settings = decl.settings()
    example = kind.model_input.example(settings, batch=1)
    to_torchscript(loaded.module.eval(), kind, example).save(model_file)
    with open(labels_file, "w", encoding="utf-8") as f:
        json.dump({str(i): name for i, name in enumerate(loaded.labels or [])}, f)
    name = STOCK_PREFIX + model
    subprocess.run([os.path.join(os.path.dirname(sys.executable), "torch-model-archiver"), "--force",
                    "--model-name", name, "--version", "1.0", "--serialized-file", model_file,
                    "--handler", kind.stock_handler, "--extra-files", labels_file,
                    "--export-path", store], check=True, capture_output=True)
    return name


class _NoModel(torch.nn.Module):
    """Logits of zeros: what is left of (B) when the model costs nothing."""

    def __init__(self, classes: int):
        super().__init__()
        self.classes = classes

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.zeros(images.shape[0], self.classes)


def build_pipeline_archive(model: str, store: str) -> str:
    """(P): model_store/<model>.mar byte for byte, but for its model file (a TorchScript _NoModel, whatever
    the declared format: model-config.yaml says torchscript) and its name: TorchServe, decode, resize,
    collate, postprocess and JSON as (B) runs them, without the model."""
    with zipfile.ZipFile(os.path.join(STORE, f"{model}.mar")) as mar:
        manifest = json.loads(mar.read("MAR-INF/MANIFEST.json"))["model"]
        classes = len(json.loads(mar.read("index_to_name.json")))
    no_model = io.BytesIO()
    torch.jit.save(torch.jit.script(_NoModel(classes)), no_model)

    def torchscript_config(data: bytes) -> bytes:
        config = yaml.safe_load(data)
        config["handler"]["modelFormat"] = "torchscript"
        return yaml.safe_dump(config, sort_keys=False).encode()

    name = model + PIPELINE_SUFFIX
    copy_archive(model, store, name, {manifest["serializedFile"]: lambda _: no_model.getvalue(),
                                      manifest["configFile"]: torchscript_config})
    return name


def bench_server(workdir: str, models: List[str], stock_for: List[str], pipeline_for: List[str]) -> TorchServe:
    """One TorchServe: (B)'s archives, (A) stock archives in the stock recipe's layout, the same stock
    archives again as (A2) in (B)'s layout, and (P) pipeline archives in (B)'s; (F) variants are
    registered later."""
    store = os.path.join(workdir, "model_store")
    os.makedirs(store, exist_ok=True)
    decls = declared()
    settings = {}
    for name in models:
        shutil.copy(os.path.join(STORE, f"{name}.mar"), store)
        settings[name] = {"1.0": dict(decls[name].registration(), marName=f"{name}.mar")}
    for model in stock_for:
        name = build_stock_archive(model, store, os.path.join(workdir, "stock", model))
        # the stock route as measured in ../shared/notes-performance.md: 1 worker, batch 8, 10 ms.
        # (Our 2-worker setting may hurt it: the stock handler leaves torch at one thread per core
        # in each worker, and 2 x 2 OpenMP threads on 2 cores collapse; (A2) measures exactly that.)
        settings[name] = {"1.0": {"marName": f"{name}.mar", "minWorkers": 1, "maxWorkers": 1,
                                  "batchSize": 8, "maxBatchDelay": 10, "responseTimeout": 60}}
        # (A2): like for like with (B): the declaration's workers, batch size and delay (threads stay
        # the stock handler's own: it sets none)
        like_b = stock_b_layout_name(model)
        copy_archive(name, store, like_b, source_store=store)
        settings[like_b] = {"1.0": dict(decls[model].registration(), marName=f"{like_b}.mar")}
    for model in pipeline_for:
        name = build_pipeline_archive(model, store)
        settings[name] = {"1.0": dict(decls[model].registration(), marName=f"{name}.mar")}
    return private_server(workdir, model_store=store, load_models=",".join(f"{m}.mar" for m in settings),
                          models=json.dumps(settings))


def server_cpu_seconds(server: TorchServe) -> float:
    """CPU time of the frontend and all its worker processes so far."""
    try:
        root = psutil.Process(server.pid())
        total = 0.0
        for proc in [root] + root.children(recursive=True):
            try:
                times = proc.cpu_times()
                total += times.user + times.system
            except psutil.Error:
                pass
        return total
    except (psutil.Error, TypeError, ValueError):
        return float("nan")
