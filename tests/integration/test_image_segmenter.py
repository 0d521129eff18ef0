"""`make model KIND=image-segmenter` from a .pt, an .onnx and a .pt2 (tests/own_segmenters.py: class maps that
follow the picture, two sources in torchvision's {"out": ...} form), one archive per serving format
(torchscript, onnx, aoti, openvino), served by one private TorchServe. Every served class map equals, pixel for pixel, the
archive's own model file run in process as a worker loads it (the handlers' decode, resize without a crop,
normalise; logits upsampled bilinearly to the photo's size; arg-max), alone and batched with others, and so do
the fractions; a photo's map holds several classes. A JSON request gets the same answer, and a KServe v2
request as tensors; an image whose mask would need more than maxMaskBytes, and a corrupt one, get their own
413 and 400.
"""

import base64
import io
import json
import os
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from PIL import Image
from torchvision.io import decode_png

import own_segmenters
from conftest import Client
from own_models import make_model, once
from own_server import own_server
from support import encode, photo
from videos import decoded_frames, make_video

pytestmark = pytest.mark.heavy(seconds=90)  # seconds in a one-process run on 2 cores (tests/suite_order.py)

ROUTES = {"seg_ts": ("pt", "torchscript"), "seg_onnx": ("onnx", "onnx"), "seg_aoti": ("pt2", "aoti"),
          "seg_openvino": ("pt", "openvino")}
PHOTOS = ("chelsea", "coffee", "astronaut")  # 451x300, 600x400, 512x512


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """ONE make model per format, into a temp MODELS_DIR / STORE / BUILD."""
    def build(base):
        files = own_segmenters.make_segmenters(os.path.join(base, "sources"))
        labels = os.path.join(base, "labels.json")
        with open(labels, "w", encoding="utf-8") as f:
            json.dump(own_segmenters.SEGMENTER_CLASSES, f)
        for name, (source, model_format) in ROUTES.items():
            result, _ = make_model(base, name, "image-segmenter", getattr(files, source), model_format, labels,
                                   timeout=900)
            assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]

    return once(tmp_path_factory, "segmenters", build)


@pytest.fixture(scope="module")
def client(built):
    with own_server(built, models=[], load_models=",".join(f"{name}.mar" for name in ROUTES)) as server:
        server.wait_ready(list(ROUTES), timeout=600)
        yield Client(server)


@pytest.fixture(scope="module")
def references(built, tmp_path_factory):
    """Each archive's served file, unpacked and loaded as its worker loads it."""
    made = {}
    for name, (_, model_format) in ROUTES.items():
        folder = tmp_path_factory.mktemp(name)
        with zipfile.ZipFile(os.path.join(built, "model_store", f"{name}.mar")) as archive:
            archive.extractall(folder)
            served = json.loads(archive.read("MAR-INF/MANIFEST.json"))["model"]["serializedFile"]
        made[name] = own_segmenters.SegmentReference(str(folder / served), model_format,
                                                     own_segmenters.SEGMENTER_CLASSES)
    return made


@pytest.fixture(scope="module")
def images():
    return {name: encode(photo(name)) for name in PHOTOS}


def mask_of(answer) -> torch.Tensor:
    return decode_png(torch.frombuffer(bytearray(base64.b64decode(answer["mask"]["data"])), dtype=torch.uint8))[0]


@pytest.mark.parametrize("name", list(ROUTES))
def test_each_format_answers_the_class_map_of_its_model_in_process(client, references, images, name):
    for photo_name, jpeg in images.items():
        response = client.predict(name, jpeg, "image/jpeg")
        assert response.status_code == 200, response.text
        served, expected = response.json(), references[name].answer(jpeg)
        height, width = photo(photo_name).shape[:2]
        assert (served["mask"]["width"], served["mask"]["height"], served["mask"]["format"]) == (width, height, "png")
        assert torch.equal(mask_of(served), mask_of(expected)), (name, photo_name)
        assert served["classes"] == expected["classes"]
        assert abs(sum(c["fraction"] for c in served["classes"]) - 1) < 1e-5
        # the map follows the picture: more than one class, each listed largest first
        assert len([c for c in served["classes"] if c["fraction"] >= 0.05]) >= 2, served["classes"]
        assert [c["fraction"] for c in served["classes"]] == sorted((c["fraction"] for c in served["classes"]),
                                                                    reverse=True)


@pytest.mark.parametrize("name", ["seg_ts", "seg_onnx"])
def test_concurrent_photos_of_different_sizes_share_a_batch_and_each_gets_its_own_map(client, references, images,
                                                                                       name):
    photos = list(PHOTOS) * 2
    for attempt in range(3):  # until they share a batch (make model's batchSize 4, maxBatchDelay 20 ms)
        before = len(client.batch_sizes(name))
        barrier = threading.Barrier(len(photos))

        def send(photo_name):
            barrier.wait()
            return client.predict(name, images[photo_name], "image/jpeg")

        with ThreadPoolExecutor(max_workers=len(photos)) as pool:
            answers = list(pool.map(send, photos))
        for photo_name, response in zip(photos, answers):
            assert response.status_code == 200, response.text
            expected = references[name].answer(images[photo_name])
            assert torch.equal(mask_of(response.json()), mask_of(expected)), (name, photo_name)
        sizes = client.batches_since(name, before, len(photos))
        if max(sizes) > 1:
            break
    assert max(sizes) > 1, f"the requests never shared a batch: {sizes}"


def test_the_formats_agree_on_a_photo(client, images):
    masks = [mask_of(client.predict(name, images["coffee"], "image/jpeg").json()) for name in ROUTES]
    different = [int((m != masks[0]).sum()) for m in masks[1:]]
    assert all(d <= masks[0].numel() // 1000 for d in different), different  # near-ties only, at boundaries


def test_a_json_request_and_a_v2_request_get_the_same_answer(client, references, images):
    jpeg = images["chelsea"]
    body = json.dumps({"image": base64.b64encode(jpeg).decode("ascii")})
    response = client.predict("seg_onnx", body, "application/json")
    assert response.status_code == 200, response.text
    assert response.json() == references["seg_onnx"].answer(jpeg)
    body = {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                        "data": [base64.b64encode(jpeg).decode("ascii")]}]}
    response = client.infer("POST", "/v2/models/seg_onnx/infer", json=body)
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o for o in response.json()["outputs"]}
    expected = references["seg_onnx"].answer(jpeg)
    assert list(outputs) == ["mask", "width", "height", "labels", "indices", "fractions"]
    assert outputs["mask"]["data"] == [expected["mask"]["data"]]
    assert outputs["width"]["data"] == [451] and outputs["height"]["data"] == [300]
    assert outputs["labels"]["data"] == [c["label"] for c in expected["classes"]]
    assert outputs["fractions"]["data"] == pytest.approx([c["fraction"] for c in expected["classes"]])


def test_a_mask_over_its_budget_and_a_corrupt_image_get_their_own_errors(client, images):
    buffer = io.BytesIO()
    Image.new("RGB", (6000, 3000), (200, 30, 30)).save(buffer, "PNG")  # 18 MP x 4 classes x 4 bytes: 288 MB
    response = client.predict("seg_ts", buffer.getvalue(), "image/png")
    assert response.status_code == 413, response.text
    assert "maxMaskBytes" in response.json()["message"]
    response = client.predict("seg_ts", images["coffee"][:500], "image/jpeg")
    assert response.status_code == 400, response.text
    assert client.predict("seg_ts", images["coffee"], "image/jpeg").status_code == 200


def test_a_video_streams_in_steps_a_photo_joins_between_them_and_each_map_is_its_photos(client, images):
    """`make model` declares continuous batching (one worker): a video's frames go in steps of videoFramesPerStep
    and a photo sent meanwhile joins the next step, answered before the video ends."""
    clip = make_video(PHOTOS * 8, 1.0, 2, "mp4")  # 24 answered frames: 3 steps
    response = client.predict("seg_onnx", clip, "video/mp4", stream=True)
    assert response.status_code == 200 and response.headers["content-type"] == "application/x-ndjson"
    chunks = response.iter_content(chunk_size=None)
    arrivals = [(next(chunks), time.monotonic())]
    photo_answer = client.predict("seg_onnx", images["coffee"], "image/jpeg")
    answered = time.monotonic()
    arrivals += [(chunk, time.monotonic()) for chunk in chunks]
    assert photo_answer.status_code == 200 and answered < arrivals[-1][1]
    lines = [json.loads(line) for chunk, _ in arrivals for line in chunk.decode().splitlines()]
    assert [line.get("frame") for line in lines] == list(range(24)) + [None] and lines[-1]["done"] is True
    assert len(arrivals) >= 3 and lines[0]["mask"]["width"] == 320
    frames = decoded_frames(clip)
    for index in (0, 1, 2, 23):
        png = encode(frames[index][1].permute(1, 2, 0).numpy(), "PNG")
        expected = client.predict("seg_onnx", png, "image/png").json()
        assert mask_of(lines[index]).equal(mask_of(expected)), index
        assert lines[index]["classes"] == expected["classes"]
