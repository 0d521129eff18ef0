"""Semantic segmentation, the pure steps of the `image-segmenter` kind: logits -> the class map and fractions.

    segmenter_logits(outputs)      the model's output as logits [N, C, h, w]: a tensor, or torchvision's
                                   {"out": ..., "aux": ...} (its "out"), or a tuple/list whose first is it
    class_map(logits, height, width)  one image's logits [C, h, w] upsampled bilinearly to its original size,
                                   then the arg-max: uint8 [height, width] (at most MAX_CLASSES, checked at load)
    answer(map, labels)            {"classes": [{"label", "index", "fraction"}...] largest first,
                                    "mask": {"format": "png", "width", "height", "data": base64 8-bit PNG}}
    mask_bytes                     what one image costs before the arg-max (height x width x classes x 4),
                                   checked from the image's header before it is decoded (a 413)
The image goes in resized to the declaration's input size without a crop (`resize_exact`), so every pixel of
the original gets a class. Pure: imports nothing from `ts`.
"""

import base64
from typing import Any, Dict, List, NamedTuple

import torch
import torch.nn.functional as F
from torchvision.io import encode_png
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from handlers.protocols import Output

# one class's entry in JSON beyond its label: {"label": "", "index": 65535, "fraction": 0.123456789}
CLASS_OVERHEAD_BYTES = 64
MASK_OVERHEAD_BYTES = 128
MAX_CLASSES = 256  # an 8-bit PNG's values

SEGMENTER_OUTPUTS = (
    Output("mask", "BYTES", lambda answer: answer["mask"]["data"], per_item=True),
    Output("width", "INT64", lambda answer: answer["mask"]["width"], per_item=True),
    Output("height", "INT64", lambda answer: answer["mask"]["height"], per_item=True),
    Output("labels", "BYTES", lambda answer: [c["label"] for c in answer["classes"]]),
    Output("indices", "INT64", lambda answer: [c["index"] for c in answer["classes"]]),
    Output("fractions", "FP32", lambda answer: [c["fraction"] for c in answer["classes"]]),
)


class SegmentItem(NamedTuple):
    """One decoded image: its model input, and the size its class map is answered at."""

    image: torch.Tensor  # uint8 [3, size, size]
    height: int
    width: int


def resize_exact(image: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 [3, H, W] -> [3, size, size]: both sides to `size` (antialiased bilinear), nothing cut off."""
    return TF.resize(image, [size, size], interpolation=InterpolationMode.BILINEAR, antialias=True)


def segmenter_logits(outputs: Any) -> torch.Tensor:
    if isinstance(outputs, dict):
        outputs = outputs.get("out", next(iter(outputs.values()), None))
    elif isinstance(outputs, (tuple, list)):
        outputs = outputs[0] if outputs else None
    if not isinstance(outputs, torch.Tensor) or outputs.dim() != 4:
        shape = tuple(outputs.shape) if isinstance(outputs, torch.Tensor) else type(outputs).__name__
        raise ValueError(f"a segmenter must return logits [N, classes, H, W] (or {{'out': ...}}), got {shape}")
    return outputs


def class_map(logits: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[C, h, w] -> the arg-max of the logits upsampled (bilinear, as torchvision's references) to [height, width]."""
    upsampled = F.interpolate(logits[None].float(), size=(height, width), mode="bilinear", align_corners=False)
    return upsampled[0].argmax(dim=0).to(torch.uint8)


def answer(indices: torch.Tensor, labels: List[str]) -> Dict[str, Any]:
    height, width = indices.shape
    counts = torch.bincount(indices.flatten().long().cpu(), minlength=len(labels)).tolist()
    total = height * width
    classes = [{"label": labels[i], "index": i, "fraction": round(count / total, 6)}
               for i, count in sorted(enumerate(counts), key=lambda ic: (-ic[1], ic[0])) if count]
    png = encode_png(indices.cpu()[None]).numpy().tobytes()
    mask = {"format": "png", "width": width, "height": height, "data": base64.b64encode(png).decode("ascii")}
    return {"classes": classes, "mask": mask}


def mask_bytes(height: int, width: int, classes: int) -> int:
    """The float logits of one image upsampled to its size, before the arg-max."""
    return height * width * classes * 4


def classes_bytes(classes: int, longest_label: int) -> int:
    """An upper bound of one answer without its PNG: every class listed, the mask's other fields."""
    return classes * (longest_label + CLASS_OVERHEAD_BYTES) + MASK_OVERHEAD_BYTES
