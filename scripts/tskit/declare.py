"""`make model`: write a new declaration, models/<name>/model.yaml, with every setting spelt out to edit."""

import json
import os
import re
from typing import Optional

from tskit.sources import ALL_FORMATS, DETECTOR_KINDS, FORMATS_OF_FILE, detector_formats
from tskit.declaration import DECLARATION, HANDLER_OF_KIND, MODELS_DIR, DeclarationError, load


IMAGE_TEMPLATE = """\
  topk: 5                     # predictions per answer (capped at the number of classes)
  resizeSize: 256             # preprocessing: resize the short side to this, then centre-crop to cropSize
  cropSize: 224               # the model's input is [N, 3, cropSize, cropSize], normalised with mean/std
  mean: [0.485, 0.456, 0.406]
  std: [0.229, 0.224, 0.225]
  maxImagePixels: 40000000    # a declared width*height above this answers 413 before decoding
  intraOpThreads: 1           # workers x threads <= cores
  # Per-request budgets, answered 413 before decoding (docs/limits-and-overload.md): keep
  # batchSize x maxItemsPerRequest x the model's time per image well under responseTimeout
  maxItemsPerRequest: 32      # images per KServe request
  maxPixelsPerRequest: 40000000  # declared pixels of all of a request's images (>= maxImagePixels)
"""
TEXT_TEMPLATE = """\
  intraOpThreads: 1           # workers x threads <= cores
  # maxTokens: 256            # default: the checkpoint's limit (sentence-transformers' max_seq_length,
                              # else max_position_embeddings, at most 512); longer texts say "truncated"
  # Per-request budgets, answered 413 before tokenizing (docs/limits-and-overload.md): keep
  # batchSize x maxItemsPerRequest x the model's time per maxTokens text well under responseTimeout
  maxItemsPerRequest: 16      # texts per KServe request
  maxTextChars: 100000        # characters per text
"""
DETECTOR_TEMPLATE = """\
  scoreThreshold: 0.5         # the lowest score answered (a request's JSON "threshold" overrides it)
  maxDetections: 100          # the most detections answered (a request's "max_detections" overrides it)
  maxImagePixels: 40000000    # a declared width*height above this answers 413 before decoding
  intraOpThreads: 1           # workers x threads <= cores
  # Per-request budgets, answered 413 before decoding (docs/limits-and-overload.md)
  maxItemsPerRequest: 16      # images per KServe request
  maxPixelsPerRequest: 40000000  # declared pixels of all of a request's images (>= maxImagePixels)
"""
TEMPLATE_OF_KIND = {"image-classifier": IMAGE_TEMPLATE, "object-detector": DETECTOR_TEMPLATE}
DECLARATION_TEMPLATE = """\
# {name}: the one declaration of this model. `make archives` rebuilds model_store/{name}.mar from it
# when it or its source changes; `make serve` serves it; config.properties' models block follows it.
kind: {kind}
source: {source}
format: {format}{format_note}
precision: fp32             # or int8 (image: static, ONNX Runtime, format onnx; text: dynamic, torchscript)
{labels_line}version: "1.0"
serve: true                 # `make serve` loads it

# TorchServe's per-model settings (the archive's model-config.yaml, top level)
torchserve:
  minWorkers: 1
  maxWorkers: 1
  batchSize: 4              # requests per handle() call
  maxBatchDelay: {delay}          # ms to wait for a batch to fill
  responseTimeout: 60
  deviceType: gpu           # a GPU when the server has number_of_gpu > 0, else cpu

# The handler's settings, typed and checked when a worker loads (handlers/model_settings.py)
handler:
{handler}"""


def source_formats(source: str, kind: str) -> tuple:
    """The formats a source can give, judged by its name (the build checks again with the model loaded)."""
    if kind in DETECTOR_KINDS:
        return detector_formats(source)
    if source.startswith("python:") or os.path.isdir(source):
        return ALL_FORMATS
    return FORMATS_OF_FILE.get(os.path.splitext(source)[1], ())


def declare(name: str, kind: str, source: str, labels: Optional[str] = None, model_format: Optional[str] = None,
            precision: str = "fp32", force: bool = False, models_dir: str = MODELS_DIR) -> str:
    """Write models/<name>/model.yaml (and labels.json); the declaration's path. Checked by loading it back."""
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_\-]*", name or ""):
        raise DeclarationError(f"NAME={name!r}: use letters, digits, _ and - (it names the archive and the URL)")
    if kind not in HANDLER_OF_KIND:
        raise DeclarationError(f"KIND={kind!r} is not one of {', '.join(HANDLER_OF_KIND)}")
    source = source if source.startswith("python:") else os.path.abspath(source)
    if not source.startswith("python:") and not os.path.exists(source):
        raise DeclarationError(f"SOURCE={source} does not exist")
    formats = source_formats(source, kind)
    if not formats:
        raise DeclarationError(f"SOURCE={source}: expected a .pt, .pt2 or .onnx file or a Hugging Face folder")
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
        format_note=f"           # torchscript | aoti | onnx; this source can give {', '.join(formats)}",
        labels_line=labels_line, delay=20 if kind in TEMPLATE_OF_KIND else 5,
        handler=TEMPLATE_OF_KIND.get(kind, TEXT_TEMPLATE))
    text = text.replace("precision: fp32", f"precision: {precision}", 1)
    path = os.path.join(folder, DECLARATION)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    load(name, models_dir)  # the same checks every build makes
    return path


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
