"""Pull one request's body out of the row TorchServe hands a handler.

TorchServe gives each request as a dict: a raw body under `body`, multipart fields under their
names, `application/json` already parsed (malformed JSON stays bytes), `text/*` as str (invalid
UTF-8 stays bytes). An empty body is falsy, so presence is tested with `in`, never with `or`.
"""

import base64
import binascii
import re
from typing import Any, NamedTuple, Optional, Tuple

from handlers.request_errors import (
    EmptyBody,
    EmptyText,
    InvalidBase64,
    InvalidField,
    InvalidJSON,
    InvalidUTF8,
    UnsupportedMediaType,
    clip,
    shown,
)

MULTIPART_FIELD = "data"
RAW_BODY_KEY = "body"
# The largest integer a JSON number holds exactly in most clients (IEEE doubles: JavaScript, many parsers).
# A larger count, size or topk is a mistake or an attack: refused, never multiplied, printed or handed to
# torch (Python prints at most 4,300 digits; torch takes 64-bit integers).
MAX_JSON_INT = 2**53 - 1
# A lone UTF-16 surrogate: JSON's "\ud800" escape parses to one. It has no UTF-8 form, so the tokenizer
# (TypeError), strict JSON clients and anything that encodes the text refuse it.
LONE_SURROGATE = re.compile(r"[\ud800-\udfff]")  # re reads the \u escapes


def request_body(row: dict) -> Tuple[str, object]:
    """(key, value) of the request's payload: multipart field `data`, else the raw body."""
    for key in (MULTIPART_FIELD, RAW_BODY_KEY):
        if key in row:
            return key, row[key]
    if not row:
        raise EmptyBody("the request has no body: send the input as the request body")
    names = ", ".join(clip(str(name), 40) for name in sorted(row)[:5])  # the client's names: a few, cut
    if len(row) > 5:
        names += f", ... ({len(row):,} fields)"
    raise InvalidField(
        f"multipart request has no '{MULTIPART_FIELD}' field (got: {names}); "
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


def is_count(value: Any, minimum: int = 1) -> bool:
    """An integer from `minimum` to MAX_JSON_INT (a JSON boolean is not one)."""
    return isinstance(value, int) and not isinstance(value, bool) and minimum <= value <= MAX_JSON_INT


def count_error(what: str, value: Any, minimum: int = 1) -> str:
    """The message for `what` that is not a count (is_count, minimum 1 or 0): the bound is named when the
    value passed it."""
    kind = "a positive integer" if minimum == 1 else "a non-negative integer"
    if isinstance(value, int) and not isinstance(value, bool) and value > MAX_JSON_INT:
        kind += f" of at most {MAX_JSON_INT:,}"
    return f"{what} must be {kind}, got {shown(value)}"


def unicode_text(text: str, what: str) -> str:
    """`text`, refused when it is not valid Unicode (a lone surrogate from a JSON escape)."""
    if text.isascii():  # O(1) in CPython: base64 and most text go no further
        return text
    found = LONE_SURROGATE.search(text)
    if found:
        raise InvalidUTF8(
            f"{what} is not valid Unicode: it holds a lone surrogate {ascii(found.group())} at character "
            f"{found.start():,} (half of a JSON \\uXXXX pair without its other half); send the text as UTF-8, "
            "or escape both halves"
        )
    return text


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
    unicode_text(value, f"JSON field '{field}'")
    if value.startswith("data:") and "," in value:
        value = value.split(",", 1)[1]
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as err:
        raise InvalidBase64(f"JSON field '{field}' is not valid base64 ({clip(str(err), 120)})") from None
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


def positive_int_field(document: dict, field: str, default: Optional[int]) -> Optional[int]:
    """An optional positive integer field of a JSON object; `default` where it is absent."""
    if field not in document:
        return default
    value = document[field]
    if not is_count(value):
        raise InvalidField(count_error(f"JSON field '{field}'", value))
    return value


class ImageRequest(NamedTuple):
    data: bytes
    topk: Optional[int]


def image_request(body: object, content_type: Optional[str], default_topk: Optional[int]) -> ImageRequest:
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
            f"got a text body ({clip(media_type(content_type)) or 'text'}); send the image bytes "
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
        unicode_text(text, "JSON field 'text'")  # the tokenizer takes Unicode only (TypeError otherwise)
    elif isinstance(body, str):
        if not body:
            raise EmptyBody("the request body is empty: send the text")
        text = unicode_text(body, "the text")  # TorchServe decodes a text body strictly: a safeguard
    elif isinstance(body, (bytes, bytearray)):
        kind = media_type(content_type)
        if is_json(content_type):
            raise InvalidJSON('the body is sent as application/json but is not valid JSON; send {"text": "..."}')
        if kind.startswith(("image/", "audio/", "video/")):
            raise UnsupportedMediaType(f"got {clip(kind)}; send UTF-8 text as text/plain or JSON {{\"text\": \"...\"}}")
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
