"""Mutations of the bytes of any body (flips, truncation, splices, emptied) and of JSON documents (wrong
types, dropped and unknown keys, broken syntax, deep nesting, huge numbers, long strings, unicode with lone
surrogates), with the specimens they draw from and the helpers to reach into a document."""

import copy
import json
from typing import Any, List, Tuple

from .requests_model import HEADER_LENGTH, Template, operator

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
