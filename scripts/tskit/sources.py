"""A declaration's `source`, loaded into what the format exporters need (formats.py).

    *.pt                 TorchScript module                         -> torchscript, onnx
    *.pt2                torch.export program (torch.export.save)   -> torchscript (traced), aoti, onnx
    *.onnx               ONNX graph                                 -> onnx
    folder/config.json   Hugging Face checkpoint (tokenizer.json)   -> torchscript (traced), aoti, onnx
    python:mod:function  a function returning an eager module, a source path or a LoadedSource
                                                                    -> torchscript, aoti, onnx
Text models take (input_ids, attention_mask) int64 [N, L]; image models a float batch [N, 3, H, W].
An object detector is a torchvision detection model, a .pt saved with torch.jit.script (or python:):
it takes a list of images of any sizes, so it is served as TorchScript only (torch.export and ONNX need
fixed input structure); its class count is read from the model, and COCO's 91 names are its default labels.
"""

import dataclasses
import importlib
import json
import os
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Tuple

import torch
import torch.nn.functional as F

DETECTOR_FORMATS = ("torchscript",)
ALL_FORMATS = ("torchscript", "aoti", "onnx", "openvino")  # what a PyTorch module (eager, checkpoint, python:) can give
FORMATS_OF_FILE = {".pt": ("torchscript", "onnx", "openvino"), ".pt2": ALL_FORMATS, ".onnx": ("onnx", "openvino")}


class SourceError(ValueError):
    pass


@dataclass
class LoadedSource:
    description: str
    formats: Tuple[str, ...]                    # the serving formats this source can give
    module: Optional[Callable] = None           # runs in process (the parity reference)
    onnx_file: Optional[str] = None             # an ONNX source is served as it is
    exported: Optional[object] = None           # a torch.export program, when the source is one
    labels: Optional[List[str]] = None          # class names the source itself carries (id2label)
    tokenizer_file: Optional[str] = None
    max_tokens: Optional[int] = None
    classes: Optional[int] = None               # a detector's class count (background included)
    pad_token: Optional[str] = None
    dependencies: List[str] = field(default_factory=list)  # files whose change rebuilds the archive
    # bf16 / int8 made when OpenVINO's IR is written (tskit.formats.to_openvino): the source itself stays fp32
    openvino_precision: str = "fp32"


class MeanPooledEncoder(torch.nn.Module):
    """A transformer -> mean over the tokens the attention mask keeps -> L2 norm (sentence-transformers' definition)."""

    def __init__(self, encoder: torch.nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        return F.normalize(pooled, p=2.0, dim=1)


class SequenceClassifierLogits(torch.nn.Module):
    """A *ForSequenceClassification model called with (input_ids, attention_mask), returning its logits."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


class SegmenterLogits(torch.nn.Module):
    """A segmentation model whose logits are served alone: torchvision's {"out": ..., "aux": ...} gives "out"."""

    def __init__(self, model: Callable):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        from handlers.segmentation import segmenter_logits

        return segmenter_logits(self.model(images))


class ScriptedOut(torch.nn.Module):
    """The same for a scripted model returning Dict[str, Tensor], scripted in turn (a trace cannot call into a
    scripted module, and the ONNX and OpenVINO formats are made from a trace)."""

    def __init__(self, model: torch.jit.ScriptModule):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)["out"]


def segmenter_module(module: Callable) -> Callable:
    if isinstance(module, torch.jit.ScriptModule):
        try:
            return torch.jit.script(ScriptedOut(module))
        except Exception:  # noqa: BLE001 - it does not compile where the model already returns its logits
            return module
    return module if isinstance(module, SegmenterLogits) else SegmenterLogits(module)


def segmenter_source(loaded: LoadedSource) -> LoadedSource:
    """A segmenter's logits alone (an ONNX file's first output is served: torchvision's exported "out")."""
    return loaded if loaded.onnx_file else dataclasses.replace(loaded, module=segmenter_module(loaded.module))


def load_source(source: str, kind, base_dir: str) -> LoadedSource:
    """The source loaded, as the model that gives the answer of `kind` (a tskit.kinds.Kind; kinds/answers.py: a
    classifier's head, a detector's classes, a segmenter's logits)."""
    return kind.answer.adapt_source(_load_source(source, kind, base_dir))


def _load_source(source: str, kind, base_dir: str) -> LoadedSource:
    if source.startswith("python:"):
        return _python_source(source, kind, base_dir)
    path = source if os.path.isabs(source) else os.path.normpath(os.path.join(base_dir, source))
    if not os.path.exists(path):
        raise SourceError(f"source {path} does not exist")
    model_input = kind.model_input
    if os.path.isdir(path) and model_input.checkpoint_folder:
        return _hugging_face(path, kind)
    if os.path.isdir(path):
        raise SourceError(f"an {kind.name} source is a .pt (TorchScript), .pt2 (torch.export.save) or .onnx file, "
                          f"not the folder {path}")
    if model_input.checkpoint_folder:
        raise SourceError(f"a {kind.name} source is a Hugging Face checkpoint folder (config.json, weights, "
                          f"tokenizer.json), not the file {path}")
    suffix = os.path.splitext(path)[1]
    model_input.source_formats(path)  # a detector's refuses anything but a .pt
    if suffix == ".pt":
        module = torch.jit.load(path, map_location="cpu").eval()
        return LoadedSource(f"TorchScript {path}", FORMATS_OF_FILE[suffix], module=module, dependencies=[path])
    if suffix == ".pt2":
        program = torch.export.load(path)
        return LoadedSource(f"torch.export program {path}", FORMATS_OF_FILE[suffix],
                            module=program.module(), exported=program, dependencies=[path])
    if suffix == ".onnx":
        return LoadedSource(f"ONNX {path}", FORMATS_OF_FILE[suffix], module=_onnx_reference(path), onnx_file=path,
                            dependencies=[path])
    raise SourceError(f"source {path}: expected a .pt (TorchScript), .pt2 (torch.export.save) or .onnx file, "
                      f"or a Hugging Face checkpoint folder")


def detector_formats(source: str) -> Tuple[str, ...]:
    """The formats a detector source can give: TorchScript, from a .pt or a python: source."""
    if source.startswith("python:") or (os.path.splitext(source)[1] == ".pt" and not os.path.isdir(source)):
        return DETECTOR_FORMATS
    raise SourceError(f"SOURCE={source}: an object-detector source is a torchvision detection model saved with "
                      f"torch.jit.script (.pt), served as torchscript (it takes a list of images of any sizes)")


def as_detector(loaded: LoadedSource) -> LoadedSource:
    """A detection model: its class count read from it, COCO's names as labels where it has COCO's 91."""
    from handlers.detection import class_count

    classes = class_count(loaded.module)
    if classes is None:
        raise SourceError(f"{loaded.description}: the number of classes cannot be read; expected a torchvision "
                          f"detection model (Faster/Mask/Keypoint R-CNN, SSD, SSDlite, RetinaNet, FCOS)")
    coco = coco_categories()
    labels = loaded.labels or (coco if classes == len(coco) else None)
    return dataclasses.replace(loaded, formats=DETECTOR_FORMATS, classes=classes, labels=labels)


def coco_categories() -> List[str]:
    """COCO's 91 category names as torchvision's detection weights name them ("__background__" at 0,
    "N/A" for unused indices), from the weights' metadata: nothing is downloaded."""
    from torchvision.models.detection import SSDLite320_MobileNet_V3_Large_Weights

    return list(SSDLite320_MobileNet_V3_Large_Weights.COCO_V1.meta["categories"])


def from_module(module: torch.nn.Module, description: str, **extra) -> LoadedSource:
    """An eager module: every format can be made from it."""
    return LoadedSource(description, ALL_FORMATS, module=module.eval(), **extra)


def _python_source(source: str, kind, base_dir: str) -> LoadedSource:
    try:
        module_name, function_name = source[len("python:"):].split(":")
        function = getattr(importlib.import_module(module_name), function_name)
    except (ValueError, ImportError, AttributeError) as err:
        raise SourceError(f"source {source!r}: expected python:<module>:<function> importable here ({err})") from None
    made = function()
    if isinstance(made, LoadedSource):
        loaded = made
    elif isinstance(made, str):
        loaded = load_source(made, kind, base_dir)
    elif isinstance(made, torch.nn.Module):
        loaded = from_module(made, source)
    else:
        raise SourceError(f"{source} returned {type(made).__name__}: expected a module, a path or a LoadedSource")
    module_file = getattr(importlib.import_module(module_name), "__file__", None)
    loaded.dependencies += [module_file] if module_file else []
    return loaded


def _hugging_face(folder: str, kind) -> LoadedSource:
    from transformers import AutoConfig

    tokenizer_file = os.path.join(folder, "tokenizer.json")
    for needed in ("config.json", "tokenizer.json"):
        if not os.path.isfile(os.path.join(folder, needed)):
            raise SourceError(f"{folder} has no {needed}: a Hugging Face checkpoint folder needs config.json, "
                              f"its weights and a fast tokenizer's tokenizer.json")
    config = AutoConfig.from_pretrained(folder)
    module, labels = kind.answer.from_checkpoint(folder)  # a classifier's logits, an encoder's pooling
    files = [os.path.join(folder, f) for f in sorted(os.listdir(folder)) if os.path.isfile(os.path.join(folder, f))]
    return from_module(module, f"Hugging Face checkpoint {folder}", labels=labels, tokenizer_file=tokenizer_file,
                       max_tokens=_max_tokens(folder, config), pad_token=_pad_token(tokenizer_file, config),
                       dependencies=files)


def sequence_classifier(folder: str) -> Tuple[torch.nn.Module, List[str]]:
    """A checkpoint's *ForSequenceClassification model giving its logits, and its labels (id2label)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    config = AutoConfig.from_pretrained(folder)
    if not any(a.endswith("ForSequenceClassification") for a in (config.architectures or [])):
        raise SourceError(f"{folder}: config.json's architectures {config.architectures} name no "
                          f"*ForSequenceClassification model")
    model = AutoModelForSequenceClassification.from_pretrained(folder, attn_implementation="eager")
    return SequenceClassifierLogits(model), [config.id2label[i] for i in range(config.num_labels)]


def mean_pooled_encoder(folder: str) -> torch.nn.Module:
    """A checkpoint's encoder giving the L2-normalised mean of its token states (sentence-transformers')."""
    from transformers import AutoModel

    return MeanPooledEncoder(AutoModel.from_pretrained(folder, attn_implementation="eager"))


def _max_tokens(folder: str, config) -> int:
    """sentence-transformers' max_seq_length where the checkpoint has one, else the model's position limit."""
    st_config = os.path.join(folder, "sentence_bert_config.json")
    if os.path.isfile(st_config):
        with open(st_config, encoding="utf-8") as f:
            limit = json.load(f).get("max_seq_length")
        if limit:
            return int(limit)
    return int(min(getattr(config, "max_position_embeddings", 512) or 512, 512))


def _pad_token(tokenizer_file: str, config) -> str:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(tokenizer_file)
    if tokenizer.padding and tokenizer.padding.get("pad_token"):
        return tokenizer.padding["pad_token"]
    pad_id = getattr(config, "pad_token_id", None)
    token = tokenizer.id_to_token(pad_id) if pad_id is not None else None
    return token or "[PAD]"


def _onnx_reference(path: str) -> Callable:
    """The ONNX file run by ONNX Runtime in process, for the parity check of what is served."""
    from handlers.model_formats import OnnxModel

    return OnnxModel(path, torch.device("cpu"), threads=1)
