"""Object detection, pure: request options, images -> the model's list input, its output -> the contract's answer.

torchvision's detection models (Faster R-CNN, SSD, SSDlite, RetinaNet, FCOS), saved with torch.jit.script,
take a list of float RGB images in [0, 1] of any sizes and return `(losses, detections)` (eager ones return
the detections alone): one dict per image with `boxes` [K, 4] (x1, y1, x2, y2 in that image's pixels),
`scores` [K] and `labels` [K] (class indices; 0 is the background where the model has one). The model's own
transform resizes and normalises each image and maps the boxes back, so the images of a batch go to the
model as they were decoded, in one call.
Answer: {"detections": [{"label", "index", "score", "box": [x1, y1, x2, y2]}, ...]}, most confident first,
only scores >= the threshold, at most `max_detections`. Pure: imports nothing from `ts`.
"""

from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch
from torchvision.transforms.v2 import functional as F

from handlers.protocols import Output
from handlers.request_budget import ITEM_OVERHEAD_BYTES, JSON_FLOAT_BYTES
from handlers.request_errors import InvalidField, shown
from handlers.request_payload import count_error, decode_base64_field, image_request, is_count

# One detection besides its label: {"label": , "index": <int>, "score": <float>, "box": [4 floats]}, ", ".
DETECTION_OVERHEAD_BYTES = 64 + 5 * JSON_FLOAT_BYTES

# A detector's v2 outputs, per item: `count` detections, then that many labels, indices and scores, and
# 4 x count box coordinates (x1, y1, x2, y2 per detection): rows of different counts are sent flat.
DETECTOR_OUTPUTS = (
    Output("labels", "BYTES", lambda answer: [d["label"] for d in answer["detections"]]),
    Output("indices", "INT64", lambda answer: [d["index"] for d in answer["detections"]]),
    Output("scores", "FP32", lambda answer: [d["score"] for d in answer["detections"]]),
    Output("boxes", "FP32", lambda answer: [c for d in answer["detections"] for c in d["box"]]),
    Output("count", "INT64", lambda answer: len(answer["detections"]), per_item=True),
)


class DetectionOptions(NamedTuple):
    threshold: float       # the lowest score answered
    max_detections: int    # the most detections answered


class DetectionInput(NamedTuple):
    """One request's image as read before decoding (read once: budgets, then decode)."""

    data: bytes                 # the image bytes
    options: DetectionOptions   # threshold and max count from the request or the declaration
    header: Any                 # image_decoding.ImageHeader: format and declared size, read once


class DetectionItem(NamedTuple):
    """One decoded image: RGB uint8 [3, H, W] as displayed (EXIF orientation applied), and its options."""

    image: torch.Tensor
    options: DetectionOptions


# ---- requests ---------------------------------------------------------------------------------------
def request_options(document: Dict[str, Any], defaults: DetectionOptions, where: str) -> DetectionOptions:
    """`threshold` and `max_detections` of a JSON object (the plain body, or a KServe request's
    `parameters`; `where` names it in errors); absent ones keep `defaults`."""
    threshold = document.get("threshold", defaults.threshold)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
        raise InvalidField(f"{where} 'threshold' must be a number from 0 to 1 (the lowest score answered), "
                           f"got {shown(threshold)}")
    count = document.get("max_detections", defaults.max_detections)
    if not is_count(count):  # bounded: the answer estimate multiplies it, torch slices with it
        raise InvalidField(count_error(f"{where} 'max_detections'", count))
    return DetectionOptions(float(threshold), count)


def detection_request(body: Any, content_type: Optional[str], defaults: DetectionOptions) -> Tuple[bytes, DetectionOptions]:
    """The image bytes and options of one request: raw bytes (the defaults), or JSON
    {"image": base64, "threshold": t, "max_detections": n}."""
    if isinstance(body, dict):
        return decode_base64_field(body, "image"), request_options(body, defaults, "JSON field")
    return image_request(body, content_type, 1).data, defaults


# ---- the model's input and output ----------------------------------------------------------------------
def model_images(items: Sequence[DetectionItem], device: torch.device) -> List[torch.Tensor]:
    """Each image as float [3, H, W] in [0, 1] on `device`: a list, sizes kept (moved as uint8: 4x less to copy)."""
    return [F.to_dtype(item.image.to(device, non_blocking=True), torch.float32, scale=True) for item in items]


def model_detections(output: Any) -> List[Dict[str, torch.Tensor]]:
    """The per-image detection dicts of a model's output: `(losses, detections)` from a scripted
    torchvision model, the list itself from an eager one."""
    if isinstance(output, tuple) and len(output) == 2 and isinstance(output[1], list):
        return output[1]
    if isinstance(output, list):
        return output
    raise TypeError(f"a detection model returns a list of dicts (or (losses, detections)), got {type(output).__name__}")


def answer(detection: Dict[str, torch.Tensor], labels: Sequence[str], options: DetectionOptions) -> dict:
    """One image's answer: detections with score >= threshold, most confident first, at most max_detections."""
    scores = detection["scores"].detach().float().cpu()
    order = torch.argsort(scores, descending=True, stable=True)
    order = order[scores[order] >= options.threshold][: options.max_detections]
    boxes = detection["boxes"].detach().float().cpu()[order].tolist()
    indices = detection["labels"].detach().cpu()[order].tolist()
    kept = scores[order].tolist()
    for index in indices:
        if not 0 <= index < len(labels):
            raise ValueError(f"the model gave class index {index} but there are {len(labels)} labels")
    return {"detections": [{"label": labels[i], "index": i, "score": s, "box": b}
                           for i, s, b in zip(indices, kept, boxes)]}


def detection_item_bytes(max_detections: int, longest_label: int) -> int:
    """An upper bound of one image's answer of `max_detections` detections."""
    return max_detections * (longest_label + DETECTION_OVERHEAD_BYTES) + ITEM_OVERHEAD_BYTES


def class_count(model: Any) -> Optional[int]:
    """The number of classes of a torchvision detection model (scripted or eager), background included;
    None where the architecture is not one of these."""
    readers = (
        lambda m: m.roi_heads.box_predictor.cls_score.weight.shape[0],  # Faster / Mask / Keypoint R-CNN
        lambda m: m.head.classification_head.num_columns,              # SSD, SSDlite
        lambda m: m.head.classification_head.num_classes,              # RetinaNet, FCOS
    )
    for read in readers:
        try:
            return int(read(model))
        except (AttributeError, RuntimeError, TypeError):
            continue
    return None


# ---- comparing two answers (the build's parity check, and the tests) -------------------------------------
class Difference(NamedTuple):
    box: float        # largest |coordinate difference| in pixels of matched detections
    score: float      # largest |score difference| of matched detections
    unmatched: int    # detections without a partner that do not sit at the cut (see compare)
    matched: int


def compare(reference: Sequence[dict], served: Sequence[dict], score_tolerance: float = 1e-4) -> Difference:
    """Two answers' detections paired by class and nearest box (greedy, most confident first): scores that
    are nearly tied may come in another order, so order is not compared. A detection without a partner is
    only forgiven at the cut (its score within `score_tolerance` of the lowest score either side kept, where
    a threshold or a count can take one near-tie and not the other)."""
    used = [False] * len(served)
    box_diff = score_diff = 0.0
    unmatched = matched = 0
    floor = min((d["score"] for d in list(reference) + list(served)), default=0.0) + score_tolerance
    for ref in sorted(reference, key=lambda d: -d["score"]):
        best, best_diff = None, None
        for j, candidate in enumerate(served):
            if used[j] or candidate["index"] != ref["index"]:
                continue
            diff = max(abs(a - b) for a, b in zip(ref["box"], candidate["box"]))
            if best_diff is None or diff < best_diff:
                best, best_diff = j, diff
        if best is None:
            unmatched += ref["score"] > floor
            continue
        used[best] = True
        matched += 1
        box_diff = max(box_diff, best_diff)
        score_diff = max(score_diff, abs(ref["score"] - served[best]["score"]))
    unmatched += sum(1 for j, d in enumerate(served) if not used[j] and d["score"] > floor)
    return Difference(box_diff, score_diff, unmatched, matched)
