"""The pure detection module (handlers/detection.py): request options, the model's input and output, answers."""

import pytest
import torch

from handlers.detection import (
    DETECTOR_OUTPUTS,
    DetectionItem,
    DetectionOptions,
    answer,
    compare,
    detection_item_bytes,
    detection_request,
    model_detections,
    model_images,
    request_options,
)
from handlers.protocols import ModelInfo, V2Request
from handlers.request_errors import InvalidField
from support import encode, photo

DEFAULTS = DetectionOptions(0.5, 100)
LABELS = ["__background__", "cat", "dog", "boat"]


def detection(boxes, scores, labels):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32), "scores": torch.tensor(scores),
            "labels": torch.tensor(labels, dtype=torch.int64)}


MODEL_OUTPUT = detection([[0, 0, 10, 10], [5, 5, 20, 30], [1, 2, 3, 4], [7, 7, 8, 9]],
                         [0.3, 0.9, 0.6, 0.05], [1, 2, 3, 1])


def test_answer_is_most_confident_first_above_the_threshold_and_capped():
    detections = answer(MODEL_OUTPUT, LABELS, DetectionOptions(0.25, 100))["detections"]
    assert [d["score"] for d in detections] == pytest.approx([0.9, 0.6, 0.3])
    assert [(d["label"], d["index"]) for d in detections] == [("dog", 2), ("boat", 3), ("cat", 1)]
    assert detections[0]["box"] == [5.0, 5.0, 20.0, 30.0]
    assert len(answer(MODEL_OUTPUT, LABELS, DetectionOptions(0.0, 2))["detections"]) == 2
    assert answer(MODEL_OUTPUT, LABELS, DetectionOptions(0.95, 100)) == {"detections": []}


def test_a_class_index_beyond_the_labels_is_an_error():
    with pytest.raises(ValueError, match="class index 7 but there are 4 labels"):
        answer(detection([[0, 0, 1, 1]], [0.9], [7]), LABELS, DEFAULTS)


def test_model_output_forms():
    assert model_detections(({}, [MODEL_OUTPUT])) == [MODEL_OUTPUT]  # scripted: (losses, detections)
    assert model_detections([MODEL_OUTPUT]) == [MODEL_OUTPUT]         # eager
    with pytest.raises(TypeError):
        model_detections(torch.zeros(2))


def test_model_images_keep_each_size_as_floats_in_0_1():
    items = [DetectionItem(torch.full((3, h, w), 255, dtype=torch.uint8), DEFAULTS) for h, w in ((4, 6), (5, 3))]
    images = model_images(items, torch.device("cpu"))
    assert [tuple(i.shape) for i in images] == [(3, 4, 6), (3, 5, 3)]
    assert all(i.dtype == torch.float32 and i.max().item() == 1.0 for i in images)


@pytest.mark.parametrize("document, message", [
    ({"threshold": 1.5}, "'threshold' must be a number from 0 to 1"),
    ({"threshold": "high"}, "'threshold' must be a number from 0 to 1"),
    ({"threshold": True}, "'threshold' must be a number from 0 to 1"),
    ({"max_detections": 0}, "'max_detections' must be a positive integer, got 0"),
    ({"max_detections": 2.5}, "'max_detections' must be a positive integer"),
    ({"max_detections": [3]}, "'max_detections' must be a positive integer, got an array"),
])
def test_bad_options_are_refused_naming_the_field(document, message):
    with pytest.raises(InvalidField, match=message):
        request_options(document, DEFAULTS, "JSON field")


def test_options_from_json_and_defaults():
    assert request_options({}, DEFAULTS, "x") == DEFAULTS
    assert request_options({"threshold": 0, "max_detections": 3}, DEFAULTS, "x") == DetectionOptions(0.0, 3)
    jpeg = encode(photo("coffee"))
    assert detection_request(jpeg, "image/jpeg", DEFAULTS) == (jpeg, DEFAULTS)
    import base64
    body = {"image": base64.b64encode(jpeg).decode(), "threshold": 0.2}
    assert detection_request(body, "application/json", DEFAULTS) == (jpeg, DetectionOptions(0.2, 100))


def test_compare_pairs_detections_whatever_their_order():
    a = answer(MODEL_OUTPUT, LABELS, DetectionOptions(0.0, 100))["detections"]
    moved = [dict(d, box=[c + 0.001 for c in d["box"]], score=d["score"] + 1e-6) for d in reversed(a)]
    difference = compare(a, moved)
    assert difference.unmatched == 0 and difference.matched == 4
    assert difference.box == pytest.approx(0.001, abs=1e-6) and difference.score == pytest.approx(1e-6, abs=1e-7)
    assert compare(a, moved[:-1]).unmatched == 1                  # the 0.9 one is missing: not at the cut
    assert compare(a, [d for d in moved if d["score"] > 0.1]).unmatched == 0  # the lowest one: at the cut
    relabelled = [dict(d, index=(d["index"] % 3) + 1) for d in moved]
    wrong = compare(a, relabelled)  # other classes: paired with far boxes, or left without a partner
    assert wrong.box > 1 or wrong.unmatched > 0


def test_v2_outputs_give_counts_and_flat_boxes():
    answers = [answer(MODEL_OUTPUT, LABELS, DetectionOptions(0.25, 100)), answer(MODEL_OUTPUT, LABELS, DEFAULTS)]
    request = V2Request(id="7", input_name="image", elements=["a", "b"])
    import json
    document = json.loads(request.respond(answers, ModelInfo("det", "1.0", DETECTOR_OUTPUTS)).body)
    outputs = {o["name"]: o for o in document["outputs"]}
    assert outputs["count"]["data"] == [3, 2] and outputs["count"]["shape"] == [2]
    assert outputs["labels"]["data"] == ["dog", "boat", "cat", "dog", "boat"]
    assert outputs["boxes"]["shape"] == [20] and outputs["boxes"]["data"][:4] == [5.0, 5.0, 20.0, 30.0]


def test_answer_bound_covers_a_long_answer():
    labels = ["a" * 40] * 3
    many = detection([[1.2345678901234567e-05] * 4] * 50, [0.123456789] * 50, [1] * 50)
    import json
    assert len(json.dumps(answer(many, labels, DetectionOptions(0.0, 50)))) <= detection_item_bytes(50, 42)
