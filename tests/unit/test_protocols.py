"""protocols.py: each protocol recognised by its content whatever the Content-Type, and answered in kind.

The binary layout is the one tritonclient and KServe's SDK write (checked against tritonclient itself in
tests/integration/test_clients.py): a JSON header of `Inference-Header-Content-Length` bytes, then each
binary tensor; a BYTES element is a 4-byte little-endian length and its bytes.
"""

import json
import struct

import pytest

from handlers.classification import CLASSIFIER_OUTPUTS
from handlers.protocols import (BINARY_TYPE, HEADER_LENGTH, KServeV1Request, ModelInfo, Output, PlainRequest, V2Request,
                       parse_request)
from handlers.request_errors import InvalidField, InvalidJSON, InvalidUTF8
from handlers.request_payload import text_request

V2 = {"id": "7", "inputs": [{"name": "text", "datatype": "BYTES", "shape": [2], "data": ["a b", "c"]}]}
ANSWERS = [{"predictions": [{"label": "x", "index": 1, "probability": 0.75}, {"label": "y", "index": 0, "probability": 0.25}],
            "truncated": False},
           {"predictions": [{"label": "y", "index": 0, "probability": 0.5}, {"label": "x", "index": 1, "probability": 0.5}],
            "truncated": True}]
OUTPUTS = CLASSIFIER_OUTPUTS + (Output("truncated", "BOOL", lambda a: a["truncated"], per_item=True),)
MODEL = ModelInfo("m", "1.0", OUTPUTS)


def binary_request(document: dict, elements) -> bytes:
    chunk = b"".join(struct.pack("<I", len(e)) + e for e in elements)
    document = json.loads(json.dumps(document))
    document["inputs"][0].pop("data", None)
    document["inputs"][0]["parameters"] = {"binary_data_size": len(chunk)}
    header = json.dumps(document).encode()
    return header, header + chunk


@pytest.mark.parametrize("content_type", [None, "", "application/octet-stream", "application/json"])
def test_a_v2_body_is_v2_whatever_the_content_type(content_type):
    body = V2 if content_type == "application/json" else json.dumps(V2).encode()  # TorchServe parses JSON only
    request = parse_request(body, content_type)
    assert isinstance(request, V2Request) and request.elements == ["a b", "c"] and request.id == "7"


def test_a_json_object_sent_without_content_type_is_json_never_text():
    request = parse_request(b'{"text": "The striker scored"}', None)
    assert isinstance(request, PlainRequest) and request.body == {"text": "The striker scored"}
    with pytest.raises(InvalidJSON):
        parse_request(b'{"inputs": [', None)


def test_plain_bodies_stay_plain():
    assert parse_request(b"\xff\xd8\xff\xe0 jpeg", "image/jpeg").body == b"\xff\xd8\xff\xe0 jpeg"
    assert parse_request("{not json but text/plain}", "text/plain").body == "{not json but text/plain}"


def test_kserve_v1_instances():
    request = parse_request({"instances": ["x", {"data": {"b64": "eQ=="}}]}, "application/json")
    assert isinstance(request, KServeV1Request) and request.elements == ["x", "eQ=="]
    assert json.loads(request.respond(ANSWERS, MODEL).body) == {"predictions": ANSWERS}


def test_binary_v2_request_elements_are_raw_bytes():
    header, body = binary_request(V2, [b"\xff\xd8 raw image", "naïve".encode()])
    request = parse_request(body, None, str(len(header)))
    assert request.elements == [b"\xff\xd8 raw image", "naïve".encode()]


@pytest.mark.parametrize("cut", [1, 3, 6])
def test_a_cut_binary_section_is_a_400(cut):
    header, body = binary_request(V2, [b"abcdef", b"gh"])
    with pytest.raises(InvalidField):
        parse_request(body[:-cut], None, str(len(header)))


@pytest.mark.parametrize("length", ["x", "0", "-1", "999999"])
def test_a_bad_header_length_is_a_400(length):
    with pytest.raises((InvalidField, InvalidJSON)):
        parse_request(json.dumps(V2).encode(), None, length)


def test_json_answer_declares_every_output_in_shape():
    answer = parse_request(V2, "application/json").respond(ANSWERS, MODEL)
    document = json.loads(answer.body)
    assert answer.content_type == "application/json" and document["id"] == "7"
    tensors = {t["name"]: t for t in document["outputs"]}
    assert tensors["labels"] == {"name": "labels", "datatype": "BYTES", "shape": [2, 2], "data": ["x", "y", "y", "x"]}
    assert tensors["probabilities"]["data"] == [0.75, 0.25, 0.5, 0.5]
    assert tensors["truncated"] == {"name": "truncated", "datatype": "BOOL", "shape": [2], "data": [False, True]}


def test_binary_answer_when_asked_for_one_output():
    document = dict(V2, outputs=[{"name": "probabilities", "parameters": {"binary_data": True}}, {"name": "labels"}])
    answer = parse_request(document, "application/json").respond(ANSWERS, MODEL)
    length = int(answer.headers[HEADER_LENGTH])
    header = json.loads(answer.body[:length])
    assert answer.content_type == BINARY_TYPE and [t["name"] for t in header["outputs"]] == ["labels", "probabilities"]
    probabilities = header["outputs"][1]
    assert probabilities["parameters"]["binary_data_size"] == 16 and "data" not in probabilities
    assert struct.unpack("<4f", answer.body[length:]) == (0.75, 0.25, 0.5, 0.5)


def test_binary_data_output_puts_every_output_in_binary():
    document = dict(V2, parameters={"binary_data_output": True})
    answer = parse_request(document, "application/json").respond(ANSWERS, MODEL)
    length = int(answer.headers[HEADER_LENGTH])
    sizes = [t["parameters"]["binary_data_size"] for t in json.loads(answer.body[:length])["outputs"]]
    assert sum(sizes) == len(answer.body) - length
    assert sizes == [4 * (4 + 1), 8 * 4, 4 * 4, 2]  # 4 one-letter labels, each with its length; int64; fp32; bool


@pytest.mark.parametrize("bad", [
    {"inputs": []}, {"inputs": [{"datatype": "FP32", "shape": [1], "data": [1.0]}]},
    {"inputs": [{"datatype": "BYTES", "shape": [2], "data": ["a"]}]},
    {"inputs": [{"datatype": "BYTES", "shape": [1], "data": [1]}]},
    {"inputs": [{"datatype": "BYTES", "shape": "1", "data": ["a"]}]},
    {"inputs": [{"datatype": "BYTES", "shape": [1], "data": ["a"]}], "outputs": "labels"},
    {"inputs": [{"datatype": "BYTES", "shape": [1], "data": ["a"]}], "parameters": []},
])
def test_malformed_v2_requests_are_400(bad):
    with pytest.raises(InvalidField):
        parse_request(bad, "application/json")


# ---- v2 errors carry v2's "error" too (tritonclient's InferenceServerException reads it) ------------------
@pytest.mark.parametrize("body, content_type, header_length", [
    ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1.0]}]}, "application/json", None),
    (json.dumps({"inputs": "nope"}).encode(), None, None),              # tritonclient's JSON mode: no Content-Type
    (b'{"inputs": []}' + b"\0\0\0", "application/octet-stream", "999"),  # binary header longer than the body
])
def test_a_bad_v2_request_is_a_v2_error_with_the_error_field(body, content_type, header_length):
    with pytest.raises(InvalidField) as raised:
        parse_request(body, content_type, header_length)
    document = raised.value.to_dict()
    assert raised.value.protocol == "v2"
    assert document == {"code": 400, "type": "InvalidField", "message": document["message"], "error": document["message"]}


@pytest.mark.parametrize("body, content_type", [
    ({"instances": "nope"}, "application/json"),  # KServe v1: the contract's fields only
    ({"text": 5, "instances": []}, "application/json"),
])
def test_other_errors_keep_exactly_the_contracts_fields(body, content_type):
    with pytest.raises(InvalidField) as raised:
        parse_request(body, content_type)
    assert set(raised.value.to_dict()) == {"code", "type", "message"}
    with pytest.raises(InvalidJSON) as raised:
        parse_request(b'{"inputs": [', None)  # not yet known to be v2: the contract's fields
    assert set(raised.value.to_dict()) == {"code", "type", "message"}


def test_deeply_nested_v2_data_is_flattened_without_recursion():
    data = "x"
    for _ in range(5000):
        data = [data]
    request = V2Request.parse({"inputs": [{"name": "t", "datatype": "BYTES", "shape": [1], "data": [data]}]})
    assert request.elements == ["x"]


# ---- a JSON string of lone surrogates as the whole body (HTTP fuzz: 500 InternalError, now 400) -------------
# The 14 bytes `"\udfff\ud800"` sent as application/json: TorchServe's worker parses that content type, so the
# handler gets a str holding two lone surrogates, whichever route carried it (/predictions/<m>,
# /v1/models/<m>:predict, /v2/models/<m>/infer: the handler never sees the path).
SURROGATES_BODY = json.loads(b'"\\udfff\\ud800"'.decode("utf-8"))


@pytest.mark.parametrize("header_length", ["14", "2", "x"])
def test_lone_surrogates_with_the_binary_header_are_invalid_utf8_not_a_crash(header_length):
    # the binary extension re-encodes a str body to read its header bytes: a lone surrogate has no UTF-8 form
    assert len(b'"\\udfff\\ud800"') == 14 and SURROGATES_BODY == "\udfff\ud800"
    with pytest.raises(InvalidUTF8) as raised:
        parse_request(SURROGATES_BODY, "application/json", header_length)
    error = raised.value
    assert (error.status, error.type, error.protocol) == (400, "InvalidUTF8", "v2")
    assert error.to_dict() == {"code": 400, "type": "InvalidUTF8", "message": error.message, "error": error.message}
    assert "lone surrogate '\\udfff' at character 0" in error.message


def test_lone_surrogates_as_the_plain_body_are_invalid_utf8():
    request = parse_request(SURROGATES_BODY, "application/json")
    assert isinstance(request, PlainRequest)
    with pytest.raises(InvalidUTF8) as raised:
        text_request(request.body, request.content_type)
    assert raised.value.to_dict() == {"code": 400, "type": "InvalidUTF8", "message": raised.value.message}
