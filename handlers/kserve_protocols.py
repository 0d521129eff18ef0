"""KServe's request forms: the Open Inference Protocol v2 and KServe v1, parsed and answered.

TorchServe routes `POST /v2/models/<model>/infer` (v2) and `POST /v1/models/<model>:predict`
(KServe v1) to the handler with the JSON body parsed.

KServe v1: {"instances": [x, ...]} where x is a string (base64 image bytes, or the text) or an
object {"data": x} / {"image": x} / {"text": x}; answered {"predictions": [plain answer, ...]}.

v2:
A request carries one BYTES input whose `data` holds one element per item: base64 image bytes
for image models, strings for text models. The response has one output per field of the plain
answer, row-major `data` with its `shape`:
    classifiers: labels (BYTES), indices (INT64), probabilities (FP32), each [n, k]
    embeddings:  embedding (FP32) [n, 384]
    text models: truncated (BOOL) [n]
"""

from typing import Any, Dict, List, NamedTuple, Optional

from request_errors import InvalidField
from request_payload import json_type_name


class KServeV1Request(NamedTuple):
    elements: List[Any]


def is_kserve_v1_request(body: object) -> bool:
    return isinstance(body, dict) and "instances" in body


def parse_kserve_v1_request(body: dict) -> KServeV1Request:
    instances = body["instances"]
    if not isinstance(instances, list) or not instances:
        raise InvalidField("KServe v1 request: 'instances' must be a non-empty list")
    elements = []
    for instance in instances:
        if isinstance(instance, dict):
            keys = [k for k in ("data", "image", "text", "b64") if k in instance]
            if not keys:
                raise InvalidField("KServe v1 request: an instance object needs a 'data' field")
            instance = instance[keys[0]]
            if isinstance(instance, dict) and "b64" in instance:  # {"data": {"b64": ...}}
                instance = instance["b64"]
        if not isinstance(instance, str):
            raise InvalidField(f"KServe v1 request: instances must be strings, not {json_type_name(instance)}")
        elements.append(instance)
    return KServeV1Request(elements)


def kserve_v1_response(results: List[Dict[str, Any]]) -> dict:
    return {"predictions": results}


class V2Request(NamedTuple):
    id: Optional[str]
    input_name: str
    elements: List[Any]


def is_v2_request(body: object) -> bool:
    return isinstance(body, dict) and "inputs" in body


def parse_v2_request(body: dict) -> V2Request:
    inputs = body["inputs"]
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise InvalidField("v2 request: 'inputs' must be a list with exactly one input object")
    tensor = inputs[0]
    datatype = tensor.get("datatype")
    if datatype != "BYTES":
        raise InvalidField(f"v2 request: input datatype must be BYTES (base64 image or text), not {datatype!r}")
    data = tensor.get("data")
    if not isinstance(data, list) or not data:
        raise InvalidField("v2 request: input 'data' must be a non-empty list")
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise InvalidField("v2 request: input 'shape' must be a list of integers")
    count = 1
    for d in shape:
        count *= d
    if count != len(data):
        raise InvalidField(f"v2 request: shape {shape} holds {count} elements but data has {len(data)}")
    for element in data:
        if not isinstance(element, str):
            raise InvalidField(f"v2 request: BYTES data elements must be strings, not {json_type_name(element)}")
    request_id = body.get("id")
    return V2Request(None if request_id is None else str(request_id), str(tensor.get("name", "input-0")), data)


def _tensor(name: str, datatype: str, rows: List[list]) -> dict:
    flat = [value for row in rows for value in row]
    width = len(rows[0]) if rows else 0
    if any(len(row) != width for row in rows):  # ragged top-k: fall back to one row each
        return {"name": name, "datatype": datatype, "shape": [len(flat)], "data": flat}
    return {"name": name, "datatype": datatype, "shape": [len(rows), width], "data": flat}


def v2_outputs(results: List[Dict[str, Any]]) -> List[dict]:
    """The plain answers of one request's items, as v2 output tensors."""
    outputs = []
    first = results[0]
    if "predictions" in first:
        outputs += [
            _tensor("labels", "BYTES", [[p["label"] for p in r["predictions"]] for r in results]),
            _tensor("indices", "INT64", [[p["index"] for p in r["predictions"]] for r in results]),
            _tensor("probabilities", "FP32", [[p["probability"] for p in r["predictions"]] for r in results]),
        ]
    if "embedding" in first:
        outputs.append(_tensor("embedding", "FP32", [r["embedding"] for r in results]))
    if "truncated" in first:
        outputs.append({"name": "truncated", "datatype": "BOOL", "shape": [len(results)],
                        "data": [r["truncated"] for r in results]})
    return outputs


def v2_response(model_name: str, model_version: Optional[str], request_id: Optional[str],
                results: List[Dict[str, Any]]) -> dict:
    response = {"model_name": model_name, "outputs": v2_outputs(results)}
    if model_version:
        response["model_version"] = model_version
    if request_id is not None:
        response["id"] = request_id
    return response
