"""Test videos made with PyAV from the real photos (tests/data): each photo held for a while, then the next.

`make_video` encodes them as H.264 in MP4 or Matroska, or VP8 in WebM; `decoded_frames` decodes a video as the
server should (the same FFmpeg, RGB24 frames, the frame at or after each 1/sample_fps instant), so a test can send
each such frame as a lossless PNG photo and expect the very answer the video's line for it carries.
"""

import io
from typing import List, Sequence, Tuple

import av
import torch

from support import photo
from tskit.clips import CODECS, encode_video


def make_video(names: Sequence[str], seconds_each: float = 1.0, fps: int = 10, container: str = "mp4",
               size: Tuple[int, int] = (320, 240)) -> bytes:
    """The photos `names`, each shown for `seconds_each` at `fps`, resized to `size` (width, height)."""
    return encode_video((photo(name) for name in names), seconds_each, fps, container, size)


def content_type(container: str) -> str:
    return CODECS[container][2]


def decoded_frames(data: bytes, sample_fps: float = 1.0) -> List[Tuple[float, torch.Tensor]]:
    """(time, RGB uint8 [3, H, W]) of each answered frame, decoded as the server decodes."""
    frames, next_time = [], 0.0
    with av.open(io.BytesIO(data)) as video:
        for frame in video.decode(video=0):
            seconds = float(frame.time)
            if seconds + 1e-6 < next_time:
                continue
            frames.append((seconds, torch.from_numpy(frame.to_ndarray(format="rgb24")).permute(2, 0, 1)))
            next_time = seconds + 1.0 / sample_fps if sample_fps else 0.0
    return frames
