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
from urllib.parse import parse_qsl
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Tuple

from handlers.protocols import HEADER_LENGTH
from handlers.request_errors import InvalidField, RequestError
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

    def cached_headers(self) -> Dict[str, object]:
        """The headers TorchServe sends again with a request cached in the worker (continuous batching): the
        request's own, without the per-part entries its body's parameters made."""
        return {name: value for name, value in self.headers.items() if isinstance(value, str)}


def worker_decoded(value: bytes, content_type: Optional[str]) -> object:
    """A part's value as TorchServe 0.12's worker hands it (ts/protocol/otf_message_handler._retrieve_input_data):
    exactly `application/json` parsed, `text/*` decoded; what fails to decode, and anything else, stays bytes."""
    content_type = content_type or ""
    try:
        if content_type == "application/json":
            return json.loads(value.decode("utf-8"))
        if content_type.startswith("text"):
            return value.decode("utf-8")
    except (UnicodeDecodeError, ValueError, RecursionError):  # TorchServe catches every Exception here
        pass
    return bytes(value)


def is_form(content_type: Optional[str]) -> bool:
    return (content_type or "").split(";")[0].strip().lower() in FORMS


class RequestTooLarge(RequestError):
    """A body over max_request_size (TorchServe's frontend answers these with a bare 413)."""

    status = 413


async def http_row(request, max_request_size: int, added: Optional[Dict[str, str]] = None) -> Row:
    """A Starlette request as TorchServe's row: the raw body under "body", or a form's fields by name, each
    part's bytes as sent with its own content type (as TorchServe's frontend passes them), `added` beside the
    request's headers (TorchServe's `url_path`). A body over `max_request_size` bytes is refused before more
    of it is read."""
    headers = {**dict(request.headers.items()), **(added or {})}
    content_type = request.headers.get("content-type")
    body = await capped_body(request, max_request_size)
    if not is_form(content_type):
        return Row.of([(RAW_BODY_KEY, body, content_type)], headers)
    try:
        if content_type.split(";")[0].strip().lower() == "multipart/form-data":
            return Row.of(multipart_parts(body, content_type), headers)
        return Row.of([(name.decode("utf-8", "replace"), value, None)
                       for name, value in parse_qsl(body, keep_blank_values=True, strict_parsing=bool(body))],
                      headers)
    except ValueError as err:  # python-multipart's parse errors are ValueErrors too
        raise InvalidField(f"the form body cannot be read: {str(err)[:200]}") from None


def multipart_parts(body: bytes, content_type: str) -> List[Tuple[str, bytes, Optional[str]]]:
    """(name, bytes, content type) of every part, the bytes exactly as sent (Starlette's form parser decodes
    fields without a filename as text)."""
    from python_multipart.multipart import MultipartParser, parse_options_header

    boundary = parse_options_header(content_type)[1].get(b"boundary")
    if not boundary:
        raise InvalidField("multipart body without a boundary")
    parts, part, names, values = [], {}, [], []

    def header_end():
        part["headers"][b"".join(names).strip().lower()] = b"".join(values).strip()
        names.clear()
        values.clear()

    def part_end():
        disposition = parse_options_header(part["headers"].get(b"content-disposition", b""))[1]
        if b"name" not in disposition:
            raise InvalidField("a multipart part has no name (its Content-Disposition names none)")
        kind = part["headers"].get(b"content-type")
        parts.append((disposition[b"name"].decode("utf-8", "replace"), b"".join(part["data"]),
                      kind.decode("latin-1") if kind else None))

    callbacks = {"on_part_begin": lambda: part.update(headers={}, data=[]),
                 "on_header_field": lambda data, start, end: names.append(data[start:end]),
                 "on_header_value": lambda data, start, end: values.append(data[start:end]),
                 "on_header_end": header_end,
                 "on_part_data": lambda data, start, end: part["data"].append(data[start:end]),
                 "on_part_end": part_end}
    parser = MultipartParser(boundary, callbacks)
    parser.write(body)
    parser.finalize()
    return parts


async def capped_body(request, limit: int) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise RequestTooLarge(f"the body of {int(declared):,} bytes is over max_request_size ({limit:,} bytes)")
    chunks, size = [], 0
    async for chunk in request.stream():  # chunked bodies declare no length: counted as they come
        size += len(chunk)
        if size > limit:
            raise RequestTooLarge(f"the body is over max_request_size ({limit:,} bytes)")
        chunks.append(chunk)
    return b"".join(chunks)


def grpc_row(request, model: str) -> Row:
    """A KServe InferRequest made from a gRPC ModelInferRequest, as a binary v2 body: every input's elements in
    the binary section (`binary_data_size`), the JSON header before them, its length in the header the handler
    reads. The answer is asked for as JSON (KServe's InferResponse reads it back)."""
    inputs, chunks = [], []
    for tensor in request.inputs:
        chunk = tensor_bytes(tensor)
        entry = {"name": tensor.name, "shape": list(tensor.shape), "datatype": tensor.datatype,
                 "parameters": {**plain_parameters(tensor.parameters), "binary_data_size": len(chunk)}}
        inputs.append(entry)
        chunks.append(chunk)
    document = {"inputs": inputs, "parameters": {**plain_parameters(request.parameters), "binary_data_output": False}}
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


def plain_parameters(parameters) -> Dict[str, object]:
    """v2 parameters as JSON values. Over gRPC each is an InferParameter message holding one of bool, int64 or
    string (KServe's proto has no double: a fraction can only travel as a string there)."""
    plain = {}
    for name, value in dict(parameters or {}).items():
        if hasattr(value, "WhichOneof"):  # a gRPC InferParameter (None when it holds nothing)
            which = value.WhichOneof("parameter_choice")
            value = getattr(value, which) if which else None
        plain[name] = value
    return plain
