"""request_payload: the body of a TorchServe row, and the image request inside it."""

import base64

import pytest

from handlers.request_errors import EmptyBody, InvalidBase64, InvalidField, InvalidJSON, UnsupportedMediaType
from handlers.request_payload import image_request, request_body

JPEG = b"\xff\xd8\xff\xe0fake-jpeg\xff\xd9"


def test_multipart_data_field_wins_over_body():
    assert request_body({"data": b"a", "body": b"b"}) == ("data", b"a")
    assert request_body({"body": b"b"}) == ("body", b"b")


def test_empty_body_is_kept_not_lost():
    assert request_body({"body": b""}) == ("body", b"")
    with pytest.raises(EmptyBody):
        image_request(b"", "image/jpeg", 5)


def test_row_without_body():
    with pytest.raises(EmptyBody):
        request_body({})
    with pytest.raises(InvalidField, match="no 'data' field.*got: file"):
        request_body({"file": b"x"})


def test_raw_bytes_and_json_base64():
    assert image_request(JPEG, "image/jpeg", 5) == (JPEG, 5)
    encoded = base64.b64encode(JPEG).decode()
    assert image_request({"image": encoded}, "application/json", 5) == (JPEG, 5)
    assert image_request({"image": encoded, "topk": 2}, "application/json", 5) == (JPEG, 2)
    assert image_request({"image": "data:image/jpeg;base64," + encoded}, "application/json", 5).data == JPEG


@pytest.mark.parametrize(
    "body, content_type, error, words",
    [
        (b"{not json", "application/json", InvalidJSON, "not valid JSON"),
        ({"img": "AAAA"}, "application/json", InvalidField, "no 'image' field"),
        ({"image": 42}, "application/json", InvalidField, "must be a base64 string, not a number"),
        ({"image": "***not base64***"}, "application/json", InvalidBase64, "not valid base64"),
        ({"image": ""}, "application/json", EmptyBody, "is empty"),
        ({"image": "AAAA", "topk": 0}, "application/json", InvalidField, "positive integer"),
        ({"image": "AAAA", "topk": "3"}, "application/json", InvalidField, "positive integer"),
        ({"image": "AAAA", "topk": True}, "application/json", InvalidField, "positive integer"),
        ([1, 2], "application/json", InvalidField, "not an array"),
        ("some text", "text/plain", UnsupportedMediaType, "text body"),
    ],
)
def test_bad_requests(body, content_type, error, words):
    with pytest.raises(error, match=words):
        image_request(body, content_type, 5)
