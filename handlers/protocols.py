"""Request protocols as objects: each parses its request into items and writes its own answer.

    PlainRequest     the contract's form: one item (raw bytes, text, multipart, or JSON {"image"|"text": ...})
    V2Request        Open Inference Protocol v2 (KServe v2, Triton): one BYTES input, one element per item,
                     JSON or binary tensors (the `Inference-Header-Content-Length` extension) both ways
    KServeV1Request  KServe v1: {"instances": [...]} -> {"predictions": [...]}

`parse_request(body, content_type, header_length)` recognises the protocol by the content, whatever the
Content-Type: tritonclient sends none, KServe's SDK sends binary tensors as application/octet-stream,
and TorchServe then hands the handler bytes, not a parsed dict. A body that parses as a JSON object is
read as JSON (the plain form or a KServe form), never as text or image bytes.
Each request's `respond(results)` answers in its own protocol; handlers declare their v2 outputs
(`Output`) instead of an encoder guessing them from the answers' keys. Pure: imports nothing from `ts`.
"""

import json
import struct
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

from handlers.request_errors import InvalidField, InvalidJSON, RequestError, shown
from handlers.request_payload import MAX_JSON_INT, count_error, is_count, is_json, json_type_name, unicode_text

JSON_TYPE = "application/json"
BINARY_TYPE = "application/octet-stream"
HEADER_LENGTH = "Inference-Header-Content-Length"
Element = Union[str, bytes]  # a v2/v1 element: JSON string (base64 image or text), or raw bytes (binary)


@dataclass
class Answer:
    """What one request gets back: its body, content type and extra response headers."""

    body: bytes
    content_type: str = JSON_TYPE
    headers: Dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Output:
    """A v2 output a handler declares: its name, datatype, and the values one item's answer gives it
    (a list per item, or one value per item with `per_item=True`)."""

    name: str
    datatype: str  # BYTES, INT64, FP32 or BOOL
    values: Callable[[dict], Any]
    per_item: bool = False


# ---- the plain form -------------------------------------------------------------------------------
@dataclass
class PlainRequest:
    body: Any
    content_type: Optional[str]
    protocol = "plain"

    def respond(self, results: List[dict], model: "ModelInfo") -> Answer:
        return Answer(json.dumps(results[0]).encode("utf-8"))


# ---- KServe v1 ------------------------------------------------------------------------------------
@dataclass
class KServeV1Request:
    elements: List[Element]
    parameters: Dict[str, Any] = field(default_factory=dict)
    protocol = "kserve_v1"

    @classmethod
    def parse(cls, body: dict) -> "KServeV1Request":
        instances = body["instances"]
        if not isinstance(instances, list) or not instances:
            raise InvalidField("KServe v1 request: 'instances' must be a non-empty list")
        return cls([cls._element(instance) for instance in instances])

    @staticmethod
    def _element(instance: Any) -> str:
        if isinstance(instance, dict):
            keys = [k for k in ("data", "image", "text", "b64") if k in instance]
            if not keys:
                raise InvalidField("KServe v1 request: an instance object needs a 'data' field")
            instance = instance[keys[0]]
            if isinstance(instance, dict) and "b64" in instance:  # {"data": {"b64": ...}}
                instance = instance["b64"]
        if not isinstance(instance, str):
            raise InvalidField(f"KServe v1 request: instances must be strings, not {json_type_name(instance)}")
        return instance

    def respond(self, results: List[dict], model: "ModelInfo") -> Answer:
        return Answer(json.dumps({"predictions": results}).encode("utf-8"))


# ---- Open Inference Protocol v2 --------------------------------------------------------------------
@dataclass
class ModelInfo:
    name: str
    version: Optional[str]
    outputs: Sequence[Output]


@dataclass
class V2Request:
    id: Optional[str]
    input_name: str
    elements: List[Element]
    parameters: Dict[str, Any] = field(default_factory=dict)
    requested: Optional[Dict[str, bool]] = None  # output name -> in binary; None: every output
    binary_default: bool = False                 # parameters.binary_data_output
    protocol = "v2"

    @classmethod
    def parse(cls, document: dict, binary: bytes = b"") -> "V2Request":
        inputs = document["inputs"]
        if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
            raise InvalidField("v2 request: 'inputs' must be a list with exactly one input object")
        tensor = inputs[0]
        if tensor.get("datatype") != "BYTES":
            raise InvalidField(f"v2 request: input datatype must be BYTES (image bytes or text), "
                               f"not {shown(tensor.get('datatype'))}")
        count = _element_count(tensor.get("shape"))
        tensor_parameters = _parameters(tensor, "input")
        if "binary_data_size" in tensor_parameters:
            elements = _binary_elements(binary, tensor_parameters["binary_data_size"])
        else:
            elements = _json_elements(tensor.get("data"))
        if count != len(elements):
            raise InvalidField(f"v2 request: shape {_shape_text(tensor['shape'])} holds {count:,} elements "
                               f"but data has {len(elements):,}")
        name = tensor.get("name", "input-0")
        if not isinstance(name, str):
            raise InvalidField(f"v2 request: input 'name' must be a string, not {json_type_name(name)}")
        parameters = _parameters(document, "request")
        return cls(_request_id(document.get("id")), name, elements, parameters, _requested_outputs(document),
                   bool(parameters.get("binary_data_output", False)))

    def respond(self, results: List[dict], model: ModelInfo) -> Answer:
        tensors, chunks = [], []
        for output in model.outputs:
            if self.requested is not None and output.name not in self.requested:
                continue
            tensor, values = _tensor(output, results)
            if self.requested.get(output.name, self.binary_default) if self.requested else self.binary_default:
                chunk = _to_binary(output.datatype, values)
                tensor["parameters"] = {"binary_data_size": len(chunk)}
                chunks.append(chunk)
            else:
                tensor["data"] = values
            tensors.append(tensor)
        document = {"model_name": model.name, "outputs": tensors}
        if model.version:
            document["model_version"] = model.version
        if self.id is not None:
            document["id"] = self.id
        header = json.dumps(document).encode("utf-8")
        if not chunks:
            return Answer(header)
        return Answer(header + b"".join(chunks), BINARY_TYPE, {HEADER_LENGTH: str(len(header))})


def _parameters(owner: dict, what: str) -> Dict[str, Any]:
    parameters = owner.get("parameters", {})
    if not isinstance(parameters, dict):
        raise InvalidField(f"v2 request: {what} 'parameters' must be an object, not {json_type_name(parameters)}")
    return parameters


def _request_id(request_id: Any) -> Optional[str]:
    """The request's `id` as the answer echoes it: a string (v2's type; a JSON number is taken as its text)."""
    if request_id is None:
        return None
    if isinstance(request_id, str):
        return unicode_text(request_id, "v2 request: 'id'")  # echoed: it must have a UTF-8 form
    if isinstance(request_id, (int, float)) and not isinstance(request_id, bool) and abs(request_id) <= MAX_JSON_INT:
        return str(request_id)  # at most 16 digits: printing a huge integer fails (ValueError); NaN is refused
    raise InvalidField(f"v2 request: 'id' must be a string, not {shown(request_id)}")


def _element_count(shape: Any) -> int:
    """The number of elements `shape` holds; each dimension at most MAX_JSON_INT, the product too (a
    product of huge numbers costs time and cannot be printed: it is refused before it grows)."""
    if not isinstance(shape, list):
        raise InvalidField(f"v2 request: input 'shape' must be a list of non-negative integers, not {shown(shape)}")
    for d in shape:
        if not is_count(d, 0):
            raise InvalidField(count_error("v2 request: each number of the input 'shape'", d, 0))
    if 0 in shape:
        return 0
    count = 1
    for d in shape:
        count *= d
        if count > MAX_JSON_INT:
            raise InvalidField(f"v2 request: input 'shape' {_shape_text(shape)} holds more than {MAX_JSON_INT:,} "
                               f"elements; give the shape of the data sent, e.g. [<number of elements>]")
    return count


def _shape_text(shape: list) -> str:
    """A shape as a message shows it: whole when short, else its first numbers and its length."""
    if len(shape) <= 8:
        return f"[{', '.join(shown(d) for d in shape)}]"
    return f"[{', '.join(shown(d) for d in shape[:4])}, ...] ({len(shape):,} numbers)"


def _json_elements(data: Any) -> List[str]:
    if not isinstance(data, list) or not data:
        raise InvalidField("v2 request: input 'data' must be a non-empty list (or binary data)")
    flat = _flatten(data)
    for element in flat:
        if not isinstance(element, str):
            raise InvalidField(f"v2 request: BYTES data elements must be strings, not {json_type_name(element)}")
    return flat


def _flatten(data: list) -> list:
    """Row-major elements of a nested `data` list ([["a"], ["b"]] and ["a", "b"] alike)."""
    flat, stack = [], [iter(data)]
    while stack:  # iterative: a deeply nested list must not reach Python's recursion limit
        value = next(stack[-1], _END)
        if value is _END:
            stack.pop()
        elif isinstance(value, list):
            stack.append(iter(value))
        else:
            flat.append(value)
    return flat


_END = object()


def _binary_elements(binary: bytes, size: Any) -> List[bytes]:
    """BYTES elements of the binary section: each a 4-byte little-endian length, then that many bytes."""
    if not is_count(size, 0) or size > len(binary):
        raise InvalidField(f"v2 request: binary_data_size {shown(size)} does not fit the {len(binary):,} bytes "
                           f"after the JSON header")
    data, elements, offset = binary[:size], [], 0
    while offset < size:
        if offset + 4 > size:
            raise InvalidField("v2 request: a binary BYTES element is cut short (its 4-byte length is missing)")
        (length,) = struct.unpack_from("<I", data, offset)
        if offset + 4 + length > size:
            raise InvalidField(f"v2 request: a binary BYTES element says {length} bytes but fewer follow")
        elements.append(bytes(data[offset + 4: offset + 4 + length]))
        offset += 4 + length
    return elements


def _requested_outputs(document: dict) -> Optional[Dict[str, bool]]:
    """{name: binary?} of the outputs a request names, or None when it names none (all are answered)."""
    outputs = document.get("outputs")
    if outputs is None:
        return None
    if not isinstance(outputs, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str) for o in outputs):
        raise InvalidField("v2 request: 'outputs' must be a list of objects with a 'name'")
    default = bool(_parameters(document, "request").get("binary_data_output", False))
    return {o["name"]: bool(_parameters(o, "output").get("binary_data", default)) for o in outputs}


def _tensor(output: Output, results: List[dict]) -> Tuple[dict, list]:
    rows = [output.values(r) for r in results]
    if output.per_item:
        return {"name": output.name, "datatype": output.datatype, "shape": [len(rows)]}, rows
    width = len(rows[0]) if rows else 0
    flat = [value for row in rows for value in row]
    shape = [len(rows), width] if all(len(row) == width for row in rows) else [len(flat)]  # ragged top-k
    return {"name": output.name, "datatype": output.datatype, "shape": shape}, flat


def _to_binary(datatype: str, values: list) -> bytes:
    if datatype == "BYTES":
        encoded = [v.encode("utf-8") if isinstance(v, str) else bytes(v) for v in values]
        return b"".join(struct.pack("<I", len(v)) + v for v in encoded)
    code = {"FP32": "f", "INT64": "q", "BOOL": "?"}[datatype]
    return struct.pack(f"<{len(values)}{code}", *values)


# ---- recognising the protocol ------------------------------------------------------------------------
Request = Union[PlainRequest, V2Request, KServeV1Request]


def parse_request(body: Any, content_type: Optional[str], header_length: Optional[str] = None) -> Request:
    """The request's protocol and content, recognised by what the body holds."""
    if header_length is not None and isinstance(body, (bytes, bytearray, str)):
        return as_v2(_binary_v2, body, header_length)
    if isinstance(body, (bytes, bytearray)) and not is_json(content_type) and _looks_like_json_object(body):
        try:
            body = json.loads(bytes(body).decode("utf-8"))
        except (ValueError, RecursionError):  # RecursionError: nested deeper than json can parse
            raise InvalidJSON("the body starts like a JSON object but is not valid JSON") from None
        content_type = JSON_TYPE
    if isinstance(body, dict) and "inputs" in body:
        return as_v2(V2Request.parse, body)
    if isinstance(body, dict) and "instances" in body:
        return KServeV1Request.parse(body)
    return PlainRequest(body, content_type)


def as_v2(parse: Callable[..., V2Request], *args) -> V2Request:
    """`parse(*args)`, its request errors marked as v2 ones (their JSON then also carries v2's "error")."""
    try:
        return parse(*args)
    except RequestError as err:
        err.protocol = "v2"
        raise


def _looks_like_json_object(body: bytes) -> bool:
    return bytes(body[:64]).lstrip().startswith(b"{")


def _binary_v2(body: Union[bytes, str], header_length: str) -> V2Request:
    if isinstance(body, str):
        # TorchServe parsed an application/json body that was a JSON string: its \uXXXX escapes may leave a
        # lone surrogate, which has no UTF-8 form (encode() would raise and the request be answered 500)
        body = unicode_text(body, "the body").encode("utf-8")
    raw = bytes(body)
    try:
        length = int(header_length)  # a header of over 4,300 digits is a ValueError too
    except ValueError:
        raise InvalidField(f"{HEADER_LENGTH} must be an integer, got {shown(header_length)}") from None
    if not 0 < length <= len(raw):
        raise InvalidField(f"{HEADER_LENGTH} is {shown(length)} but the body has {len(raw):,} bytes")
    try:
        document = json.loads(raw[:length].decode("utf-8"))
    except (ValueError, RecursionError):
        raise InvalidJSON(f"the first {length} bytes ({HEADER_LENGTH}) are not a JSON object") from None
    if not isinstance(document, dict) or "inputs" not in document:
        raise InvalidField(f"a body with {HEADER_LENGTH} must start with a v2 request's JSON (with 'inputs')")
    return V2Request.parse(document, raw[length:])
