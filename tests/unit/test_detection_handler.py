"""The object-detector handler without a server: the test run's detector archive (one `make model` of a random
SSDlite made by tests/own_models.py, shared with the served tests), a real ts Context; answers compared with
the scripted model run alone."""

import base64
import io
import json
import os

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import own_models
from handlers.detection import compare
from handlers.model_settings import SettingsError
from handlers.object_detector_handler import ObjectDetectorHandler
from support import encode, extract_archive, make_context, photo, request_batch, responses
from tskit.archive import build
from tskit.kinds import parse_settings
from tskit.declaration import load
from tskit.declare import declare

BOX_TOLERANCE = 1e-3    # of the image's longest side, in pixels
SCORE_TOLERANCE = 1e-4
PHOTOS = ("chelsea", "coffee", "astronaut")  # 451x300, 600x400, 512x512


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    return own_models.detector_source(tmp_path_factory)


@pytest.fixture(scope="module")
def archive(detector, tmp_path_factory):
    """The detector's archive of this test run (one `make model`, shared with the served tests), unpacked."""
    base, report, _ = own_models.detector_archive(tmp_path_factory)
    assert report["outputs"] == 91 and report["max_abs_diff"] < 1  # the build's own parity check (pixels)
    return extract_archive(f"{own_models.DETECTOR_NAME}.mar", str(tmp_path_factory.mktemp("detector_unpacked")),
                           store=os.path.join(base, "model_store"))


def handler_of(archive, **handler_settings):
    model_dir, manifest, model_config = archive
    config = dict(model_config, handler=dict(model_config["handler"], **handler_settings))
    handler = ObjectDetectorHandler()
    handler.initialize(make_context(model_dir, manifest, config))
    return handler


@pytest.fixture(scope="module")
def handler(archive):
    return handler_of(archive)


def run(handler, archive, requests, headers=None):
    context = make_context(*archive)
    outputs = handler.handle(request_batch(context, requests, headers), context)
    return responses(context, outputs)


def json_body(jpeg, **options):
    return {"image": base64.b64encode(jpeg).decode(), **options}


def assert_same(served, reference, image_side):
    difference = compare(reference["detections"], served["detections"], SCORE_TOLERANCE)
    assert difference.unmatched == 0, difference
    assert difference.box <= BOX_TOLERANCE * image_side, difference
    assert difference.score <= SCORE_TOLERANCE, difference
    return difference


def test_images_of_different_sizes_in_one_batch_equal_the_model_alone(handler, archive, detector):
    jpegs = {name: encode(photo(name)) for name in PHOTOS}
    answers = run(handler, archive, [("body", json_body(j, threshold=0.0), "application/json") for j in jpegs.values()])
    for (status, served), (name, jpeg) in zip(answers, jpegs.items()):
        assert status == 200, served
        height, width = photo(name).shape[:2]
        reference = detector.answer(jpeg, 0.0, 100)
        assert len(served["detections"]) == len(reference["detections"]) == 100
        assert_same(served, reference, max(height, width))
        boxes = torch.tensor([d["box"] for d in served["detections"]])
        assert boxes[:, 2].max() <= width and boxes[:, 3].max() <= height and boxes.min() >= 0
        scores = [d["score"] for d in served["detections"]]
        assert scores == sorted(scores, reverse=True)


def test_threshold_and_count_from_the_request_and_from_the_settings(handler, archive, detector):
    jpeg = encode(photo("astronaut"))
    [(status, few)] = run(handler, archive, [("body", json_body(jpeg, threshold=0.1, max_detections=3),
                                              "application/json")])
    assert status == 200 and len(few["detections"]) == 3
    assert_same(few, detector.answer(jpeg, 0.1, 3), 512)
    [(_, default)] = run(handler, archive, [("body", jpeg, "image/jpeg")])  # the declaration's 0.5 and 100
    assert all(d["score"] >= 0.5 for d in default["detections"])
    assert_same(default, detector.answer(jpeg, 0.5, 100), 512)
    lowered = handler_of(archive, scoreThreshold=0.2, maxDetections=5)
    [(_, set_by_settings)] = run(lowered, archive, [("body", jpeg, "image/jpeg")])
    reference = detector.answer(jpeg, 0.2, 5)
    assert len(set_by_settings["detections"]) == len(reference["detections"]) >= 1
    assert_same(set_by_settings, reference, 512)


def test_exif_orientation_gives_boxes_in_the_image_as_displayed(handler, archive, detector):
    stored = photo("chelsea")  # 451 wide, 300 high as stored
    exif = Image.Exif()
    exif[0x0112] = 6           # displayed turned 90 degrees clockwise: 300 wide, 451 high
    rotated = encode(stored, exif=exif.tobytes())
    [(status, served)] = run(handler, archive, [("body", json_body(rotated, threshold=0.0), "application/json")])
    assert status == 200
    # the reference: the same compressed pixels without EXIF, turned by hand
    plain = torch.from_numpy(np.array(Image.open(io.BytesIO(encode(stored))))).permute(2, 0, 1)
    turned = torch.rot90(plain, -1, dims=(1, 2))
    assert tuple(turned.shape[1:]) == (451, 300)
    reference = detector.answer(encode(turned.permute(1, 2, 0).numpy(), "PNG"), 0.0, 100)
    boxes = torch.tensor([d["box"] for d in served["detections"]])
    assert boxes[:, 2].max() <= 300 and boxes[:, 3].max() <= 451
    # PNG of the turned pixels vs JPEG+EXIF: the same pixels only if both decoders agree; compare loosely
    assert_same(served, detector.answer(rotated, 0.0, 100), 451)
    assert compare(reference["detections"], served["detections"]).box < 2.0


def test_a_corrupt_image_in_a_batch_gets_400_alone(handler, archive):
    good = encode(photo("coffee"))
    answers = run(handler, archive, [("body", good, "image/jpeg"), ("body", good[: len(good) // 2], "image/jpeg"),
                                     ("body", json_body(good, threshold=0.0), "application/json")])
    assert [status for status, _ in answers] == [200, 400, 200]
    assert answers[1][1]["type"] == "CorruptImage" and set(answers[1][1]) == {"code", "type", "message"}
    assert len(answers[2][1]["detections"]) == 100


def test_kserve_v2_and_v1_with_parameters(handler, archive, detector):
    jpegs = [encode(photo("coffee")), encode(photo("chelsea"))]
    v2 = {"id": "a", "parameters": {"threshold": 0.0, "max_detections": 4},
          "inputs": [{"name": "image", "datatype": "BYTES", "shape": [2],
                      "data": [base64.b64encode(j).decode() for j in jpegs]}]}
    v1 = {"instances": [{"data": base64.b64encode(jpegs[0]).decode()}]}
    bad = dict(v2, parameters={"threshold": 2})
    (s2, a2), (s1, a1), (sbad, abad) = run(handler, archive, [("body", v2, "application/json"),
                                                              ("body", v1, "application/json"),
                                                              ("body", bad, "application/json")])
    assert s2 == 200 and s1 == 200
    outputs = {o["name"]: o["data"] for o in a2["outputs"]}
    assert outputs["count"] == [4, 4] and len(outputs["boxes"]) == 32
    first = detector.answer(jpegs[0], 0.0, 4)["detections"]
    assert outputs["labels"][:4] == [d["label"] for d in first]
    assert outputs["scores"][:4] == pytest.approx([d["score"] for d in first], abs=SCORE_TOLERANCE)
    assert_same(a1["predictions"][0], detector.answer(jpegs[0], 0.5, 100), 600)
    assert sbad == 400 and abad["type"] == "InvalidField" and "'threshold' must be a number from 0 to 1" in abad["message"]
    assert "error" in abad  # a v2 error also carries v2's "error"


@pytest.mark.parametrize("section, message", [
    ({"scoreThreshold": 1.5}, r"handler\.scoreThreshold: must be from 0 to 1"),
    ({"scoreThreshold": "high"}, r"handler\.scoreThreshold: expected float"),
    ({"maxDetections": 0}, r"handler\.maxDetections: must be >= 1"),
    ({"topk": 3}, r"handler\.topk is not a setting of a object-detector"),
])
def test_settings_are_typed_and_checked(section, message):
    with pytest.raises(SettingsError, match=message):
        parse_settings("object-detector", section)


def test_labels_of_the_wrong_length_and_other_formats_are_refused(detector, tmp_path):
    from tskit.declaration import DeclarationError
    from tskit.sources import SourceError

    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps(["background", "cat", "dog"]))
    declare("three", "object-detector", detector.pt, str(labels), models_dir=str(tmp_path / "models"))
    with pytest.raises(SettingsError, match=r"labels\.json has 3 labels but the model gives 91 outputs"):
        build(load("three", str(tmp_path / "models")), store=str(tmp_path / "store"), build_dir=str(tmp_path / "b"))
    with pytest.raises(DeclarationError, match=r"FORMAT=onnx: detector\.pt can give torchscript"):
        declare("onnx", "object-detector", detector.pt, model_format="onnx", models_dir=str(tmp_path / "models"))
    onnx = tmp_path / "detector.onnx"
    onnx.write_bytes(b"")
    with pytest.raises(SourceError, match=r"an object-detector source is a torchvision detection model saved"):
        declare("onnx", "object-detector", str(onnx), models_dir=str(tmp_path / "models"))
    assert not os.path.exists(tmp_path / "store" / "three.mar")
    written = yaml.safe_load((tmp_path / "models" / "three" / "model.yaml").read_text())
    assert written["kind"] == "object-detector" and written["handler"]["scoreThreshold"] == 0.5
