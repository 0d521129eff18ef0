"""Per-request errors: what one client sent wrong, answered as the contract's 4xx JSON body.

Each class names the `type` field of the body; `status` is the HTTP status. Handlers raise these
while decoding one request, and the batch glue answers that request alone with the error.
A message is bounded (MAX_MESSAGE_CHARS) and shows client values through `shown`, never whole: an error
that repeats a multi-MB field grows past TorchServe's max_response_size, and the frontend then fails the
worker's whole message and restarts the worker (every request of its batch gets 500 "Worker died.").
"""

from typing import Any

# Longest message kept: messages show client values through `shown` and stay well under it; the cap is the
# backstop for one that interpolates something unbounded (a library's words, a list of field names).
MAX_MESSAGE_CHARS = 300
# Longest client string shown in a message (its repr, before the note of its length).
SHOWN_CHARS = 60
# Beyond this many bits an integer is described, not printed: Python refuses to print one of more than
# 4,300 digits (ValueError), and even printing a few thousand is no help to anyone.
SHOWN_INT_BITS = 200


def bounded_message(message: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """`message`, cut to `limit` characters with a note of how many were cut."""
    if len(message) <= limit:
        return message
    return f"{message[:limit]}... [{len(message) - limit:,} more characters cut]"


def clip(text: str, limit: int = SHOWN_CHARS) -> str:
    """Free text of the client's or a library's (a content type, a decoder's words), cut to `limit`."""
    return text if len(text) <= limit else f"{text[:limit]}... [{len(text):,} characters]"


def _digits(n: int) -> int:
    """The decimal digits of n > 0, without printing it: from its bits (log10(2) = 0.30103 a bit), then exact."""
    digits = int((n.bit_length() - 1) * 0.30103) + 1
    return digits + 1 if n >= 10 ** digits else digits


def shown(value: Any, limit: int = SHOWN_CHARS) -> str:
    """A client's JSON value as a message shows it, bounded whatever its size: a short repr of a string or
    number, the JSON name of an array or object (with its length), never the value whole."""
    if value is None or isinstance(value, (bool, float)):
        return repr(value)
    if isinstance(value, int):
        if value.bit_length() <= SHOWN_INT_BITS:
            return repr(value)
        return f"an integer of {_digits(abs(value)):,} digits"
    if isinstance(value, str):
        if len(value) <= limit:
            return repr(value)
        return f"{value[:limit]!r}... [a string of {len(value):,} characters]"
    if isinstance(value, list):
        return f"an array of {len(value):,} item{'' if len(value) == 1 else 's'}"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


class RequestError(Exception):
    """A request that cannot be served because of its own content."""

    status = 400

    def __init__(self, message: str):
        message = bounded_message(message)  # the one place every message passes: no error answer can grow
        super().__init__(message)
        self.message = message
        self.protocol = None  # "v2" once the request is known to be an Open Inference Protocol v2 one

    @property
    def type(self) -> str:
        return type(self).__name__

    def to_dict(self) -> dict:
        document = {"code": self.status, "type": self.type, "message": self.message}
        if self.protocol == "v2":
            # v2 clients (tritonclient's InferenceServerException) read the message from "error"
            document["error"] = self.message
        return document


class EmptyBody(RequestError):
    pass


class InvalidJSON(RequestError):
    pass


class EmptyText(RequestError):
    """The text has nothing the tokenizer can read (empty, blank, control characters only)."""


class InvalidField(RequestError):
    """A JSON field or multipart part is missing or has the wrong type or value."""


class InvalidBase64(RequestError):
    pass


class InvalidUTF8(RequestError):
    pass


class CorruptImage(RequestError):
    """The bytes claim an image format but do not decode (truncated, damaged)."""


class ImageTooLarge(RequestError):
    status = 413


class TooManyItems(RequestError):
    """A KServe request with more items (v1 instances, v2 data elements) than the model's budget."""

    status = 413


class TooManyPixels(RequestError):
    """The images of one request declare more pixels in all than the model's budget."""

    status = 413


class TextTooLong(RequestError):
    """A text with more characters than the model's budget."""

    status = 413


class AnswerTooLarge(RequestError):
    """The answer would exceed the server's max_response_size (checked before the model runs)."""

    status = 413


class RequestExpired(RequestError):
    """The request waited longer than its client's stated patience (request_deadline): refused, not run."""

    status = 503


class UnsupportedMediaType(RequestError):
    status = 415


class InternalError(RequestError):
    """Not the client's fault: logged with its traceback, answered 500 for that request alone."""

    status = 500
