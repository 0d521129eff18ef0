"""A seeded grammar of HTTP request mutations over the inference routes, in the style of Triton's
L0_http_fuzz: each request is a known-good one (a template: route, model, form), sent as it is or
changed by one mutation operator chosen by the seed. Used by tests/integration/test_http_fuzz.py.

Pure: it builds requests (method, path, headers, body) and knows nothing about sending or judging.
Request `i` of a seed is built from its own `random.Random(f"{seed}:{i}")`, so any one request can be
rebuilt alone and written out as the raw bytes that were sent:

    .venv/bin/python tests/http_mutations.py --seed 20251717 --job 123 [--out req.http]

Operators (`OPERATORS`, by family): bytes (flips, truncation, splices), JSON (wrong types, dropped and
unknown keys, syntax, duplicates, deep nesting, huge numbers, long strings, unicode with lone
surrogates), v2 (shapes, datatypes, data, inputs, parameters, outputs, ids, top-k), the binary
extension (`Inference-Header-Content-Length` values, element lengths, `binary_data_size`), content
types, multipart (field names, parts, boundaries, dispositions), text encodings, HTTP (methods, paths,
`Expect`, chunked framing, odd headers), and a few heavy ones (megabyte strings and shapes, bodies over
`max_request_size`).
"""

import argparse
import base64
import copy
import json
import random
import struct
import sys
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

VISION = "mobilenet_v2"
TEXT_MODELS = ("minilm_embedding", "minilm_topics")
MODELS = (VISION,) + TEXT_MODELS
ROUTES = ("predictions", "predictions/1.0", "v2", "v1")
HEADER_LENGTH = "Inference-Header-Content-Length"
GOOD_EVERY = 10  # every 10th request is a known-good one

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


# ---- specimens ----------------------------------------------------------------------------------------
HUGE_DIGITS = "9" * 5000          # past Python's 4,300-digit int conversion limit
THOUSANDS = "1" + "0" * 3000      # parses, but a product of two no longer prints
UNICODE = [
    "\ud800", "\udfff", "a\ud800b", "\ud83d", "\ude00\ud83d",        # lone surrogates
    "🚀🔥😂" * 10, "👩‍👩‍👧‍👦", "مرحبا بالعالم", "שלום עולם", "\u202eevil\u202c", "e" + "\u0301" * 500,
    "\u200b\u200c\u200d\ufeff", "\x00", "a\x00b", "\ufffe\uffff", "東京は日本の首都です",
    "\U0010ffff", "\x7f\x80\x9f", "\u2028\u2029", "Z\u0351\u0352\u0353" * 50, "",
]
JSON_VALUES = [None, True, False, 0, -1, 1, 1.5, -0.0, 1e308, "", "x", "5", [], {}, [1, 2], {"a": 1},
               [[[]]], [None], ["a", "b"], 2 ** 63, -2 ** 63, 2 ** 64 + 1]
SHAPES = [[], [0], [-1], [2], [1, 1], [1, 0], [0, 1], [1, 1, 1, 1], [2 ** 63], [2 ** 64], [-2 ** 63], ["1"],
          [1.0], [True], None, "1", {"a": 1}, [[1]], [1, -1], [0] * 1000, [1] * 1000, [10 ** 18, 10 ** 18]]
DATATYPES = ["FP32", "INT64", "BOOL", "UINT8", "FP16", "bytes", "Bytes", "BYTES ", "", None, 5, ["BYTES"],
             {"t": "BYTES"}, "B" * 300, "STRING", "BYTES\x00"]
CONTENT_TYPES = [None, "", "x/y", "image/png", "image/jpeg", "text/plain", "application/json", "application/octet-stream",
                 "text/plain; charset=latin-1", "application/json; charset=utf-16", "multipart/form-data",
                 "multipart/form-data; boundary=nope", "application/x-www-form-urlencoded", "IMAGE/JPEG", "*/*",
                 "application/json" + "; a=b" * 400, ";;;", "text/", "application/vnd.api+json",
                 "text/plain; charset=\"", "image/svg+xml", "application/grpc"]
HEADER_LENGTHS = ["0", "-1", "abc", "", " ", "1e3", "9" * 30, "0x10", "+{n}", " {n}", "{n} ", "{n_1}", "{n1}",
                  "{total}", "{total1}", "{n},{n}", "3.5", "NaN", "-0", "00000{n}"]
METHODS = ["GET", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "TRACE", "FOO", "get", "post"]


# ---- operators --------------------------------------------------------------------------------------
# Each operator takes (rng, template, ctx) and returns a Request, or None where it does not apply.
Operator = Callable[[random.Random, Template, dict], Optional[Request]]
OPERATORS: Dict[str, Tuple[str, float, Operator]] = {}  # name -> (family, weight, operator)


def operator(family: str, weight: float = 1.0):
    def register(fn: Operator) -> Operator:
        OPERATORS[fn.__name__] = (family, weight, fn)
        return fn
    return register


# bytes ---------------------------------------------------------------------------------------------
@operator("bytes", 3)
def byte_flips(rng, t, ctx):
    r = t.render("byte_flips")
    body = bytearray(r.body)
    if not body:
        return None
    for _ in range(rng.choice([1, 1, 2, 4, 8, 32])):
        body[rng.randrange(len(body))] ^= rng.randrange(1, 256)
    r.body = bytes(body)
    return r


@operator("bytes", 2)
def truncation(rng, t, ctx):
    r = t.render("truncation")
    if not r.body:
        return None
    cut = rng.choice([0, 1, rng.randrange(len(r.body)), len(r.body) - 1, len(r.body) // 2])
    r.body = r.body[:cut]
    return r


@operator("bytes", 1.5)
def splice(rng, t, ctx):
    r = t.render("splice")
    body, n = r.body, len(r.body)
    if n < 2:
        return None
    i, j = sorted(rng.sample(range(n), 2))
    how = rng.choice(["delete", "duplicate", "insert", "append", "prepend", "swap"])
    noise = rng.randbytes(rng.choice([1, 4, 100, 4000]))
    r.body = {"delete": lambda: body[:i] + body[j:], "duplicate": lambda: body[:j] + body[i:j] + body[j:],
              "insert": lambda: body[:i] + noise + body[i:], "append": lambda: body + noise,
              "prepend": lambda: noise + body, "swap": lambda: body[j:] + body[:j]}[how]()
    r.mutation = f"splice:{how}"
    return r


@operator("bytes", 0.5)
def empty_body(rng, t, ctx):
    r = t.render("empty_body")
    r.body = b""
    return r


# JSON -------------------------------------------------------------------------------------------------
def json_paths(doc: Any, prefix: Tuple = ()) -> List[Tuple]:
    """Paths (tuples of keys and indexes) of every node of a document, the root included."""
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += json_paths(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc[:8]):
            out += json_paths(v, prefix + (i,))
    return out


def get_at(doc, path):
    for p in path:
        doc = doc[p]
    return doc


def set_at(t: Template, path: Tuple, value: Any) -> None:
    if not path:
        t.doc = value
        return
    get_at(t.doc, path[:-1])[path[-1]] = value


def raw_value(t: Template, text: str) -> str:
    """A placeholder for JSON text json.dumps cannot write (numbers of thousands of digits)."""
    placeholder = f"@@raw{len(t.raw_json)}@@"
    t.raw_json[placeholder] = text
    return placeholder


def json_template(t: Template) -> bool:
    return t.raw is None and t.multipart is None


@operator("json", 3)
def json_wrong_type(rng, t, ctx):
    if not json_template(t):
        return None
    t = t.copy()
    path = rng.choice(json_paths(t.doc))
    set_at(t, path, copy.deepcopy(rng.choice(JSON_VALUES)))
    r = t.render(f"json_wrong_type:{'/'.join(map(str, path)) or 'root'}")
    return r


@operator("json", 1.5)
def json_keys(rng, t, ctx):
    if not json_template(t):
        return None
    t = t.copy()
    objects = [p for p in json_paths(t.doc) if isinstance(get_at(t.doc, p), dict) and get_at(t.doc, p)]
    if not objects:
        return None
    path = rng.choice(objects)
    obj = get_at(t.doc, path)
    key = rng.choice(list(obj))
    how = rng.choice(["drop", "rename", "unknown", "upper"])
    if how == "drop":
        del obj[key]
    elif how == "rename":
        obj[key + "_"] = obj.pop(key)
    elif how == "unknown":
        name = rng.choice(["extra", "", "\ud800", "x" * 1000, "image", "text", "instances", "inputs"])
        obj[name] = rng.choice(JSON_VALUES)
    else:
        obj[key.upper()] = obj.pop(key)
    return t.render(f"json_keys:{how}:{key}")


@operator("json", 1)
def json_syntax(rng, t, ctx):
    if not json_template(t):
        return None
    text = t.json_bytes()
    how = rng.choice(["unclosed", "trailing-comma", "single-quotes", "comment", "nan", "two-docs", "bom",
                      "duplicate-key", "leading-garbage", "utf16"])
    body = {"unclosed": lambda: text[:-1], "trailing-comma": lambda: text[:-1] + b",}",
            "single-quotes": lambda: text.replace(b'"', b"'"), "comment": lambda: b"/* c */" + text,
            "nan": lambda: text[:-1] + b', "n": NaN, "i": -Infinity}', "two-docs": lambda: text + text,
            "bom": lambda: b"\xef\xbb\xbf" + text,
            "duplicate-key": lambda: duplicate_key(t.doc, text),
            "leading-garbage": lambda: b"\x00\x01" + text,
            "utf16": lambda: text.decode("utf-8", "surrogatepass").encode("utf-16", "surrogatepass")}[how]()
    r = t.render(f"json_syntax:{how}")
    if t.form == "v2-binary":
        r.body = body + t.binary
        r.headers[HEADER_LENGTH] = str(len(body))
    else:
        r.body = body
    return r


def duplicate_key(doc: Any, text: bytes) -> bytes:
    """The document with its first key repeated at the end with another value (the last one wins in Python)."""
    if not isinstance(doc, dict) or not doc or not text.endswith(b"}"):
        return text + b"}"
    return text[:-1] + b", " + json.dumps(next(iter(doc))).encode() + b": 5}"


@operator("json", 1)
def json_deep(rng, t, ctx):
    if not json_template(t):
        return None
    t = t.copy()
    depth = rng.choice([100, 1000, 5000, 100_000])
    path = rng.choice(json_paths(t.doc))
    set_at(t, path, raw_value(t, "[" * depth + "1" + "]" * depth))
    return t.render(f"json_deep:{depth}")


@operator("json", 1.5)
def json_numbers(rng, t, ctx):
    if not json_template(t):
        return None
    t = t.copy()
    path = rng.choice(json_paths(t.doc))
    text = rng.choice(["1e400", "-1e400", "1e-400", HUGE_DIGITS, "-" + HUGE_DIGITS, THOUSANDS, "1" + "0" * 400,
                       "0." + "1" * 5000, "1E+999999999", "NaN", "Infinity", "-0", str(2 ** 64)])
    set_at(t, path, raw_value(t, text))
    return t.render(f"json_numbers:{text[:12]}{'...' if len(text) > 12 else ''}")


@operator("json", 1)
def json_long_string(rng, t, ctx):
    if not json_template(t):
        return None
    t = t.copy()
    paths = [p for p in json_paths(t.doc) if p]
    strings = [p for p in paths if isinstance(get_at(t.doc, p), str)] or paths
    if not strings:
        return None
    path = rng.choice(strings)
    size = rng.choice([1000, 10_000, 100_000])
    set_at(t, path, rng.choice(["x", "é", "🚀", "A/+", " "]) * size)
    return t.render(f"json_long_string:{size}")


@operator("unicode", 2.5)
def json_unicode(rng, t, ctx):
    if not json_template(t):
        return None
    t = t.copy()
    strings = [p for p in json_paths(t.doc) if p and isinstance(get_at(t.doc, p), str)]
    if not strings:
        return None
    path = rng.choice(strings)
    specimen = rng.choice(UNICODE)
    old = get_at(t.doc, path)
    set_at(t, path, rng.choice([specimen, old[:20] + specimen + old[20:], specimen + old]))
    t.ensure_ascii = rng.random() < 0.7  # escaped (\ud800) or raw UTF-8 (a lone surrogate then is invalid UTF-8)
    return t.render(f"json_unicode:{'escaped' if t.ensure_ascii else 'raw'}:{ascii(specimen[:6])}")


# v2 -----------------------------------------------------------------------------------------------------
def v2_input(t: Template) -> Optional[dict]:
    if t.route != "v2" or not isinstance(t.doc, dict):
        return None
    return t.doc["inputs"][0]


@operator("v2", 2.5)
def v2_shape(rng, t, ctx):
    if v2_input(t) is None:
        return None
    t = t.copy()
    shape = copy.deepcopy(rng.choice(SHAPES + ["digits", "digits2", "huge-digits"]))
    label = shape if isinstance(shape, str) and "digits" in shape else json.dumps(shape)[:40]
    if shape == "digits":
        shape = [raw_value(t, THOUSANDS)]
    elif shape == "digits2":
        shape = [raw_value(t, THOUSANDS), raw_value(t, THOUSANDS)]
    elif shape == "huge-digits":
        shape = [raw_value(t, HUGE_DIGITS)]
    v2_input(t)["shape"] = shape
    return t.render(f"v2_shape:{label}")


@operator("v2", 2)
def v2_datatype(rng, t, ctx):
    if v2_input(t) is None:
        return None
    t = t.copy()
    datatype = rng.choice(DATATYPES)
    v2_input(t)["datatype"] = datatype
    return t.render(f"v2_datatype:{str(datatype)[:20]}")


@operator("v2", 2)
def v2_data(rng, t, ctx):
    tensor = v2_input(t)
    if tensor is None or "data" not in tensor:
        return None
    t = t.copy()
    tensor = v2_input(t)
    element = tensor["data"][0]
    how, data = rng.choice([
        ("empty", []), ("nested", [[element]]), ("two", [element, element]), ("number", [1]), ("null", [None]),
        ("object", [{"b64": element}]), ("bare-string", element), ("inner-empty", [[]]), ("bool", [True]),
        ("deep", [[[[[[element]]]]]]), ("many", [element] * 40), ("mixed", [element, 5]), ("dict", {"0": element}),
        ("blank", [""]), ("not-base64", ["***"]), ("truncated", [element[: len(element) // 2]])])
    tensor["data"] = data
    if how in ("two", "many") and rng.random() < 0.5:
        tensor["shape"] = [len(data)]  # consistent: a valid request of several elements
    return t.render(f"v2_data:{how}")


@operator("v2", 1.5)
def v2_inputs(rng, t, ctx):
    if v2_input(t) is None:
        return None
    t = t.copy()
    tensor = t.doc["inputs"][0]
    how, inputs = rng.choice([("none", []), ("two", [tensor, copy.deepcopy(tensor)]), ("object", tensor),
                              ("string", "input-0"), ("null", None), ("list-of-list", [[tensor]]),
                              ("no-name", [{k: v for k, v in tensor.items() if k != "name"}]),
                              ("name-number", [dict(tensor, name=5)]), ("missing", "drop")])
    if inputs == "drop":
        del t.doc["inputs"]
    else:
        t.doc["inputs"] = inputs
    return t.render(f"v2_inputs:{how}")


@operator("v2", 2)
def v2_parameters(rng, t, ctx):
    if v2_input(t) is None:
        return None
    t = t.copy()
    where = rng.choice(["request", "input", "outputs", "topk"])
    value = rng.choice(JSON_VALUES)
    if where == "request":
        t.doc["parameters"] = rng.choice([{"binary_data_output": value}, value, {"binary_data_output": True}])
    elif where == "input":
        size = rng.choice([-1, 0, 1, 2 ** 40, "12", 1.5, None, True, len(t.binary) + 1, len(t.binary) - 1])
        v2_input(t)["parameters"] = rng.choice([{"binary_data_size": size}, value])
    elif where == "outputs":
        name = rng.choice(["labels", "embedding", "probabilities", "truncated", "nope", "", 5, None])
        t.doc["outputs"] = rng.choice([
            [{"name": name}], [{"name": name, "parameters": {"binary_data": rng.choice([True, False, value])}}],
            value, [value], [{"name": "labels"}] * 50])
    else:
        t.doc.setdefault("parameters", {})
        if not isinstance(t.doc["parameters"], dict):
            t.doc["parameters"] = {}
        t.doc["parameters"]["topk"] = rng.choice([0, -1, 1, 1000, 1001, 10 ** 30, "5", 1.5, True, None, [5]])
    return t.render(f"v2_parameters:{where}")


@operator("v2", 1)
def v2_id(rng, t, ctx):
    if t.route != "v2":
        return None
    t = t.copy()
    t.doc["id"] = rng.choice([None, 5, 1.5, {"a": 1}, [1], "", "\ud800", "id-" + "🚀" * 100, "x" * 10_000, True])
    return t.render("v2_id")


# binary extension -------------------------------------------------------------------------------------
@operator("binary", 2)
def header_length_value(rng, t, ctx):
    r = t.render("header_length_value")
    n = int(r.headers.get(HEADER_LENGTH, len(r.body)))
    spec = rng.choice(HEADER_LENGTHS)
    value = spec.format(n=n, n_1=n - 1, n1=n + 1, total=len(r.body), total1=len(r.body) + 1)
    r.headers[HEADER_LENGTH] = value
    r.mutation = f"header_length_value:{spec[:12]}"
    return r


@operator("binary", 5)
def binary_elements(rng, t, ctx):
    if t.form != "v2-binary":
        return None
    t = t.copy()
    value = t.binary[4:]
    how = rng.choice(["length-max", "length-zero", "length-plus-one", "length-cut", "two-elements", "no-prefix",
                      "size-short", "size-long"])
    if how == "length-max":
        t.binary = struct.pack("<I", 0xFFFFFFFF) + value
    elif how == "length-zero":
        t.binary = struct.pack("<I", 0) + value
    elif how == "length-plus-one":
        t.binary = struct.pack("<I", len(value) + 1) + value
    elif how == "length-cut":
        t.binary = t.binary[:2]
    elif how == "two-elements":
        t.binary = t.binary * 2  # shape still says 1, binary_data_size the size of one
    elif how == "no-prefix":
        t.binary = value
    if how.startswith("size"):
        delta = -3 if how == "size-short" else 3
        v2_input(t)["parameters"]["binary_data_size"] += delta
    else:
        v2_input(t)["parameters"]["binary_data_size"] = len(t.binary)
    return t.render(f"binary_elements:{how}")


@operator("binary", 1)
def header_length_elsewhere(rng, t, ctx):
    if t.form == "v2-binary":
        return None
    r = t.render("header_length_elsewhere")
    r.headers[HEADER_LENGTH] = rng.choice(["0", "1", str(len(r.body)), str(len(r.body) // 2), "x", "-5"])
    return r


# content types -------------------------------------------------------------------------------------------
@operator("content-type", 3)
def content_type(rng, t, ctx):
    r = t.render("content_type")
    value = rng.choice(CONTENT_TYPES)
    r.headers.pop("Content-Type", None)
    if value is not None:
        r.headers["Content-Type"] = value
    r.mutation = f"content_type:{(value or str(value))[:30]}"
    return r


# multipart -----------------------------------------------------------------------------------------------
def as_multipart(t: Template) -> Optional[Template]:
    if not t.route.startswith("predictions"):
        return None
    if t.multipart is not None:
        return t.copy()
    body = t.raw if t.raw is not None else t.json_bytes()
    return replace(t.copy(), multipart=("data", t.content_type, body))


@operator("multipart", 2)
def multipart_part(rng, t, ctx):
    t = as_multipart(t)
    if t is None:
        return None
    name, part_type, value = t.multipart
    how = rng.choice(["name-file", "name-image", "name-empty", "name-upper", "extra-part", "second-data",
                      "empty-value", "filename", "part-type", "no-part", "quoted-name", "unicode-name"])
    parts = [(f'form-data; name="{name}"', part_type, value)]
    if how.startswith("name-"):
        new = {"name-file": "file", "name-image": "image", "name-empty": "", "name-upper": "DATA"}[how]
        parts = [(f'form-data; name="{new}"', part_type, value)]
    elif how == "extra-part":
        parts.append(('form-data; name="other"', "text/plain", b"x" * rng.choice([1, 1000])))
    elif how == "second-data":
        parts.append(('form-data; name="data"', "text/plain", b"second"))
    elif how == "empty-value":
        parts = [(f'form-data; name="{name}"', part_type, b"")]
    elif how == "filename":
        parts = [(f'form-data; name="{name}"; filename="../../etc/passwd"', part_type, value)]
    elif how == "part-type":
        parts = [(f'form-data; name="{name}"', rng.choice(["application/json", "x/y", "", "text/plain; charset=latin-1",
                                                           "image/png", "application/x-www-form-urlencoded"]), value)]
    elif how == "no-part":
        parts = []
    elif how == "quoted-name":
        parts = [('form-data; name=data', part_type, value)]
    else:
        parts = [('form-data; name="dätä\ud800"', part_type, value)]
    r = t.render(f"multipart_part:{how}")
    r.body = multipart_body(t.boundary, parts)
    return r


@operator("multipart", 1.5)
def multipart_framing(rng, t, ctx):
    t = as_multipart(t)
    if t is None:
        return None
    name, part_type, value = t.multipart
    part = [(f'form-data; name="{name}"', part_type, value)]
    how = rng.choice(["no-close", "wrong-boundary", "lf-only", "no-boundary-param", "boundary-in-value", "preamble",
                      "quoted-boundary", "long-boundary", "no-disposition", "empty-boundary", "name-brace"])
    r = t.render(f"multipart_framing:{how}")
    ct = f"multipart/form-data; boundary={t.boundary}"
    if how == "no-close":
        r.body = multipart_body(t.boundary, part, close=False)
    elif how == "wrong-boundary":
        ct = "multipart/form-data; boundary=other"
    elif how == "lf-only":
        r.body = multipart_body(t.boundary, part, newline=b"\n")
    elif how == "no-boundary-param":
        ct = "multipart/form-data"
    elif how == "boundary-in-value":
        r.body = multipart_body(t.boundary, [(part[0][0], part_type, value[:10] + b"--" + t.boundary.encode() + value[10:])])
    elif how == "preamble":
        r.body = b"preamble text\r\n" + r.body + b"epilogue"
    elif how == "quoted-boundary":
        ct = f'multipart/form-data; boundary="{t.boundary}"'
    elif how == "long-boundary":
        b = "b" * 3000
        r.body, ct = multipart_body(b, part), f"multipart/form-data; boundary={b}"
    elif how == "no-disposition":  # TorchServe's frontend: 500 ErrorDataDecoderException
        r.body = multipart_body(t.boundary, [(None, part_type, value)])
    elif how == "empty-boundary":  # frontend: 500 StringIndexOutOfBoundsException
        ct = "multipart/form-data; boundary="
    elif how == "name-brace":  # frontend: 500 ArrayIndexOutOfBoundsException
        r.body = multipart_body(t.boundary, [('form-data; name}"data"', part_type, value)])
    r.headers["Content-Type"] = ct
    return r


# text encodings -------------------------------------------------------------------------------------------
@operator("unicode", 4)
def text_encoding(rng, t, ctx):
    if t.model == VISION or t.raw is None:
        return None
    text = t.raw.decode()
    how, body = rng.choice([
        ("lone-surrogate", text.encode() + b"\xed\xa0\x80"), ("overlong", b"\xc0\xaf" + t.raw),
        ("latin-1", "café crème".encode("latin-1")), ("utf-16", text.encode("utf-16")),
        ("cut-multibyte", "naïve é".encode()[:-1]), ("bom", b"\xef\xbb\xbf" + t.raw),
        ("emoji", ("🚀 " + text).encode()), ("controls", bytes(range(32)) + t.raw),
        ("nul-only", b"\x00" * 100), ("rtl", "\u202e".encode() + t.raw), ("combining", ("e" + "\u0301" * 3000).encode()),
        ("cjk", "東京は日本の首都です。".encode() * 50), ("zero-width", "\u200b".encode() * 2000),
        ("noncharacters", "\ufffe\uffff".encode("utf-8", "surrogatepass") * 10)])
    t = replace(t.copy(), raw=body)
    return t.render(f"text_encoding:{how}")


# HTTP --------------------------------------------------------------------------------------------------------
@operator("http", 0.6)
def method(rng, t, ctx):
    r = t.render("method")
    r.method = rng.choice(METHODS)
    r.mutation = f"method:{r.method}"
    if r.method in ("HEAD", "TRACE", "FOO", "get", "post"):
        r.throwaway = True  # answers without a body or rejected by the parser: keep them off shared connections
    return r


@operator("http", 0.8)
def path(rng, t, ctx):
    r = t.render("path")
    m = t.model
    r.path = rng.choice([f"/predictions/nosuch", f"/predictions/{m}/9.9", f"/predictions/{m}/1.0/extra",
                         f"/predictions/{m}/", f"//predictions/{m}", f"/predictions/{m}%00",
                         f"/predictions/{m}?topk=2&x=%zz", f"/v2/models/{m}/versions/1.0/infer",
                         f"/v1/models/{m}:explain", f"/v1/models/{m}", f"/v2/models/{m}/infer/", f"/predictions/..%2f{m}",
                         f"/predictions/{m.upper()}", f"/v2/models/nosuch/infer", f"/v1/models/nosuch:predict",
                         f"/predictions/{m}/" + "v" * 3000, "/ping", "/"])
    r.mutation = f"path:{r.path[:40]}"
    return r


@operator("http", 0.6)
def expect(rng, t, ctx):
    r = t.render("expect")
    value = rng.choice(["100-continue", "foo", "100-continue, foo", "", "200-ok"])
    r.headers["Expect"] = value
    r.mutation = f"expect:{value}"
    r.throwaway = r.may_reset = value.lower() != "100-continue"  # after a 417 the body is read as the next request
    return r


@operator("http", 0.5)
def chunked(rng, t, ctx):
    r = t.render("chunked")
    r.chunked = True
    return r


@operator("http", 0.8)
def odd_headers(rng, t, ctx):
    r = t.render("odd_headers")
    how = rng.choice(["gzip", "many", "long-value", "duplicate-type", "accept", "connection-close", "bytes-after-body",
                      "unicode-value", "range"])
    if how == "gzip":
        r.headers["Content-Encoding"] = "gzip"
    elif how == "many":
        for i in range(60):
            r.headers[f"X-Fuzz-{i}"] = "v" * 50
    elif how == "long-value":
        r.headers["X-Long"] = "a" * rng.choice([4000, 9000])
        r.throwaway = r.may_reset = len(r.headers["X-Long"]) > 8192  # over the parser's 8 KiB: 400, closed at once
    elif how == "duplicate-type":
        r.headers["content-type"] = "x/y"
    elif how == "accept":
        r.headers["Accept"] = "application/x-nothing"
    elif how == "connection-close":
        r.headers["Connection"] = "close"
        r.throwaway = True
    elif how == "bytes-after-body":
        r.headers["Content-Length"] = str(len(r.body))
        r.body += b"GARBAGE\r\n\r\n"
        r.throwaway = r.may_reset = True
    elif how == "unicode-value":
        r.headers["X-Name"] = "caf\xe9"
    else:
        r.headers["Range"] = "bytes=0-10"
    r.mutation = f"odd_headers:{how}"
    return r


# heavy ---------------------------------------------------------------------------------------------------------
HEAVY = {"over-max-request-size": 1, "long-text": 1, "topk-1.4MB": 3, "shape-100k-zeros": 2, "shape-2M-zeros": 2,
         "datatype-1.5MB": 2, "id-7MB": 2}


@operator("heavy", 0.8)
def heavy(rng, t, ctx):
    """Megabyte answers-in-waiting and bodies over the limit (each seen to restart a worker or be cut
    off when an error answer repeated the input)."""
    how = rng.choices(list(HEAVY), list(HEAVY.values()))[0]
    if how == "topk-1.4MB" and not (t.route != "v1" and isinstance(t.doc, dict)):
        return None
    if how in ("shape-100k-zeros", "shape-2M-zeros", "datatype-1.5MB", "id-7MB") and v2_input(t) is None:
        return None
    t = t.copy()
    if how == "topk-1.4MB" and t.route == "v2":
        t.doc["parameters"] = dict(t.doc.get("parameters") or {}, topk="9" * 1_400_000)
    elif how == "topk-1.4MB":
        t.doc["topk"] = "9" * 1_400_000
    elif how == "shape-100k-zeros":
        v2_input(t)["shape"] = [0] * 100_000
    elif how == "shape-2M-zeros":
        v2_input(t)["shape"] = [0] * 2_000_000
    elif how == "datatype-1.5MB":
        v2_input(t)["datatype"] = "B" * 1_500_000
    elif how == "id-7MB":
        t.doc["id"] = "i" * (7 * 1024 * 1024)
    r = t.render(f"heavy:{how}")
    if how == "over-max-request-size":
        r.body = r.body + b"\0" * (ctx["max_request_size"] + 1 - len(r.body))
        r.throwaway = True
    elif how == "long-text":
        r.body = b"word " * 220_000
        r.headers["Content-Type"] = "text/plain"
    return r


# ---- the sequence ----------------------------------------------------------------------------------------------
def job(seed: int, index: int, pool: Pool, ctx: dict) -> Request:
    """Request `index` of the run: a good one every GOOD_EVERY-th (cycling through the routes and
    models, and through each one's forms and inputs), otherwise a template of a route and model chosen
    evenly, changed by one operator, all chosen by the request's own generator."""
    pairs = sorted(pool)
    if index % GOOD_EVERY == 0:
        n = index // GOOD_EVERY
        forms_of = pool[pairs[n % len(pairs)]]
        return forms_of[(n // len(pairs)) % len(forms_of)].render()
    rng = random.Random(f"{seed}:{index}")
    names = list(OPERATORS)
    weights = [OPERATORS[n][1] for n in names]
    while True:
        template = rng.choice(pool[rng.choice(pairs)])
        name = rng.choices(names, weights)[0]
        request = OPERATORS[name][2](rng, template, ctx)
        if request is not None:
            return request


def family(request: Request) -> str:
    name = request.mutation.split(":", 1)[0]
    return OPERATORS[name][0] if name in OPERATORS else "good"


def main() -> int:
    sys.path.insert(0, __file__.rsplit("/", 1)[0])
    from support import encode, photo

    parser = argparse.ArgumentParser(description="Write request JOB of a fuzz run (raw HTTP) to stdout or --out.")
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--job", type=int, required=True)
    parser.add_argument("--max-request-size", type=int, default=20971520)
    parser.add_argument("--token", default=None, help="an inference key to put in the request")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    request = job(args.seed, args.job, templates(encode(photo("chelsea"))), {"max_request_size": args.max_request_size})
    raw = request.raw(token=args.token)
    print(f"# {request.route} {request.model} {request.form} {request.mutation}: {len(raw)} bytes", file=sys.stderr)
    if args.out:
        with open(args.out, "wb") as f:
            f.write(raw)
    else:
        sys.stdout.buffer.write(raw)
    return 0


if __name__ == "__main__":
    sys.exit(main())
