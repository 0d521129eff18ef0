"""Videos made from pictures with PyAV, for the bench's clip (benchkit.bench_video) and the tests' (tests/videos.py).

Each picture is shown for `seconds_each` at `fps`, resized to `size` (width, height): H.264 in MP4 or Matroska,
VP8 in WebM.
"""

import io
from fractions import Fraction
from typing import Iterable, Tuple

import av
import numpy as np
from PIL import Image

CODECS = {"mp4": ("mp4", "libx264", "video/mp4"), "mkv": ("matroska", "libx264", "video/x-matroska"),
          "webm": ("webm", "libvpx", "video/webm")}


def encode_video(pictures: Iterable[np.ndarray], seconds_each: float = 1.0, fps: int = 10, container: str = "mp4",
                 size: Tuple[int, int] = (320, 240)) -> bytes:
    muxer, codec, _ = CODECS[container]
    out = io.BytesIO()
    with av.open(out, mode="w", format=muxer) as video:
        stream = video.add_stream(codec, rate=fps)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.time_base = Fraction(1, fps)
        for picture in pictures:
            rgb = np.asarray(Image.fromarray(picture).convert("RGB").resize(size))
            for _ in range(int(seconds_each * fps)):
                for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                    video.mux(packet)
        for packet in stream.encode():
            video.mux(packet)
    return out.getvalue()
