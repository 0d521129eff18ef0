"""Hostile input against the real server, interleaved with good requests at concurrency 16.

Every hostile request gets either a correct 200 or the contract's 4xx JSON error
{"code", "type", "message"} (v2 errors add v2's "error") with a message a user can act on, in a body
well under 64 KB whatever the request repeated (an answer over max_response_size makes the frontend
restart the worker); a body over max_request_size gets the frontend's bare 413. They are sent
shuffled among good requests so that they share batches with them (checked in the model log), every
good request must get its right answer, and no worker may restart (worker pids from the describe API
unchanged).
"""

import base64
import json
import random
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import pytest
from PIL import Image

from hostile_inputs import (
    animated_gif,
    cat,
    cmyk_jpeg,
    jpeg_cut_in_scan,
    jpeg_with_zeroed_scan,
    png16_gray,
    png16_rgb,
    png_declaring,
    png_with_bad_idat_crc,
    png_with_bad_row_filter,
    png_with_damaged_zlib,
    png_with_zeroed_idat,
    with_orientation,
    STORE_TRANSPOSE,
)
from support import CAT_LABELS, encode, photo

VISION = "mobilenet_v2"
TEXT_MODELS = ("minilm_embedding", "minilm_topics")
MODELS = (VISION,) + TEXT_MODELS
STRIKER = "The striker scored twice in the final"


@dataclass
class Case:
    name: str
    model: str
    body: bytes
    content_type: Optional[str]
    status: int
    kind: Optional[str] = None  # the error `type` (None for 200 and for the frontend's 413)
    says: str = ""  # the error message must contain this (case-insensitive), or the 200 check
    check: Optional[Callable[[dict], None]] = None  # for 200s
    route: str = "predictions"  # or "v1" (/v1/models/<m>:predict), "v2" (/v2/models/<m>/infer)
    headers: Optional[Dict[str, str]] = None


ROUTES = {"predictions": "/predictions/{}", "v1": "/v1/models/{}:predict", "v2": "/v2/models/{}/infer"}
ERROR_BODY_BYTES = 64 * 1024  # an error answer is the contract's JSON and a bounded message: far below this


def cat_answer(answer: dict) -> None:
    predictions = answer["predictions"]
    assert predictions[0]["label"] in CAT_LABELS, predictions[:2]
    assert len(predictions) == 5


def some_prediction(answer: dict) -> None:
    probabilities = [p["probability"] for p in answer["predictions"]]
    assert len(probabilities) == 5 and probabilities == sorted(probabilities, reverse=True)
    assert 0 < sum(probabilities) <= 1 + 1e-5


def truncated_text_answer(answer: dict) -> None:
    assert answer["truncated"] is True
    assert len(answer.get("embedding") or answer.get("predictions")) in (384, 4)


def text_answer(answer: dict) -> None:
    assert answer["truncated"] is False
    assert len(answer.get("embedding") or answer.get("predictions")) in (384, 4)


def damaged_image_cases(upright: Image.Image, jpeg: bytes, png: bytes) -> List[Case]:
    """Images whose bytes are damaged (cut, zeroed, bad CRC or filter): the contract's CorruptImage."""
    m = VISION
    return [
        Case("truncated JPEG", m, jpeg[: len(jpeg) // 2], "image/jpeg", 400, "CorruptImage", "truncated"),
        Case("truncated PNG", m, png[: len(png) // 2], "image/png", 400, "CorruptImage", "truncated"),
        Case("PNG with a bad row filter", m, png_with_bad_row_filter(png, 7), "image/png", 400, "CorruptImage",
             "cannot be decoded"),
        Case("PNG with a damaged zlib stream", m, png_with_damaged_zlib(png), "image/png", 400, "CorruptImage",
             "cannot be decoded"),
        Case("JPEG with its scan data zeroed", m, jpeg_with_zeroed_scan(jpeg), "image/jpeg", 400, "CorruptImage",
             "premature end of data segment"),
        Case("large JPEG with its scan data zeroed (reduced decode)", m,
             jpeg_with_zeroed_scan(encode(upright.resize((1024, 682)))), "image/jpeg", 400, "CorruptImage",
             "premature end of data segment"),
        Case("progressive JPEG with its scan data zeroed", m, jpeg_with_zeroed_scan(encode(upright, progressive=True)),
             "image/jpeg", 400, "CorruptImage", "most of it was not used"),
        Case("JPEG cut in its scan, end marker put back", m, jpeg_cut_in_scan(jpeg), "image/jpeg", 400,
             "CorruptImage", "image data is damaged"),
        Case("PNG with a bad IDAT CRC", m, png_with_bad_idat_crc(png), "image/png", 400, "CorruptImage",
             "fails its CRC"),
        Case("PNG with its IDAT data zeroed", m, png_with_zeroed_idat(png), "image/png", 400, "CorruptImage",
             "cannot be decoded"),
        Case("JPEG marker then noise", m, b"\xff\xd8\xff\xe0" + bytes(random.Random(0).randbytes(4000)),
             "image/jpeg", 400, "CorruptImage", "cannot be read"),
    ]


def vision_cases(limit: int) -> List[Case]:
    upright = cat()
    jpeg, png = encode(upright), encode(upright, "PNG")
    coffee = Image.fromarray(photo("coffee")).resize(upright.size)
    gif = encode(upright.convert("P"), "GIF", save_all=True, append_images=[coffee.convert("P")] * 2)
    m = VISION
    return damaged_image_cases(upright, jpeg, png) + [
        Case("zero-byte body", m, b"", "image/jpeg", 400, "EmptyBody", "send the image bytes"),
        Case("text sent to the vision model", m, STRIKER.encode(), "text/plain", 415, "UnsupportedMediaType",
             "send the image bytes"),
        Case("1x1 PNG", m, encode(upright.resize((1, 1)), "PNG"), "image/png", 200, check=some_prediction),
        Case("1x1 JPEG", m, encode(upright.resize((1, 1))), "image/jpeg", 200, check=some_prediction),
        Case("decompression bomb (PNG declaring 20000x20000)", m, png_declaring(20000, 20000), "image/png",
             413, "ImageTooLarge", "megapixels"),
        Case("PNG declaring 7000x7000 (49 MP)", m, png_declaring(7000, 7000), "image/png", 413,
             "ImageTooLarge", "resize it"),
        Case("animated GIF: the first frame is used", m, gif, "image/gif", 200, check=cat_answer),
        Case("animated GIF, palette", m, animated_gif(upright), "image/gif", 200, check=cat_answer),
        Case("CMYK JPEG", m, cmyk_jpeg(upright), "image/jpeg", 200, check=cat_answer),
        Case("16-bit RGB PNG", m, png16_rgb(np.asarray(upright, dtype=np.uint16) * 257), "image/png", 200,
             check=cat_answer),
        Case("16-bit gray PNG", m, png16_gray(upright), "image/png", 200, check=some_prediction),
        Case("EXIF-rotated JPEG", m, with_orientation(upright, 6), "image/jpeg", 200, check=cat_answer),
        Case("TIFF", m, encode(upright, "TIFF"), "image/tiff", 415, "UnsupportedMediaType",
             "JPEG, PNG, WebP, GIF or BMP"),
        Case("body over max_request_size", m, b"\xff" * (limit + 1024), "image/jpeg", 413),
        Case("malformed JSON", m, b'{"image": "abc', "application/json", 400, "InvalidJSON", "not valid JSON"),
        Case("invalid base64", m, json.dumps({"image": "not*base64!"}).encode(), "application/json", 400,
             "InvalidBase64", "base64"),
        Case("JSON without the image field", m, json.dumps({"img": "x"}).encode(), "application/json", 400,
             "InvalidField", "'image'"),
        Case("JSON topk 0", m, json.dumps({"image": base64.b64encode(jpeg).decode(), "topk": 0}).encode(),
             "application/json", 400, "InvalidField", "positive integer"),
        Case("JSON array", m, b"[1, 2]", "application/json", 400, "InvalidField", "must be an object"),
        Case("invalid UTF-8 sent as text", m, b"caf\xe9 au lait", "text/plain; charset=utf-8", 415,
             "UnsupportedMediaType", "not a recognised image"),
        Case("1 MB text", m, b"word " * 200_000, "text/plain", 415, "UnsupportedMediaType", "image"),
        Case("NUL bytes", m, b"\0" * 1000, "application/octet-stream", 415, "UnsupportedMediaType",
             "not a recognised image"),
        Case("JPEG labelled image/png", m, jpeg, "image/png", 200, check=cat_answer),
        Case("JPEG labelled application/octet-stream", m, jpeg, "application/octet-stream", 200, check=cat_answer),
        Case("JPEG without a content type", m, jpeg, None, 200, check=cat_answer),
        Case("JPEG labelled application/json", m, jpeg, "application/json", 400, "InvalidJSON", "not valid JSON"),
        Case("form-urlencoded text", m, b"image=abc", "application/x-www-form-urlencoded", 400, "InvalidField",
             "'data'"),
    ]


def text_cases(model: str, limit: int) -> List[Case]:
    jpeg = encode(cat())
    return [
        Case("zero-byte body", model, b"", "text/plain", 400, "EmptyBody", "send the text"),
        Case("image sent to a text model", model, jpeg, "image/jpeg", 415, "UnsupportedMediaType", "UTF-8 text"),
        Case("image sent as octet-stream", model, jpeg, "application/octet-stream", 400, "InvalidUTF8",
             "not valid UTF-8"),
        Case("malformed JSON", model, b'{"text": "abc', "application/json", 400, "InvalidJSON", "not valid JSON"),
        Case("JSON text not a string", model, b'{"text": 5}', "application/json", 400, "InvalidField",
             "must be a string"),
        Case("invalid UTF-8", model, b"caf\xe9 au lait", "text/plain; charset=utf-8", 400, "InvalidUTF8",
             "byte 0xe9 at position 3"),
        Case("1 MB text (over the characters per text budget)", model, b"word " * 200_000, "text/plain", 413,
             "TextTooLong", "at most 100,000 per text"),
        Case("1 MB of blanks, then a word", model, b" " * 1_000_000 + b"goal", "text/plain", 413, "TextTooLong",
             "send a shorter text"),
        Case("90,000-character text", model, b"word " * 18_000, "text/plain", 200, check=truncated_text_answer),
        Case("NUL bytes only", model, b"\0" * 1000, "text/plain", 400, "EmptyText", "no words"),
        Case("NUL bytes among words", model, b"goal\0 for\0 the home\0 side", "text/plain", 200, check=text_answer),
        Case("blank text", model, b" \n\t ", "text/plain", 400, "EmptyText", "at least one word"),
        Case("text labelled octet-stream", model, STRIKER.encode(), "application/octet-stream", 200,
             check=text_answer),
        Case("text labelled image/png", model, STRIKER.encode(), "image/png", 415, "UnsupportedMediaType",
             "UTF-8 text"),
        Case("form-urlencoded text", model, b"text=abc", "application/x-www-form-urlencoded", 400, "InvalidField",
             "'data'"),
        Case("body over max_request_size", model, b"a" * (limit + 1024), "text/plain", 413),
    ]


def v2_body(elements, datatype="BYTES", shape=None, **extra) -> bytes:
    tensor = {"name": "x", "datatype": datatype, "shape": [len(elements)] if shape is None else shape, "data": elements}
    return json.dumps(dict(extra, inputs=[tensor])).encode()


def bounded_error_cases() -> List[Case]:
    """Issue 17's reproducers: error answers that repeated the input past max_response_size (the frontend
    then restarted the worker), invalid Unicode and absurd numbers that were 500s. Each must be a small 4xx."""
    image = base64.b64encode(encode(cat().resize((64, 48)))).decode()
    huge = 10 ** 4000  # 4,001 digits: within what json reads; a product of two cannot be printed
    m, t, e, js = VISION, "minilm_topics", "minilm_embedding", "application/json"
    return [
        Case("topk a 1.4 MB string", m, json.dumps({"image": "AAAA", "topk": "x" * 1_400_000}).encode(), js, 400,
             "InvalidField", "a string of 1,400,000 characters"),
        Case("v2 shape of 2,000,000 zeros", m, v2_body([image], shape=[0] * 2_000_000), js, 400, "InvalidField",
             "(2,000,000 numbers) holds 0 elements", route="v2"),
        Case("v2 shape of 100,000 zeros", m, v2_body([image], shape=[0] * 100_000), js, 400, "InvalidField",
             "(100,000 numbers)", route="v2"),
        Case("v2 datatype of 3 MB", t, v2_body([STRIKER], datatype="FP" * 1_500_000), js, 400, "InvalidField",
             "must be BYTES", route="v2"),
        Case("v2 shape of 4,001-digit numbers", m, v2_body([image], shape=[huge] * 3), js, 400, "InvalidField",
             "got an integer of 4,001 digits", route="v2"),
        Case("v2 shape past 2^53 elements", e, v2_body([STRIKER], shape=[2 ** 30] * 2), js, 400, "InvalidField",
             "holds more than", route="v2"),
        Case("v2 parameters.topk Infinity", t, v2_body([STRIKER], parameters={"topk": float("inf")}), js, 400,
             "InvalidField", "got inf", route="v2"),
        Case("topk of 4,001 digits", m, json.dumps({"image": image, "topk": huge}).encode(), js, 400,
             "InvalidField", "positive integer of at most"),
        Case("Inference-Header-Content-Length of 4,000 digits", t, v2_body([STRIKER]), "application/octet-stream",
             400, "InvalidField", "an integer of 4,000 digits", route="v2",
             headers={"Inference-Header-Content-Length": "9" * 4000}),
        Case("lone surrogate in JSON text", t, json.dumps({"text": "goal \ud800"}).encode(), js, 400, "InvalidUTF8",
             "lone surrogate"),
        Case("lone surrogate in a v1 instance", e, json.dumps({"instances": [STRIKER, "\udc00"]}).encode(), js, 400,
             "InvalidUTF8", "not valid Unicode", route="v1"),
        Case("lone surrogate in v2 BYTES data", t, v2_body(["\ud83d goal"]), js, 400, "InvalidUTF8",
             "not valid Unicode", route="v2"),
        Case("lone surrogate in v2 JSON without a content type", e, v2_body(["x \udfff"]), None, 400, "InvalidUTF8",
             "not valid Unicode", route="v2"),
        Case("lone surrogate in the image field", m, json.dumps({"image": "\ud800" + image}).encode(), js, 400,
             "InvalidUTF8", "JSON field 'image' is not valid Unicode"),
        Case("lone surrogate in a v2 id", m, v2_body([image], id="\ud800"), js, 400, "InvalidUTF8",
             "'id' is not valid Unicode", route="v2"),
    ]


def good_requests() -> List[Tuple[str, bytes, str]]:
    coffee = encode(photo("coffee"))
    return [(VISION, encode(photo("chelsea")), "image/jpeg"), (VISION, coffee, "image/jpeg")] + [
        (m, STRIKER.encode(), "text/plain; charset=utf-8") for m in TEXT_MODELS] + [
        (m, json.dumps({"text": "Central bank raises interest rates"}).encode(), "application/json")
        for m in TEXT_MODELS]


def same_answer(got: dict, reference: dict) -> None:
    if "embedding" in reference:
        a, b = np.array(got["embedding"]), np.array(reference["embedding"])
        assert a @ b / (np.linalg.norm(a) * np.linalg.norm(b)) > 0.9999
    else:
        assert got["predictions"][0]["label"] == reference["predictions"][0]["label"]
        assert abs(got["predictions"][0]["probability"] - reference["predictions"][0]["probability"]) < 1e-3


def check_hostile(case: Case, response) -> None:
    where = f"{case.model}: {case.name}"
    assert response.status_code == case.status, f"{where}: {response.status_code} {response.text[:300]}"
    if case.status == 200:
        case.check(response.json())
        return
    if case.kind is None:  # the frontend's own 413: no handler ran, no JSON body (as the contract says)
        return
    assert response.headers["content-type"].startswith("application/json"), where
    assert len(response.content) < ERROR_BODY_BYTES, f"{where}: a {len(response.content):,}-byte error"
    error = response.json()
    fields = {"code", "type", "message"} | ({"error"} if case.route == "v2" else set())
    assert set(error) == fields and error.get("error", error["message"]) == error["message"], f"{where}: {error}"
    assert error["code"] == case.status and error["type"] == case.kind, f"{where}: {error}"
    assert case.says.lower() in error["message"].lower(), f"{where}: {error['message']!r}"


def batches(server, model: str) -> List[Tuple[int, int]]:
    """(size, invalid) of every batch the model's handler logged."""
    with open(server.model_log, encoding="utf-8", errors="replace") as f:
        log = f.read()
    pattern = rf"-{re.escape(model)}_[0-9.]+-stdout MODEL_LOG - handled batch size=(\d+) invalid=(\d+)"
    return [(int(n), int(bad)) for n, bad in re.findall(pattern, log)]


def worker_pids(client) -> Dict[str, List[int]]:
    described = {m: client.describe(m) for m in MODELS}
    for model, d in described.items():
        assert [w["status"] for w in d["workers"]] == ["READY"] * d["minWorkers"], (model, d["workers"])
    return {m: sorted(w["pid"] for w in d["workers"]) for m, d in described.items()}


def test_hostile_inputs_interleaved_with_good_requests(client, server):
    limit = int(server.props["max_request_size"])
    cases = vision_cases(limit) + [c for m in TEXT_MODELS for c in text_cases(m, limit)] + bounded_error_cases()
    good = good_requests()
    references = {}
    for model, body, content_type in good:  # each good request alone first: its reference answer
        response = client.predict(model, body, content_type)
        assert response.status_code == 200, response.text
        references[(model, body)] = response.json()
    assert references[good[0][:2]]["predictions"][0]["label"] in CAT_LABELS
    assert references[good[1][:2]]["predictions"][0]["label"] == "espresso"
    assert references[("minilm_topics", STRIKER.encode())]["predictions"][0]["label"] == "Sports"

    pids = worker_pids(client)
    logged = {m: len(batches(server, m)) for m in MODELS}
    jobs = [("hostile", case) for case in cases] * 2 + [("good", g) for g in good] * 16
    random.Random(5).shuffle(jobs)

    def send(job):
        kind, item = job
        if kind == "hostile":
            headers = dict(item.headers or {}, **{"Content-Type": item.content_type})  # None: no Content-Type
            return client.infer("POST", ROUTES[item.route].format(item.model), data=item.body, headers=headers)
        return client.predict(*item)

    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(send, jobs))

    for (kind, item), response in zip(jobs, answers):
        if kind == "hostile":
            check_hostile(item, response)
        else:
            model, body, _ = item
            assert response.status_code == 200, f"good request to {model} failed: {response.text[:300]}"
            same_answer(response.json(), references[(model, body)])

    # the hostile requests shared batches with good ones, in every model
    for model in MODELS:
        def mixed_batch():
            return [b for b in batches(server, model)[logged[model]:] if 0 < b[1] < b[0]]
        deadline = time.monotonic() + 15  # model_log.log is written by the frontend's own thread
        while not mixed_batch() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert mixed_batch(), f"{model}: no batch mixed good and bad requests: {batches(server, model)[logged[model]:]}"
    # and no worker was restarted on the way
    assert worker_pids(client) == pids


@pytest.mark.parametrize("fmt, kwargs", [("JPEG", {"quality": 100, "subsampling": 0}), ("PNG", {}),
                                         ("WEBP", {"lossless": True})])
def test_exif_orientation_is_honoured(client, fmt, kwargs):
    """A photo stored turned or mirrored, with the EXIF orientation that shows it upright, is classified
    like the upright photo; the same stored pixels without the tag are not (the check can tell)."""
    upright = cat()
    content_type = f"image/{fmt.lower()}"
    reference = client.predict(VISION, encode(upright, fmt, **kwargs), content_type).json()["predictions"]

    def distance(response):
        assert response.status_code == 200, response.text
        ref = {p["label"]: p["probability"] for p in reference}
        got = {p["label"]: p["probability"] for p in response.json()["predictions"]}
        return sum(abs(ref.get(label, 0) - got.get(label, 0)) for label in set(ref) | set(got))

    for orientation in range(2, 9):
        honoured = distance(client.predict(VISION, with_orientation(upright, orientation, fmt, **kwargs),
                                           content_type))
        stored = encode(upright.transpose(STORE_TRANSPOSE[orientation]), fmt, **kwargs)  # no EXIF
        ignored = distance(client.predict(VISION, stored, content_type))
        # measured: honoured <= 0.011 (JPEG noise), 0 for lossless; ignored >= 0.08
        assert honoured < 0.02 and ignored > 0.05, (fmt, orientation, honoured, ignored)


def test_form_urlencoded_binary_is_refused_by_the_frontend_and_harms_nothing(client):
    """curl --data-binary's default type on an image: TorchServe's frontend fails to parse it as a form
    before any handler runs (the contract's documented exception: a JSON error, but from the frontend,
    with status 500). It must not touch the workers."""
    pids = worker_pids(client)
    response = client.predict(VISION, encode(cat()), "application/x-www-form-urlencoded")
    assert response.status_code == 500
    error = response.json()
    assert set(error) == {"code", "type", "message"} and error["code"] == 500
    assert error["type"].endswith("Exception"), error  # the frontend's Java exception, not a handler's type
    good = client.predict(VISION, encode(photo("coffee")), "image/jpeg")
    assert good.status_code == 200 and good.json()["predictions"][0]["label"] == "espresso"
    assert worker_pids(client) == pids
