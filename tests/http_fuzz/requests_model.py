"""The model of the fuzz requests: the routes and models, `Request` (what is sent, and its raw bytes),
`Template` (a known-good request in a form mutations can change), the known-good forms of every route and
model (`templates`), and the operator registry every mutation module adds to (`OPERATORS`, `operator`)."""

import base64
import copy
import json
import random
import struct
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

VISION = "mobilenet_v2"
TEXT_MODELS = ("minilm_embedding", "minilm_topics")
MODELS = (VISION,) + TEXT_MODELS
ROUTES = ("predictions", "predictions/1.0", "v2", "v1")
HEADER_LENGTH = "Inference-Header-Content-Length"

# One headline per topic (tests/data/topic_headlines.json, each classified right alone).
HEADLINES = {
    "The striker scored twice in the final": "Sports",
    "Shares slump after retailer cuts its profit forecast": "Business",
    "Ceasefire talks collapse as shelling resumes along the border": "World",
    "Astronomers spot water vapour on a distant exoplanet": "Sci/Tech",
}


def path_of(route: str, model: str) -> str:
    return {"predictions": f"/predictions/{model}", "predictions/1.0": f"/predictions/{model}/1.0",
            "v2": f"/v2/models/{model}/infer", "v1": f"/v1/models/{model}:predict"}[route]


# ---- requests ------------------------------------------------------------------------------------
@dataclass
class Request:
    """One HTTP request to send. Content-Length is the sender's (the body's length) unless a header
    here names it; `throwaway`: send it on a connection of its own, closed after the first answer
    (requests that break the connection's framing: an unsupported Expect, bytes after the body)."""

    method: str
    path: str
    headers: Dict[str, str]
    body: bytes
    route: str
    model: str
    form: str
    mutation: str = "good"
    expects: Optional[str] = None  # good requests: the input ("cat" or a text) whose answer is checked
    throwaway: bool = False
    chunked: bool = False
    # TorchServe's HTTP layer refuses it and closes the connection with bytes of the request still unread:
    # the client may see a reset instead of the answer (docs/errors.md)
    may_reset: bool = False

    def raw(self, host: str = "127.0.0.1", token: Optional[str] = None) -> bytes:
        """The bytes on the wire (what the suite's sender writes)."""
        lines = [f"{self.method} {self.path} HTTP/1.1", f"Host: {host}"]
        if token:
            lines.append(f"Authorization: Bearer {token}")
        lines += [f"{k}: {v}" for k, v in self.headers.items()]
        if self.chunked:
            lines.append("Transfer-Encoding: chunked")
            body = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks(self.body, 1000)) + b"0\r\n\r\n"
        else:
            if not any(k.lower() == "content-length" for k in self.headers):
                lines.append(f"Content-Length: {len(self.body)}")
            body = self.body
        return "\r\n".join(lines).encode("latin-1") + b"\r\n\r\n" + body


def chunks(data: bytes, size: int) -> List[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)] or [b""]


@dataclass
class Template:
    """A known-good request in a structured form that mutations can change before it is rendered."""

    route: str
    model: str
    form: str
    expects: str
    doc: Any = None                    # JSON forms: the document (v2 binary: its JSON header)
    raw: Optional[bytes] = None        # raw forms: the body
    binary: bytes = b""                # v2 binary form: the binary section after the header
    content_type: Optional[str] = None
    multipart: Optional[Tuple[str, Optional[str], bytes]] = None  # (field name, part type, value)
    boundary: str = "fuzzBoundary7MA4YWxkTrZu0gW"
    headers: Dict[str, str] = field(default_factory=dict)
    ensure_ascii: bool = True
    raw_json: Dict[str, str] = field(default_factory=dict)  # placeholders -> JSON text (huge numbers)

    def copy(self) -> "Template":
        return replace(self, doc=copy.deepcopy(self.doc), headers=dict(self.headers), raw_json=dict(self.raw_json))

    def json_bytes(self) -> bytes:
        text = json.dumps(self.doc, ensure_ascii=self.ensure_ascii)
        for placeholder, value in self.raw_json.items():
            text = text.replace(json.dumps(placeholder), value)
        return text.encode("utf-8", "surrogatepass")  # a lone surrogate sent raw: invalid UTF-8 on purpose

    def render(self, mutation: str = "good") -> Request:
        headers = dict(self.headers)
        if self.multipart is not None:
            name, part_type, value = self.multipart
            body = multipart_body(self.boundary, [(f'form-data; name="{name}"', part_type, value)])
            content_type = f"multipart/form-data; boundary={self.boundary}"
        elif self.form == "v2-binary":
            header = self.json_bytes()
            body = header + self.binary
            headers.setdefault(HEADER_LENGTH, str(len(header)))
            content_type = self.content_type
        elif self.raw is not None:
            body, content_type = self.raw, self.content_type
        else:
            body, content_type = self.json_bytes(), self.content_type
        if content_type is not None:
            headers = {"Content-Type": content_type, **headers}
        return Request("POST", path_of(self.route, self.model), headers, body, self.route, self.model, self.form,
                       mutation, self.expects if mutation == "good" else None)


def multipart_body(boundary: str, parts: Sequence[Tuple[Optional[str], Optional[str], bytes]],
                   close: bool = True, newline: bytes = b"\r\n") -> bytes:
    """parts: (Content-Disposition value or None for none, part Content-Type or None, value)."""
    out = b""
    for disposition, part_type, value in parts:
        out += b"--" + boundary.encode() + newline
        if disposition is not None:
            out += b"Content-Disposition: " + disposition.encode("utf-8", "surrogatepass") + newline
        if part_type is not None:
            out += b"Content-Type: " + part_type.encode("latin-1", "replace") + newline
        out += newline + value + newline
    if close:
        out += b"--" + boundary.encode() + b"--" + newline
    return out


def v2_document(element: str, request_id: str) -> dict:
    return {"id": request_id, "inputs": [{"name": "input-0", "datatype": "BYTES", "shape": [1], "data": [element]}]}


def v2_binary_header(size: int, request_id: str) -> dict:
    return {"id": request_id, "inputs": [{"name": "input-0", "datatype": "BYTES", "shape": [1],
                                         "parameters": {"binary_data_size": size}}]}


def bytes_element(value: bytes) -> bytes:
    return struct.pack("<I", len(value)) + value


Pool = Dict[Tuple[str, str], List[Template]]


def templates(jpeg: bytes) -> Pool:
    """Every known-good form of every route and model, by (route, model): the cat photo for the vision
    model, each headline for the text models."""
    pool = {}
    b64 = base64.b64encode(jpeg).decode()
    for route in ROUTES:
        for model in MODELS:
            inputs = [("cat", b64, jpeg)] if model == VISION else [(t, t, t.encode()) for t in HEADLINES]
            pool[(route, model)] = [form for expects, element, raw in inputs
                                    for form in forms(route, model, expects, element, raw)]
    return pool


def forms(route: str, model: str, expects: str, element: str, raw: bytes) -> List[Template]:
    vision = model == VISION
    t = lambda form, **kw: Template(route, model, form, expects, **kw)  # noqa: E731
    if route.startswith("predictions"):
        key = "image" if vision else "text"
        return [
            t("raw", raw=raw, content_type="image/jpeg" if vision else "text/plain; charset=utf-8"),
            t("octet-stream", raw=raw, content_type="application/octet-stream"),
            t("json", doc={key: element}, content_type="application/json"),
            t("multipart", multipart=("data", "image/jpeg" if vision else "text/plain", raw)),
        ] + ([t("json-topk", doc={key: element, "topk": 3}, content_type="application/json")] if vision else [])
    if route == "v2":
        return [
            t("v2-json", doc=v2_document(element, "fuzz-1"), content_type="application/json"),
            t("v2-json-no-type", doc=v2_document(element, "fuzz-2")),
            t("v2-binary", doc=v2_binary_header(len(bytes_element(raw)), "fuzz-3"), binary=bytes_element(raw),
              content_type="application/octet-stream"),
            t("v2-binary-out", doc=dict(v2_document(element, "fuzz-4"), parameters={"binary_data_output": True}),
              content_type="application/json"),
        ]
    return [
        t("v1-data", doc={"instances": [{"data": element}]}, content_type="application/json"),
        t("v1-plain", doc={"instances": [element]}, content_type="application/json"),
    ]


# ---- operators --------------------------------------------------------------------------------------
# Each operator takes (rng, template, ctx) and returns a Request, or None where it does not apply.
# Registration order is the order of the draw (sequence.job): json_mutations, v2_mutations, protocol_mutations,
# each importing the one before it, register in that order whichever of them is imported first.
Operator = Callable[[random.Random, Template, dict], Optional[Request]]
OPERATORS: Dict[str, Tuple[str, float, Operator]] = {}  # name -> (family, weight, operator)


def operator(family: str, weight: float = 1.0):
    def register(fn: Operator) -> Operator:
        OPERATORS[fn.__name__] = (family, weight, fn)
        return fn
    return register
