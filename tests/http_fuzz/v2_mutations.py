"""Mutations of the KServe v2 protocol (shapes, datatypes, data, inputs, parameters, outputs, ids) and of
its binary extension (`Inference-Header-Content-Length` values, element length prefixes, `binary_data_size`)."""

import copy
import json
import struct
from typing import Optional

from .json_mutations import HUGE_DIGITS, JSON_VALUES, THOUSANDS, raw_value
from .requests_model import HEADER_LENGTH, Template, operator

# ---- specimens ----------------------------------------------------------------------------------------
SHAPES = [[], [0], [-1], [2], [1, 1], [1, 0], [0, 1], [1, 1, 1, 1], [2 ** 63], [2 ** 64], [-2 ** 63], ["1"],
          [1.0], [True], None, "1", {"a": 1}, [[1]], [1, -1], [0] * 1000, [1] * 1000, [10 ** 18, 10 ** 18]]
DATATYPES = ["FP32", "INT64", "BOOL", "UINT8", "FP16", "bytes", "Bytes", "BYTES ", "", None, 5, ["BYTES"],
             {"t": "BYTES"}, "B" * 300, "STRING", "BYTES\x00"]
HEADER_LENGTHS = ["0", "-1", "abc", "", " ", "1e3", "9" * 30, "0x10", "+{n}", " {n}", "{n} ", "{n_1}", "{n1}",
                  "{total}", "{total1}", "{n},{n}", "3.5", "NaN", "-0", "00000{n}"]


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
