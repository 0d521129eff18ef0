"""What TorchServe hands a handler, made here for the KServe engine (tskit.kserve_engine) from what KServe's server
received, so each archive's handler reads its requests exactly as under TorchServe and decodes each input once.

    HTTP      the body as TorchServe's worker decodes it (JSON parsed, text/* a str, anything else bytes), a form's
              fields as TorchServe's frontend splits them, every request header beside the per-part content types
    gRPC v2   a KServe ModelInferRequest written in v2's binary form (the `Inference-Header-Content-Length`
              extension the handler reads): its tensors, raw or in `contents`, go to the handler as they came

Nothing here imports kserve or ts: the engine passes what they parsed.
"""

import json
import struct
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Tuple

from handlers.protocols import HEADER_LENGTH
from handlers.request_errors import InvalidField
from handlers.request_payload import RAW_BODY_KEY

STRUCT_CODES = {"BOOL": "?", "UINT8": "B", "UINT16": "H", "UINT32": "I", "UINT64": "Q", "INT8": "b", "INT16": "h",
                "INT32": "i", "INT64": "q", "FP16": "e", "FP32": "f", "FP64": "d"}  # v2's numbers, little-endian
FORMS = ("multipart/form-data", "application/x-www-form-urlencoded")


@dataclass
class Row:
    """One request as a handler's row (`parts`) and its Context headers (`headers`)."""

    parts: Dict[str, object]
    headers: Dict[str, object] = field(default_factory=dict)

    @classmethod
    def of(cls, parts: Iterable[Tuple[str, bytes, Optional[str]]], headers: Dict[str, str]) -> "Row":
        """Parts (name, bytes, content type), decoded as TorchServe's worker does; TorchServe keeps a part's
        content type under its name beside the request's headers."""
        row = cls({}, dict(headers))
        for name, value, content_type in parts:
            row.parts[name] = worker_decoded(value, content_type)
            row.headers[name] = {"content-type": content_type or ""}
        return row


def worker_decoded(value: bytes, content_type: Optional[str]) -> object:
    """A part's value as TorchServe 0.12's worker hands it (ts/protocol/otf_message_handler._retrieve_input_data):
    exactly `application/json` parsed, `text/*` decoded; what fails to decode, and anything else, stays bytes."""
    content_type = content_type or ""
    try:
        if content_type == "application/json":
            return json.loads(value.decode("utf-8"))
        if content_type.startswith("text"):
            return value.decode("utf-8")
    except (UnicodeDecodeError, ValueError):
        pass
    return bytes(value)


def is_form(content_type: Optional[str]) -> bool:
    return (content_type or "").split(";")[0].strip().lower() in FORMS


async def http_row(request) -> Row:
    """A Starlette request as TorchServe's row: the raw body under "body", or a form's fields by name (a field's
    value as bytes with no content type, a file's with its own, as TorchServe's frontend passes them)."""
    headers = dict(request.headers.items())
    content_type = request.headers.get("content-type")
    if not is_form(content_type):
        return Row.of([(RAW_BODY_KEY, await request.body(), content_type)], headers)
    try:
        form = await request.form()
    except Exception as err:  # python-multipart's and Starlette's parse errors have no common base
        raise InvalidField(f"the form body cannot be read: {err}") from None
    parts = []
    for name, value in form.multi_items():
        if isinstance(value, str):
            parts.append((name, value.encode("utf-8"), None))
        else:
            parts.append((name, await value.read(), value.content_type))
    return Row.of(parts, headers)


def grpc_row(request, model: str) -> Row:
    """A KServe InferRequest made from a gRPC ModelInferRequest, as a binary v2 body: every input's elements in
    the binary section (`binary_data_size`), the JSON header before them, its length in the header the handler
    reads. The answer is asked for as JSON (KServe's InferResponse reads it back)."""
    inputs, chunks = [], []
    for tensor in request.inputs:
        chunk = tensor_bytes(tensor)
        entry = {"name": tensor.name, "shape": list(tensor.shape), "datatype": tensor.datatype,
                 "parameters": {**dict(tensor.parameters or {}), "binary_data_size": len(chunk)}}
        inputs.append(entry)
        chunks.append(chunk)
    document = {"inputs": inputs, "parameters": {**dict(request.parameters or {}), "binary_data_output": False}}
    if request.id:
        document["id"] = request.id
    if request.request_outputs:
        document["outputs"] = [{"name": o.name, "parameters": {"binary_data": False}} for o in request.request_outputs]
    header = json.dumps(document).encode("utf-8")
    return Row.of([(RAW_BODY_KEY, header + b"".join(chunks), "application/octet-stream")],
                  {HEADER_LENGTH: str(len(header)), "model": model})


def tensor_bytes(tensor) -> bytes:
    """A KServe InferInput's elements in v2's binary form: BYTES each with its 4-byte little-endian length,
    numbers as little-endian values; its raw contents as they came."""
    if tensor._raw_data is not None:  # raw_input_contents: already the binary form (KServe keeps it here)
        return bytes(tensor._raw_data)
    values: List = list(tensor.data)
    if tensor.datatype == "BYTES":
        encoded = [v if isinstance(v, (bytes, bytearray)) else str(v).encode("utf-8") for v in values]
        return b"".join(struct.pack("<I", len(v)) + bytes(v) for v in encoded)
    if tensor.datatype not in STRUCT_CODES:
        raise InvalidField(f"v2 request: datatype {tensor.datatype!r} of input {tensor.name!r} is not supported")
    try:
        return struct.pack(f"<{len(values)}{STRUCT_CODES[tensor.datatype]}", *values)
    except struct.error as err:
        raise InvalidField(f"v2 request: input {tensor.name!r} holds a value its {tensor.datatype} cannot: {err}") from None
