"""The vision handler without a server: the archive built by the Makefile, a real ts Context."""

import base64

import pytest
import torch

from handlers.image_classifier_handler import ImageClassifierHandler
from support import CAT_LABELS, encode, extract_archive, make_context, photo, request_batch, responses


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    return extract_archive("mobilenet_v2.mar", str(tmp_path_factory.mktemp("mobilenet_v2")))


@pytest.fixture(scope="module")
def handler(archive):
    model_dir, manifest, model_config = archive
    handler = ImageClassifierHandler()
    handler.initialize(make_context(model_dir, manifest, model_config))
    return handler


def run(handler, archive, requests):
    context = make_context(*archive)
    rows = request_batch(context, requests)
    outputs = handler.handle(rows, context)
    assert len(outputs) == len(rows)
    for idx in range(len(rows)):
        assert context.get_response_content_type(idx) == "application/json"
    return responses(context, outputs)


def test_real_photos_are_classified(handler, archive):
    answers = run(handler, archive, [
        ("body", encode(photo("chelsea")), "image/jpeg"),
        ("body", encode(photo("coffee"), "PNG"), "image/png"),
    ])
    (status_cat, cat), (status_coffee, coffee) = answers
    assert status_cat == status_coffee == 200
    assert cat["predictions"][0]["label"] in CAT_LABELS
    assert coffee["predictions"][0]["label"] == "espresso"
    assert len(cat["predictions"]) == 5
    assert [p["probability"] for p in cat["predictions"]] == sorted(
        (p["probability"] for p in cat["predictions"]), reverse=True)


def test_every_input_form_gives_the_same_answer(handler, archive):
    jpeg = encode(photo("chelsea"))
    answers = run(handler, archive, [
        ("body", jpeg, "image/jpeg"),
        ("body", jpeg, "application/octet-stream"),
        ("data", jpeg, "image/jpeg"),  # multipart field
        ("body", {"image": base64.b64encode(jpeg).decode()}, "application/json"),
    ])
    first = answers[0][1]["predictions"][0]
    for status, body in answers:
        assert status == 200
        assert body["predictions"][0]["index"] == first["index"]
        assert body["predictions"][0]["probability"] == pytest.approx(first["probability"], abs=1e-5)


def test_topk_from_json_is_capped_at_the_class_count(handler, archive):
    jpeg64 = base64.b64encode(encode(photo("chelsea"))).decode()
    [(status, body)] = run(handler, archive, [("body", {"image": jpeg64, "topk": 5000}, "application/json")])
    assert status == 200 and len(body["predictions"]) == 1000


def test_bad_item_in_the_middle_of_a_batch(handler, archive):
    good = encode(photo("coffee"))
    answers = run(handler, archive, [
        ("body", good, "image/jpeg"),
        ("body", good[: len(good) // 2], "image/jpeg"),  # truncated
        ("body", good, "image/jpeg"),
    ])
    assert [status for status, _ in answers] == [200, 400, 200]
    assert answers[1][1] == {"code": 400, "type": "CorruptImage",
                             "message": "the JPEG data is truncated (no end-of-image marker)"}
    assert answers[0][1] == answers[2][1]
    assert answers[0][1]["predictions"][0]["label"] == "espresso"


def test_jpeg_with_zeroed_scan_data_is_a_400_not_a_meaningless_200(handler, archive):
    """Headers and end-of-image marker intact, scan data zeroed: libjpeg decoded it to flat gray and the
    model answered it. Small (full-size decode) and large (reduced decode by Pillow) JPEGs alike."""
    from PIL import Image

    from hostile_inputs import jpeg_with_zeroed_scan

    good = encode(photo("coffee"))
    small = jpeg_with_zeroed_scan(encode(photo("chelsea")))
    large = jpeg_with_zeroed_scan(encode(Image.fromarray(photo("chelsea")).resize((1024, 768))))  # >= 2 x 256
    answers = run(handler, archive, [("body", good, "image/jpeg"), ("body", small, "image/jpeg"),
                                     ("body", large, "image/jpeg"), ("body", good, "image/jpeg")])
    assert [status for status, _ in answers] == [200, 400, 400, 200]
    for _, bad in answers[1:3]:
        assert bad == {"code": 400, "type": "CorruptImage", "message": "the JPEG image data is damaged "
                       "(libjpeg: Corrupt JPEG data: premature end of data segment)"}
    assert answers[0][1] == answers[3][1] and answers[0][1]["predictions"][0]["label"] == "espresso"


def test_batch_answers_equal_single_answers(handler, archive):
    names = ["chelsea", "coffee", "astronaut", "rocket"]
    blobs = [encode(photo(n)) for n in names]
    batched = run(handler, archive, [("body", b, "image/jpeg") for b in blobs])
    for blob, (status, body) in zip(blobs, batched):
        [(_, single)] = run(handler, archive, [("body", blob, "image/jpeg")])
        assert body["predictions"][0]["index"] == single["predictions"][0]["index"]
        assert body["predictions"][0]["probability"] == pytest.approx(single["predictions"][0]["probability"], abs=1e-4)


BAD_INPUTS = [
    ("empty body", ("body", b"", "image/jpeg"), 400, "EmptyBody"),
    ("text body", ("body", "a cat", "text/plain"), 415, "UnsupportedMediaType"),
    ("truncated BMP", ("body", None, "image/bmp"), 400, "CorruptImage"),
    ("random bytes", ("body", bytes(range(256)), "application/octet-stream"), 415, "UnsupportedMediaType"),
    ("malformed JSON", ("body", b'{"image": ', "application/json"), 400, "InvalidJSON"),
    ("missing field", ("body", {"picture": "AAAA"}, "application/json"), 400, "InvalidField"),
    ("wrong type", ("body", {"image": [1, 2, 3]}, "application/json"), 400, "InvalidField"),
    ("invalid base64", ("body", {"image": "@@@"}, "application/json"), 400, "InvalidBase64"),
    ("no data part", ("file", b"x", "image/jpeg"), 400, "InvalidField"),
    ("bomb", ("body", None, "image/png"), 413, "ImageTooLarge"),
    ("tiff", ("body", None, "image/tiff"), 415, "UnsupportedMediaType"),
]


@pytest.mark.parametrize("name, request_, status, kind", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_each_bad_input_gets_its_4xx_and_the_good_neighbour_is_served(handler, archive, name, request_, status, kind):
    from PIL import Image

    key, value, content_type = request_
    if name == "bomb":
        value = encode(Image.new("1", (20000, 20000)), "PNG")
    if name == "truncated BMP":
        value = encode(photo("chelsea"), "BMP")[:3000]
    if name == "tiff":
        value = encode(photo("chelsea"), "TIFF")
    answers = run(handler, archive, [(key, value, content_type), ("body", encode(photo("chelsea")), "image/jpeg")])
    (bad_status, bad), (good_status, good) = answers
    assert bad_status == status and bad["code"] == status and bad["type"] == kind
    assert len(bad["message"]) > 10
    assert good_status == 200 and good["predictions"][0]["label"] in CAT_LABELS


def test_a_failing_model_answers_500_per_request_and_keeps_the_handler(handler, archive, monkeypatch):
    def broken(_inputs):
        raise RuntimeError("simulated kernel failure")

    monkeypatch.setattr(handler, "inference", broken)
    answers = run(handler, archive, [("body", encode(photo("chelsea")), "image/jpeg"), ("body", b"", "image/jpeg")])
    assert [s for s, _ in answers] == [500, 400]
    assert answers[0][1]["type"] == "InternalError"


def test_served_model_matches_the_source_in_process_on_real_photos(tmp_path):
    """The archive's model (in its declared format, loaded as the worker loads it) against torchvision's
    MobileNetV2 with the same weights, eager, on real photos through the handler's preprocessing."""
    from support import served_model
    from tskit.bundled import mobilenet_v2
    from tskit.real_images import agreement_images, model_inputs

    served, source = served_model("mobilenet_v2.mar", str(tmp_path)), mobilenet_v2().module
    x = model_inputs([jpeg for _, jpeg in agreement_images(100)[:24]])
    with torch.inference_mode():
        a, b = source(x), served(x)
    assert (a - b).abs().max() < 1e-3
    assert torch.equal(a.argmax(-1), b.argmax(-1))


def test_device_is_cpu_without_gpu_id(handler):
    assert handler.device == torch.device("cpu")
