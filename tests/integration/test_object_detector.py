"""`make model KIND=object-detector` on a detector made on the spot, served by a private TorchServe.

tests/own_models.make_detector makes a random (seeded) SSDlite320 saved with torch.jit.script; ONE
`make model` builds its archive into a temp MODELS_DIR / STORE / BUILD (nothing is written into the
repo); a private TorchServe serves it. Every served answer must equal the scripted model run in process
on the same image alone (detections paired by class and box: the same boxes within BOX_TOLERANCE of the
image's longest side, scores within SCORE_TOLERANCE, no detection without its partner), on real photos
of different sizes, a JPEG with EXIF orientation, and concurrent requests of different sizes batched
together. Threshold and count come from the request or the declaration (0.5 and 100); a corrupt image
among good ones gets its own 400.
"""

import base64
import json
import os
import threading
import zipfile
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from PIL import Image

import own_models
from conftest import Client
from handlers.detection import compare
from own_server import own_server
from support import REPO, encode, photo
from tskit.kinds.inputs import DETECTOR_IMAGE_SIZES

pytestmark = pytest.mark.heavy(seconds=60)  # seconds in a one-process run on 2 cores (tests/suite_order.py)

BOX_TOLERANCE = 1e-3    # of the image's longest side, in pixels
SCORE_TOLERANCE = 1e-4
NAME = own_models.DETECTOR_NAME
PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")  # 451x300, 600x400, 512x512, 427x640
measured = {"worst_box_px": 0.0, "worst_box_relative": 0.0, "worst_score": 0.0}


@pytest.fixture(scope="module", autouse=True)
def printed_figures():
    """This run's build time and parity figures, printed once the module's tests are done (pytest -s shows
    them); each figure is asserted where it is measured."""
    yield measured
    print("\n[object detector] " + json.dumps(measured, indent=1))


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    return own_models.detector_source(tmp_path_factory)


@pytest.fixture(scope="module")
def built(detector, tmp_path_factory):
    """ONE `make model` of the detector per test run, shared with tests/unit/test_detection_handler.py."""
    base, report, seconds = own_models.detector_archive(tmp_path_factory)
    measured["make_model_s"] = round(seconds, 1)
    measured["build_parity_box_px"] = report["max_abs_diff"]
    return base, report


@pytest.fixture(scope="module")
def client(built):
    base, _ = built
    started = time.monotonic()
    with own_server(base, models=[], load_models=f"{NAME}.mar") as server:
        server.wait_ready([NAME], timeout=600)
        measured["server_ready_s"] = round(time.monotonic() - started, 1)
        yield Client(server)


@pytest.fixture(scope="module")
def images():
    made = {name: encode(photo(name)) for name in PHOTOS}
    exif = Image.Exif()
    exif[0x0112] = 8  # displayed turned 90 degrees counter-clockwise: 300 wide, 451 high
    made["chelsea_exif8"] = encode(photo("chelsea"), exif=exif.tobytes())
    return made


def displayed_size(jpeg):
    from handlers.image_decoding import decode_rgb

    height, width = decode_rgb(jpeg, 10 ** 8).shape[1:]
    return width, height


def detect(client, jpeg, **options):
    if not options:
        return client.predict(NAME, jpeg, "image/jpeg")
    body = json.dumps({"image": base64.b64encode(jpeg).decode("ascii"), **options})
    return client.predict(NAME, body, "application/json")


def assert_same(served, reference, jpeg):
    side = max(displayed_size(jpeg))
    difference = compare(reference["detections"], served["detections"], SCORE_TOLERANCE)
    assert difference.unmatched == 0, difference
    assert difference.box <= BOX_TOLERANCE * side, difference
    assert difference.score <= SCORE_TOLERANCE, difference
    measured["worst_box_px"] = max(measured["worst_box_px"], difference.box)
    measured["worst_box_relative"] = max(measured["worst_box_relative"], difference.box / side)
    measured["worst_score"] = max(measured["worst_score"], difference.score)


def test_the_build_names_coco_classes_and_checks_itself(built):
    base, report = built
    assert report["kind"] == "object-detector" and report["format"] == "torchscript" and report["outputs"] == 91
    # the build's own check (tskit.formats.detector_parity): the archive's model file, loaded as a worker loads
    # it, against the source on images of several sizes; its largest box difference in pixels is reported
    largest_side = max(max(size) for size in DETECTOR_IMAGE_SIZES)
    assert isinstance(report["max_abs_diff"], (int, float))
    assert 0 <= report["max_abs_diff"] <= BOX_TOLERANCE * largest_side, report
    # no LABELS: none declared, and the archive names COCO's classes (torchvision's weights meta)
    assert not os.path.exists(os.path.join(base, "models", NAME, "labels.json"))
    with zipfile.ZipFile(os.path.join(base, "model_store", f"{NAME}.mar")) as archive:
        names = json.loads(archive.read("index_to_name.json"))
    assert len(names) == 91 and names["1"] == "person" and names["0"] == "__background__"
    assert not os.path.exists(os.path.join(REPO, "models", NAME))
    assert not os.path.exists(os.path.join(REPO, "model_store", f"{NAME}.mar"))


def test_each_photo_alone_equals_the_model_in_process(client, detector, images):
    for name, jpeg in images.items():
        response = detect(client, jpeg, threshold=0.0, max_detections=100)
        assert response.status_code == 200, response.text
        served = response.json()
        assert len(served["detections"]) == 100
        width, height = displayed_size(jpeg)
        assert all(0 <= d["box"][0] <= d["box"][2] <= width and 0 <= d["box"][1] <= d["box"][3] <= height
                   for d in served["detections"]), name
        assert_same(served, detector.answer(jpeg, 0.0, 100), jpeg)
    assert displayed_size(images["chelsea_exif8"]) == (300, 451)
    labels = {d["label"] for d in served["detections"]}
    assert "__background__" not in labels and labels <= set(detector_labels())


def detector_labels():
    from tskit.sources import coco_categories

    return coco_categories()


def test_concurrent_requests_of_different_sizes_batched_together(client, detector, images):
    names = list(PHOTOS)
    references = {n: detector.answer(images[n], 0.0, 20) for n in names}
    for attempt in range(3):  # until they share a batch (batchSize 4, maxBatchDelay 20 ms)
        before = len(client.batch_sizes(NAME))
        barrier = threading.Barrier(len(names))

        def send(name):
            barrier.wait()
            return detect(client, images[name], threshold=0.0, max_detections=20)

        with ThreadPoolExecutor(max_workers=len(names)) as pool:
            answers = list(pool.map(send, names))
        for name, response in zip(names, answers):
            assert response.status_code == 200, response.text
            assert_same(response.json(), references[name], images[name])
        sizes = client.batches_since(NAME, before, len(names))
        if max(sizes) > 1:
            break
    measured["concurrent_batch_sizes"] = sizes
    assert max(sizes) > 1, f"the requests never shared a batch: {sizes}"


def test_threshold_and_count_from_the_request_and_the_declaration(client, detector, images):
    jpeg = images["astronaut"]
    few = detect(client, jpeg, threshold=0.1, max_detections=3).json()
    assert len(few["detections"]) == 3 and all(d["score"] >= 0.1 for d in few["detections"])
    assert_same(few, detector.answer(jpeg, 0.1, 3), jpeg)
    default = detect(client, jpeg).json()  # raw bytes: the declaration's scoreThreshold 0.5, maxDetections 100
    assert all(d["score"] >= 0.5 for d in default["detections"])
    assert_same(default, detector.answer(jpeg, 0.5, 100), jpeg)
    bad = detect(client, jpeg, threshold=-1)
    assert bad.status_code == 400 and bad.json()["type"] == "InvalidField"


def test_kserve_v2_with_parameters_answers_per_image(client, detector, images):
    jpegs = [images["coffee"], images["rocket"]]
    body = {"id": "d", "parameters": {"threshold": 0.0, "max_detections": 5},
            "inputs": [{"name": "image", "datatype": "BYTES", "shape": [2],
                        "data": [base64.b64encode(j).decode() for j in jpegs]}]}
    response = client.infer("POST", f"/v2/models/{NAME}/infer", data=json.dumps(body),
                            headers={"Content-Type": "application/json"})
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o["data"] for o in response.json()["outputs"]}
    assert outputs["count"] == [5, 5] and len(outputs["boxes"]) == 40
    for i, jpeg in enumerate(jpegs):
        served = {"detections": [{"label": outputs["labels"][k], "index": outputs["indices"][k],
                                  "score": outputs["scores"][k], "box": outputs["boxes"][4 * k: 4 * k + 4]}
                                 for k in range(5 * i, 5 * i + 5)]}
        assert_same(served, detector.answer(jpeg, 0.0, 5), jpeg)


def test_a_corrupt_image_among_good_ones_gets_400_alone(client, detector, images):
    good = [images["chelsea"], images["rocket"]]
    bodies = [good[0], good[0][: len(good[0]) // 3], good[1]]
    for attempt in range(3):
        before = len(client.batch_sizes(NAME))
        barrier = threading.Barrier(len(bodies))

        def send(body):
            barrier.wait()
            return detect(client, body, threshold=0.0, max_detections=10)

        with ThreadPoolExecutor(max_workers=len(bodies)) as pool:
            answers = list(pool.map(send, bodies))
        assert answers[1].status_code == 400, answers[1].text
        assert answers[1].json()["type"] == "CorruptImage" and set(answers[1].json()) == {"code", "type", "message"}
        for jpeg, response in zip(good, (answers[0], answers[2])):
            assert response.status_code == 200, response.text
            assert_same(response.json(), detector.answer(jpeg, 0.0, 10), jpeg)
        sizes = client.batches_since(NAME, before, len(bodies))
        if max(sizes) == len(bodies):
            break
    measured["corrupt_batch_sizes"] = sizes
    assert max(sizes) > 1, f"the corrupt image never shared a batch: {sizes}"
