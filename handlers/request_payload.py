"""Pull one request's body out of the row TorchServe hands a handler.

TorchServe gives each request as a dict: a raw body under `body`, multipart fields under their
names, `application/json` already parsed (malformed JSON stays bytes), `text/*` as str (invalid
UTF-8 stays bytes). An empty body is falsy, so presence is tested with `in`, never with `or`.
"""

import base64
import binascii
from typing import NamedTuple, Optional, Tuple

from request_errors import (
    EmptyBody,
    EmptyText,
    InvalidBase64,
    InvalidField,
    InvalidJSON,
    InvalidUTF8,
    UnsupportedMediaType,
)

MULTIPART_FIELD = "data"
RAW_BODY_KEY = "body"


def request_body(row: dict) -> Tuple[str, object]:
    """(key, value) of the request's payload: multipart field `data`, else the raw body."""
    for key in (MULTIPART_FIELD, RAW_BODY_KEY):
        if key in row:
            return key, row[key]
    if not row:
        raise EmptyBody("the request has no body: send the input as the request body")
    raise InvalidField(
        f"multipart request has no '{MULTIPART_FIELD}' field (got: {', '.join(sorted(row))}); "
        f"send the input in a form field named '{MULTIPART_FIELD}'"
    )


def media_type(content_type: Optional[str]) -> str:
    """'image/jpeg' from 'image/jpeg; charset=...', lower-cased; '' when absent."""
    if not content_type:
        return ""
    return content_type.split(";", 1)[0].strip().lower()


def is_json(content_type: Optional[str]) -> bool:
    kind = media_type(content_type)
    return kind == "application/json" or kind.endswith("+json")


def decode_base64_field(document: dict, field: str) -> bytes:
    """The bytes of a base64 string field of a JSON object (a `data:` URL prefix is accepted)."""
    if field not in document:
        raise InvalidField(
            f"JSON body has no '{field}' field; send {{\"{field}\": \"<base64 of the bytes>\"}}"
        )
    value = document[field]
    if not isinstance(value, str):
        raise InvalidField(
            f"JSON field '{field}' must be a base64 string, not {json_type_name(value)}"
        )
    if value.startswith("data:") and "," in value:
        value = value.split(",", 1)[1]
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as err:
        raise InvalidBase64(f"JSON field '{field}' is not valid base64 ({err})") from None
    if not data:
        raise EmptyBody(f"JSON field '{field}' is empty")
    return data


def json_type_name(value: object) -> str:
    """The JSON name of a parsed value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def positive_int_field(document: dict, field: str, default: int) -> int:
    """An optional positive integer field of a JSON object."""
    value = document.get(field, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidField(f"JSON field '{field}' must be a positive integer, got {value!r}")
    return value


class ImageRequest(NamedTuple):
    data: bytes
    topk: int


def image_request(body: object, content_type: Optional[str], default_topk: int) -> ImageRequest:
    """The image bytes (and top-k) of one request: raw bytes, or JSON {"image": base64, "topk": k}."""
    if isinstance(body, dict):
        return ImageRequest(
            decode_base64_field(body, "image"), positive_int_field(body, "topk", default_topk)
        )
    if isinstance(body, (bytes, bytearray)):
        if is_json(content_type):
            raise InvalidJSON(
                'the body is sent as application/json but is not valid JSON; send {"image": "<base64>"}'
            )
        if not body:
            raise EmptyBody("the request body is empty: send the image bytes")
        return ImageRequest(bytes(body), default_topk)
    if isinstance(body, str):
        raise UnsupportedMediaType(
            f"got a text body ({media_type(content_type) or 'text'}); send the image bytes "
            'with an image/* or application/octet-stream content type, or JSON {"image": "<base64>"}'
        )
    raise InvalidField(
        f'the JSON body must be an object like {{"image": "<base64>"}}, not {json_type_name(body)}'
    )


def text_request(body: object, content_type: Optional[str]) -> str:
    """The text of one request: a UTF-8 body (text/plain or raw bytes), or JSON {"text": "..."}."""
    if isinstance(body, dict):
        if "text" not in body:
            raise InvalidField('JSON body has no \'text\' field; send {"text": "..."}')
        text = body["text"]
        if not isinstance(text, str):
            raise InvalidField(f"JSON field 'text' must be a string, not {json_type_name(text)}")
    elif isinstance(body, str):
        if not body:
            raise EmptyBody("the request body is empty: send the text")
        text = body
    elif isinstance(body, (bytes, bytearray)):
        kind = media_type(content_type)
        if is_json(content_type):
            raise InvalidJSON('the body is sent as application/json but is not valid JSON; send {"text": "..."}')
        if kind.startswith(("image/", "audio/", "video/")):
            raise UnsupportedMediaType(f"got {kind}; send UTF-8 text as text/plain or JSON {{\"text\": \"...\"}}")
        if not body:
            raise EmptyBody("the request body is empty: send the text")
        try:
            text = bytes(body).decode("utf-8")
        except UnicodeDecodeError as err:
            raise InvalidUTF8(
                f"the body is not valid UTF-8 (byte 0x{body[err.start]:02x} at position {err.start}); "
                "send the text encoded as UTF-8"
            ) from None
    else:
        raise InvalidField(f'the JSON body must be an object like {{"text": "..."}}, not {json_type_name(body)}')
    if not text.strip():
        raise EmptyText("the text is empty: send at least one word")
    return text
