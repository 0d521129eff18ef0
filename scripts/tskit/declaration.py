"""A model's one declaration, `models/<name>/model.yaml`: everything else about the model is derived from it.

    kind: image-classifier            # one of tskit.kinds (one module per kind: scripts/tskit/kinds/)
    source: /path/to/model.pt2        # .pt (TorchScript), .pt2 (torch.export), .onnx, a Hugging Face
                                      # checkpoint folder, or python:<module>:<function> (returns a module)
    format: torchscript               # how it is served: torchscript | aoti | onnx | openvino
    precision: fp32                   # or int8: static for image models (ONNX Runtime, calibrated on
                                      # real photos), dynamic Linear layers for text (TorchScript);
                                      # or bf16: the module in bfloat16 behind a float32 face (aoti for
                                      # images, torchscript or aoti for text), fast only with AVX512_BF16/AMX
    labels: labels.json               # optional: a JSON list or an index_to_name.json map, beside this file
    version: "1.0"
    serve: true                       # `make serve` loads it
    torchserve: {minWorkers: 2, ...}  # TorchServe's per-model settings (model-config.yaml's top level)
    handler: {topk: 5, ...}           # the handler's typed settings (handlers/model_settings.py)

The Makefile's archive rule, config.properties' `load_models` and `models=`, the KServe layout, bench,
tune, soak and the tests' model lists read these files through `declared()`.
"""

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import yaml

from handlers.model_settings import FORMATS, SettingsError
from tskit import kinds

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODELS_DIR = os.path.join(REPO, "models")
DECLARATION = "model.yaml"

# TorchServe 0.12's per-model keys (ModelConfig) that this package sets; anything else is a typo.
TORCHSERVE_KEYS = {
    "minWorkers": int, "maxWorkers": int, "batchSize": int, "maxBatchDelay": int, "responseTimeout": int,
    "deviceType": str, "deviceIds": list, "parallelType": str, "startupTimeout": int,
    "maxRetryTimeoutInSec": int, "clientTimeoutInMills": int, "jobQueueSize": int, "useJobTicket": bool,
    "continuousBatching": bool,  # one handler call per step (text generators: ContinuousBatching.java)
}
# The per-model settings config.properties' `models=` repeats (the archive's model-config.yaml wins
# where both set a key, so both carry the same values).
REGISTRATION_KEYS = ("minWorkers", "maxWorkers", "batchSize", "maxBatchDelay", "responseTimeout")
TOP_KEYS = {"kind", "source", "format", "precision", "labels", "version", "serve", "torchserve", "handler"}
PRECISIONS = ("fp32", "int8", "bf16")  # tskit.precision makes int8 and bf16


class DeclarationError(ValueError):
    """A declaration that cannot be built; the message names the file and the key."""


@dataclass
class Declaration:
    name: str
    folder: str
    kind: str
    source: str
    format: str = "torchscript"
    precision: str = "fp32"
    labels: Optional[str] = None
    version: str = "1.0"
    serve: bool = True
    torchserve: Dict[str, object] = field(default_factory=dict)
    handler: Dict[str, object] = field(default_factory=dict)

    @property
    def path(self) -> str:
        return os.path.join(self.folder, DECLARATION)

    @property
    def handler_file(self) -> str:
        return kinds.kind(self.kind).handler_file

    def settings(self):
        """The typed handler settings as the worker will read them (modelFormat included)."""
        return kinds.parse_settings(self.kind, dict(self.handler, modelFormat=self.format))

    def resolve(self, path: str) -> str:
        """A path in the declaration: absolute as given, else relative to the declaration's folder."""
        return path if os.path.isabs(path) else os.path.normpath(os.path.join(self.folder, path))

    def registration(self) -> Dict[str, object]:
        return {key: self.torchserve[key] for key in REGISTRATION_KEYS if key in self.torchserve}


def load(name: str, models_dir: str = MODELS_DIR) -> Declaration:
    folder = os.path.join(models_dir, name)
    path = os.path.join(folder, DECLARATION)
    if not os.path.isfile(path):
        raise DeclarationError(f"{path} does not exist: declare the model with `make model NAME={name} ...`")
    with open(path, encoding="utf-8") as f:
        document = yaml.safe_load(f) or {}
    if not isinstance(document, dict):
        raise DeclarationError(f"{path}: expected a mapping of keys, got {type(document).__name__}")
    unknown = sorted(set(document) - TOP_KEYS)
    if unknown:
        raise DeclarationError(f"{path}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(TOP_KEYS))})")
    for key in ("kind", "source"):
        if not document.get(key):
            raise DeclarationError(f"{path}: `{key}` is missing")
    declaration = Declaration(name=name, folder=folder, **{k: v for k, v in document.items()})
    declaration.version = str(declaration.version)
    check(declaration)
    return declaration


def check(declaration: Declaration) -> None:
    """Everything that can be checked without loading the model."""
    where = declaration.path
    if declaration.kind not in kinds.KINDS:
        raise DeclarationError(f"{where}: kind {declaration.kind!r} is not one of {', '.join(kinds.KINDS)}")
    if declaration.format not in FORMATS:
        raise DeclarationError(f"{where}: format {declaration.format!r} is not one of {', '.join(FORMATS)}")
    if declaration.precision not in PRECISIONS:
        raise DeclarationError(f"{where}: precision {declaration.precision!r} is not one of {', '.join(PRECISIONS)}")
    for key, value in (declaration.torchserve or {}).items():
        expected = TORCHSERVE_KEYS.get(key)
        if expected is None:
            raise DeclarationError(f"{where}: torchserve.{key} is not a TorchServe model setting "
                                   f"(known: {', '.join(sorted(TORCHSERVE_KEYS))})")
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise DeclarationError(f"{where}: torchserve.{key}: expected {expected.__name__}, got {value!r}")
    check_continuous_batching(declaration)
    try:
        declaration.settings()
    except SettingsError as err:
        raise DeclarationError(f"{where}: {err}") from None


def check_continuous_batching(declaration: Declaration) -> None:
    """TorchServe 0.12 polls a model's queue under one lock and an idle worker holds it while it waits: a stream
    on another worker of the model then stalls until a new request arrives (measured: docs/video.md)."""
    settings = declaration.torchserve or {}
    workers = max(int(settings.get("minWorkers", 1)), int(settings.get("maxWorkers", 1)))
    if settings.get("continuousBatching") and workers > 1:
        raise DeclarationError(f"{declaration.path}: torchserve.continuousBatching needs one worker (minWorkers and "
                               f"maxWorkers 1, got {workers}): TorchServe 0.12 stalls a stream while another worker "
                               f"of the model waits for work; for more workers leave continuousBatching out (a "
                               f"video then holds its worker while it streams)")


def declared(models_dir: str = MODELS_DIR) -> List[Declaration]:
    """Every declared model, by name."""
    if not os.path.isdir(models_dir):
        return []
    names = sorted(n for n in os.listdir(models_dir) if os.path.isfile(os.path.join(models_dir, n, DECLARATION)))
    return [load(name, models_dir) for name in names]


def served(models_dir: str = MODELS_DIR) -> List[Declaration]:
    """The declared models `make serve` loads."""
    return [d for d in declared(models_dir) if d.serve]


def of_kind(kind: str, models_dir: str = MODELS_DIR) -> List[str]:
    return [d.name for d in served(models_dir) if d.kind == kind]


def as_document(declaration: Declaration) -> dict:
    document = dataclasses.asdict(declaration)
    for key in ("name", "folder"):
        document.pop(key)
    if document["labels"] is None:
        document.pop("labels")
    return document
