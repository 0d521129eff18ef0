"""Per-request errors: what one client sent wrong, answered as the contract's 4xx JSON body.

Each class names the `type` field of the body; `status` is the HTTP status. Handlers raise these
while decoding one request, and the batch glue answers that request alone with the error.
"""


class RequestError(Exception):
    """A request that cannot be served because of its own content."""

    status = 400

    def __init__(self, message: str):
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


class UnsupportedMediaType(RequestError):
    status = 415


class InternalError(RequestError):
    """Not the client's fault: logged with its traceback, answered 500 for that request alone."""

    status = 500
