"""`make model`: write a new declaration, models/<name>/model.yaml, with every setting spelt out to edit."""

import json
import os
import re
from typing import Optional

from tskit import kinds
from tskit.declaration import DECLARATION, MODELS_DIR, DeclarationError, load


# {delay} and {handler} are the kind's own (its module in tskit/kinds/)
DECLARATION_TEMPLATE = """\
# {name}: the one declaration of this model. `make archives` rebuilds model_store/{name}.mar from it
# when it or its source changes; `make serve` serves it; config.properties' models block follows it.
kind: {kind}
source: {source}
format: {format}{format_note}
precision: fp32             # or int8 (image: static, ONNX Runtime, format onnx; text: dynamic, torchscript),
                            # or bf16 (image: format aoti; text: torchscript or aoti; fast with AVX512_BF16/AMX)
{labels_line}version: "1.0"
serve: true                 # `make serve` loads it

# TorchServe's per-model settings (the archive's model-config.yaml, top level)
torchserve:
{torchserve}
# The handler's settings, typed and checked when a worker loads (handlers/model_settings.py)
handler:
{handler}"""


def source_formats(source: str, kind: str) -> tuple:
    """The formats a source can give, judged by its name (the build checks again with the model loaded)."""
    return kinds.kind(kind).model_input.source_formats(source)


def declare(name: str, kind: str, source: str, labels: Optional[str] = None, model_format: Optional[str] = None,
            precision: str = "fp32", force: bool = False, models_dir: str = MODELS_DIR) -> str:
    """Write models/<name>/model.yaml (and labels.json); the declaration's path. Checked by loading it back."""
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_\-]*", name or ""):
        raise DeclarationError(f"NAME={name!r}: use letters, digits, _ and - (it names the archive and the URL)")
    if kind not in kinds.KINDS:
        raise DeclarationError(f"KIND={kind!r} is not one of {', '.join(kinds.KINDS)}")
    source = source if source.startswith("python:") else os.path.abspath(source)
    if not source.startswith("python:") and not os.path.exists(source):
        raise DeclarationError(f"SOURCE={source} does not exist")
    formats = source_formats(source, kind)
    if not formats:
        raise DeclarationError(f"SOURCE={source}: expected {kinds.kind(kind).model_input.sources}")
    model_format = model_format or ("torchscript" if "torchscript" in formats else formats[0])
    if model_format not in formats:
        raise DeclarationError(f"FORMAT={model_format}: {os.path.basename(source)} can give {', '.join(formats)}")
    folder = os.path.join(models_dir, name)
    if os.path.exists(os.path.join(folder, DECLARATION)) and not force:
        raise DeclarationError(f"{folder}/{DECLARATION} exists: edit it and run `make archives`, or add FORCE=1")
    document = read_labels(labels) if labels else None  # checked before anything is written
    os.makedirs(folder, exist_ok=True)
    labels_line = ""
    if labels:
        with open(os.path.join(folder, "labels.json"), "w", encoding="utf-8") as f:
            json.dump(document, f, indent=0, ensure_ascii=False)
        labels_line = "labels: labels.json         # a JSON list of class names, or an index_to_name.json map\n"
    text = DECLARATION_TEMPLATE.format(
        name=name, kind=kind, source=_yaml_string(source), format=model_format,
        format_note=f"           # torchscript | aoti | onnx | openvino; this source can give {', '.join(formats)}",
        labels_line=labels_line, torchserve=torchserve_section(kind), handler=kinds.kind(kind).template)
    text = text.replace("precision: fp32", f"precision: {precision}", 1)
    path = os.path.join(folder, DECLARATION)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    load(name, models_dir)  # the same checks every build makes
    return path


SHARED_TORCHSERVE = """\
  minWorkers: 1
  maxWorkers: 1
  batchSize: 4              # requests per handle() call
  maxBatchDelay: {delay}          # ms to wait for a batch to fill
  responseTimeout: 60
  deviceType: gpu           # a GPU when the server has number_of_gpu > 0, else cpu
"""
VIDEO_TORCHSERVE = """\
  continuousBatching: true  # a video is answered frame by frame in steps, photos join any step
"""


def torchserve_section(kind: str) -> str:
    """The kind's own torchserve: section (a generator's continuous batching), else the shared one."""
    known = kinds.kind(kind)
    shared = SHARED_TORCHSERVE.format(delay=known.max_batch_delay) + (VIDEO_TORCHSERVE if known.takes_video else "")
    return known.torchserve_template or shared


def read_labels(source: str):
    """A LABELS file: a JSON list of names or an index_to_name.json map."""
    try:
        with open(source, encoding="utf-8") as f:
            document = json.load(f)
    except OSError as err:
        raise DeclarationError(f"LABELS={source} cannot be read: {err.strerror}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DeclarationError(f"LABELS={source} is not a UTF-8 JSON file ({err})") from None
    if not isinstance(document, (list, dict)):
        raise DeclarationError(f"LABELS={source}: expected a JSON list of names or an index_to_name.json map")
    return document


def _yaml_string(path: str) -> str:
    """The source as a YAML scalar (absolute paths: the declaration stays valid wherever make runs)."""
    return json.dumps(path) if any(c in path for c in ":#'\" {}[],&*!|>%@`") and not path.startswith("python:") \
        else path
