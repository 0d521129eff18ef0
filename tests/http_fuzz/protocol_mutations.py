"""Mutations of the request around its document: content types, multipart (field names, parts, boundaries,
dispositions), text encodings, HTTP (methods, paths, `Expect`, chunked framing, odd headers), and the heavy
ones (megabyte strings and shapes, bodies over `max_request_size`)."""

from dataclasses import replace
from typing import Optional

from .requests_model import VISION, Template, multipart_body, operator
from .v2_mutations import v2_input

# ---- specimens ----------------------------------------------------------------------------------------
CONTENT_TYPES = [None, "", "x/y", "image/png", "image/jpeg", "text/plain", "application/json", "application/octet-stream",
                 "text/plain; charset=latin-1", "application/json; charset=utf-16", "multipart/form-data",
                 "multipart/form-data; boundary=nope", "application/x-www-form-urlencoded", "IMAGE/JPEG", "*/*",
                 "application/json" + "; a=b" * 400, ";;;", "text/", "application/vnd.api+json",
                 "text/plain; charset=\"", "image/svg+xml", "application/grpc"]
METHODS = ["GET", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "TRACE", "FOO", "get", "post"]


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
    r.path = rng.choice(["/predictions/nosuch", f"/predictions/{m}/9.9", f"/predictions/{m}/1.0/extra",
                         f"/predictions/{m}/", f"//predictions/{m}", f"/predictions/{m}%00",
                         f"/predictions/{m}?topk=2&x=%zz", f"/v2/models/{m}/versions/1.0/infer",
                         f"/v1/models/{m}:explain", f"/v1/models/{m}", f"/v2/models/{m}/infer/", f"/predictions/..%2f{m}",
                         f"/predictions/{m.upper()}", "/v2/models/nosuch/infer", "/v1/models/nosuch:predict",
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
