"""A video request: its options, its container checked from the header, and its frames decoded lazily with PyAV.

Any image kind takes a video (MP4, WebM or Matroska; raw, or JSON {"video": "<base64>", "sample_fps": F,
"max_frames": N, "stream": bool}). Everything that can be known from the header is checked before any frame is
decoded (VideoLimits: duration, answered frames, pixels per frame, decoded bytes): a request past a limit is a
413, a container that cannot be read or holds no video a 400, another container a 415. What the header cannot
promise (frames that grow, a duration it does not declare) is checked again frame by frame while decoding:
past a limit the stream ends with an `error` line.

Why the demuxer is chosen by us, never probed: FFmpeg's probe would also try HLS playlists, concat lists and
image sequences, whose demuxers open other files and URLs; only the three containers the contract names are
opened, each by its own demuxer. Decoding uses one thread: the worker's cores are the model's.
"""

import io
import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Iterator, List, NamedTuple, Optional, Union

import av
import torch

from handlers.request_errors import InvalidField, RequestError, UnsupportedMediaType, shown
from handlers.request_payload import count_error, decode_base64_field, is_count, media_type

VIDEO_TYPES = {"video/mp4": "mp4", "video/webm": "matroska", "video/x-matroska": "matroska",
               "video/matroska": "matroska"}
# the decoders a video stream may need; anything else is refused before a packet is decoded
VIDEO_CODECS = {"h264", "hevc", "vp8", "vp9", "av1", "mpeg4", "mjpeg", "libdav1d", "libvpx", "libvpx-vp9"}
MAX_FRAME_ERRORS = 8  # packets that fail to decode before the stream gives up on the video
NDJSON = "application/x-ndjson"


class InvalidVideo(RequestError):
    """The body is not a readable MP4, WebM or Matroska video."""


class VideoTooLarge(RequestError):
    status = 413


@dataclass(frozen=True)
class VideoLimits:
    max_seconds: float        # the declared (or decoded) duration
    max_frames: int           # frames answered (sampled), per request
    max_frame_pixels: int     # width x height of one frame
    max_decoded_bytes: int    # every frame decoded (sampled or not) as RGB: frames x width x height x 3


class VideoOptions(NamedTuple):
    sample_fps: float         # frames answered per second of video; 0: every frame
    max_frames: Optional[int]  # at most this many frames answered
    stream: bool              # NDJSON lines as frames are done (else one answer with every line)


class VideoInput(NamedTuple):
    data: bytes
    demuxer: str
    options: VideoOptions
    document: Optional[dict]  # the JSON body (the kind's own per-frame options), None for a raw body


class Frame(NamedTuple):
    index: int                # the answered frame's number (0, 1, ...)
    time: float               # seconds from the video's start
    image: Optional[torch.Tensor]  # RGB uint8 [3, H, W]; None with an error
    error: Optional[RequestError] = None


def video_input(body, content_type: Optional[str]) -> Optional[VideoInput]:
    """The video of a request, or None when the request is not a video (then it is a photo)."""
    kind = media_type(content_type)
    if isinstance(body, dict):
        if "video" not in body:
            return None
        data = decode_base64_field(body, "video")
        return VideoInput(data, sniff_demuxer(data), read_options(body), body)
    if kind.startswith("video/"):
        if kind not in VIDEO_TYPES:
            raise UnsupportedMediaType(f"{shown(kind)} videos are not served; send {', '.join(sorted(VIDEO_TYPES))}")
        if not isinstance(body, (bytes, bytearray)) or not body:
            raise InvalidVideo("the request body is empty: send the video bytes")
        return VideoInput(bytes(body), VIDEO_TYPES[kind], VideoOptions(1.0, None, True), None)
    return None


def sniff_demuxer(data: bytes) -> str:
    """The demuxer of a base64 video, from its first bytes: ISO BMFF (MP4) or EBML (WebM, Matroska)."""
    if data[4:8] == b"ftyp":
        return "mp4"
    if data[:4] == b"\x1a\x45\xdf\xa3":
        return "matroska"
    raise UnsupportedMediaType("the JSON field 'video' is not an MP4, WebM or Matroska file")


def read_options(document: dict) -> VideoOptions:
    fps = document.get("sample_fps", 1)
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not 0 <= fps <= 1000:
        raise InvalidField(f"JSON field 'sample_fps' must be a number from 0 to 1000, got {shown(fps)}")
    max_frames = document.get("max_frames")
    if max_frames is not None and not is_count(max_frames):
        raise InvalidField(count_error("JSON field 'max_frames'", max_frames))
    stream = document.get("stream", True)
    if not isinstance(stream, bool):
        raise InvalidField(f"JSON field 'stream' must be true or false, got {shown(stream)}")
    return VideoOptions(float(fps), max_frames, stream)


class VideoReader:
    """One video's frames, decoded as they are asked for; the header's claims checked when it opens."""

    def __init__(self, video: VideoInput, limits: VideoLimits):
        self.limits = limits
        self.options = video.options
        try:
            self.container = av.open(io.BytesIO(video.data), format=video.demuxer, metadata_errors="ignore")
        except (av.FFmpegError, ValueError, OSError) as err:
            raise InvalidVideo(f"the video cannot be read ({first_line(err)})") from None
        try:
            self.stream = self.open_stream()
            self.duration = self.declared_seconds()
            self.check_header()
        except BaseException:
            self.container.close()
            raise
        self.frames = self.sampled()
        self.answered = 0
        self.done = False

    def open_stream(self):
        if not self.container.streams.video:
            raise InvalidVideo("the file holds no video stream")
        stream = self.container.streams.video[0]
        codec = stream.codec_context
        if codec is None or codec.name not in VIDEO_CODECS:
            raise InvalidVideo(f"video codec {shown(codec.name if codec else None)} is not served; "
                               f"send H.264, HEVC, VP8, VP9, AV1 or MPEG-4")
        codec.thread_count = 1
        return stream

    def declared_seconds(self) -> Optional[float]:
        if self.stream.duration is not None and self.stream.time_base is not None:
            return float(self.stream.duration * self.stream.time_base)
        if self.container.duration is not None:
            return self.container.duration / av.time_base
        return None  # unknown (a live recording): checked while decoding

    def rate(self) -> float:
        rate = self.stream.average_rate or self.stream.guessed_rate or Fraction(30)
        return float(rate)

    def check_header(self) -> None:
        limits, codec = self.limits, self.stream.codec_context
        width, height = codec.width, codec.height
        if width < 1 or height < 1:
            raise InvalidVideo(f"the video declares an empty frame size {width}x{height}")
        if width * height > limits.max_frame_pixels:
            raise VideoTooLarge(f"frames of {width}x{height} are above this model's maxFramePixels "
                                f"{limits.max_frame_pixels:,}: scale the video down before sending")
        seconds = self.duration or 0.0
        if seconds > limits.max_seconds:
            raise VideoTooLarge(f"the video lasts {seconds:.1f} s, above this model's maxVideoSeconds "
                                f"{limits.max_seconds:g}: send a shorter clip")
        answered = self.expected_answers(seconds)
        if answered > limits.max_frames:
            raise VideoTooLarge(f"{answered:,} frames would be answered, above this model's maxVideoFrames "
                                f"{limits.max_frames:,}: lower sample_fps or set max_frames")
        decoded = self.decoded_seconds(seconds) * self.rate() * width * height * 3
        if decoded > limits.max_decoded_bytes:
            raise VideoTooLarge(f"decoding it takes {decoded / 2**20:,.0f} MiB of frames, above this model's "
                                f"maxVideoDecodedBytes {limits.max_decoded_bytes / 2**20:,.0f} MiB")

    def expected_answers(self, seconds: float) -> int:
        fps = self.options.sample_fps or self.rate()
        answered = max(1, math.ceil(seconds * fps - 1e-6))
        return min(answered, self.options.max_frames) if self.options.max_frames else answered

    def decoded_seconds(self, seconds: float) -> float:
        """How much of the video is decoded: up to the last answered frame."""
        if self.options.max_frames and self.options.sample_fps:
            return min(seconds, self.options.max_frames / self.options.sample_fps)
        return seconds

    def take(self, count: int) -> List[Frame]:
        """The next `count` answered frames (fewer at the end: then `done`)."""
        taken: List[Frame] = []
        while len(taken) < count and not self.done:
            frame = next(self.frames, None)
            if frame is None:
                self.close()
            else:
                taken.append(frame)
        return taken

    def sampled(self) -> Iterator[Frame]:
        """Decoded frames, those at each 1/sample_fps instant kept, checked as they come."""
        step = 1.0 / self.options.sample_fps if self.options.sample_fps else 0.0
        next_time, decoded_bytes = 0.0, 0
        for item in self.decoded():
            if isinstance(item, RequestError):
                yield Frame(self.answered, next_time, None, item)
                continue
            decoded_bytes += item.width * item.height * 3
            stop = self.runtime_limit(item, decoded_bytes)
            if stop is not None:  # the last line: what the header promised did not hold
                yield Frame(self.answered, frame_seconds(item), None, stop)
                return
            seconds = frame_seconds(item)
            if seconds + 1e-6 < next_time:
                continue
            image = torch.from_numpy(item.to_ndarray(format="rgb24")).permute(2, 0, 1)
            yield Frame(self.answered, seconds, image)
            self.answered += 1
            next_time = seconds + step if step else 0.0
            if self.options.max_frames and self.answered >= self.options.max_frames:
                return

    def decoded(self) -> Iterator[Union["av.VideoFrame", RequestError]]:
        errors = 0
        for packet in self.container.demux(self.stream):
            try:
                frames = packet.decode()
            except (av.FFmpegError, ValueError) as err:
                errors += 1
                yield InvalidVideo(f"a packet of the video cannot be decoded ({first_line(err)})")
                if errors >= MAX_FRAME_ERRORS:
                    return
                continue
            yield from frames

    def runtime_limit(self, frame, decoded_bytes: int) -> Optional[RequestError]:
        """What the header promised, held against what decoding gives."""
        limits = self.limits
        if frame.width * frame.height > limits.max_frame_pixels:
            return VideoTooLarge(f"a frame of {frame.width}x{frame.height} is above maxFramePixels "
                                 f"{limits.max_frame_pixels:,} (the header declared a smaller size)")
        if frame_seconds(frame) > limits.max_seconds:
            return VideoTooLarge(f"the video runs past maxVideoSeconds {limits.max_seconds:g}")
        if decoded_bytes > limits.max_decoded_bytes:
            return VideoTooLarge(f"the decoded frames passed maxVideoDecodedBytes "
                                 f"{limits.max_decoded_bytes / 2**20:,.0f} MiB")
        return None

    def close(self) -> None:
        if not self.done:
            self.done = True
            self.container.close()


def frame_seconds(frame) -> float:
    return float(frame.time) if frame.time is not None else 0.0


def first_line(err: Exception) -> str:
    """FFmpeg's own words ("Invalid data found when processing input"), without its errno and file name."""
    text = getattr(err, "strerror", None) or str(err) or type(err).__name__
    return text.splitlines()[0][:160]
