"""Mutations of a video sent to the vision model (handlers/video.py): a small clip's bytes flipped, cut, spliced
or given a hostile header; its JSON options wrong; a video content type on a photo. Each must get a 4xx before
any frame, an NDJSON answer (with `error` lines for what broke while decoding), never a 5xx or a restart."""

import base64
import functools
import json
import struct

from .protocol_mutations import heavy  # noqa: F401  (registers the operators before this module's)
from .requests_model import VISION, operator

VIDEO_TYPES = ["video/mp4", "video/webm", "video/x-matroska", "video/avi", "video/", "video/mp4; codecs=avc1"]


@functools.lru_cache(maxsize=None)
def clips():
    """A 2 s MP4 (H.264) and WebM (VP8) of two photos, 160x120 at 4 fps: small enough to mutate every way."""
    from videos import make_video  # tests/: on the path under pytest and for tests/http_mutations.py
    return {"mp4": make_video(("chelsea", "coffee"), 1.0, 4, "mp4", size=(160, 120)),
            "webm": make_video(("chelsea", "coffee"), 1.0, 4, "webm", size=(160, 120))}


def damaged(rng, data: bytes) -> bytes:
    how = rng.choice(["flips", "truncate", "splice", "huge-size", "zeros"])
    body = bytearray(data)
    if how == "flips":
        for _ in range(rng.choice([1, 4, 32, 256])):
            body[rng.randrange(len(body))] ^= rng.randrange(1, 256)
    elif how == "truncate":
        body = body[: rng.randrange(len(body))]
    elif how == "splice":
        i, j = sorted(rng.sample(range(len(body)), 2))
        body = body[:i] + body[j:] + body[i:j]
    elif how == "huge-size":  # every 16-bit big-endian 160 / 120 (the frame size in headers) made 65535
        for old in (struct.pack(">H", 160), struct.pack(">H", 120)):
            body = body.replace(old, b"\xff\xff")
    else:
        start = rng.randrange(len(body))
        body[start:start + 2000] = bytes(len(body[start:start + 2000]))
    return bytes(body)


@operator("video", 12)  # weighty: it applies to 1 template in 30 (the vision model's raw and JSON)
def video_body(rng, t, ctx):
    """The clip, damaged, sent raw or as JSON in place of the photo."""
    if t.model != VISION or not t.route.startswith("predictions") or t.form not in ("raw", "json"):
        return None
    container = rng.choice(["mp4", "webm"])
    data = damaged(rng, clips()[container])
    r = t.render(f"video_body:{container}")
    if t.form == "raw":
        r.body, r.headers["Content-Type"] = data, rng.choice(VIDEO_TYPES)
    else:
        document = {"video": base64.b64encode(data).decode(), "sample_fps": rng.choice([0, 1, 2.5]),
                    "stream": rng.choice([True, False])}
        r.body = json.dumps(document).encode()
    return r


@operator("video", 6)
def video_options(rng, t, ctx):
    """A whole clip with a wrong option, or a photo labelled as a video."""
    if t.model != VISION or not t.route.startswith("predictions") or t.form not in ("raw", "json"):
        return None
    r = t.render("video_options")
    if t.form == "raw":
        r.headers["Content-Type"] = rng.choice(VIDEO_TYPES)  # the cat JPEG, said to be a video
        return r
    bad = rng.choice([{"sample_fps": -1}, {"sample_fps": "x"}, {"sample_fps": 1e9}, {"max_frames": 0},
                      {"max_frames": 2 ** 70}, {"stream": "yes"}, {"video": 5}, {"video": "@@@"}, {"topk": 0}])
    document = {"video": base64.b64encode(clips()["mp4"]).decode(), **bad}
    r.body = json.dumps(document).encode()
    return r
