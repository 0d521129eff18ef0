"""handlers/video.py without a server: options, the demuxer chosen (never probed), the header's limits before
any frame, frames sampled as tests/videos.py decodes them, damaged packets and lying headers while decoding."""

import base64
import io

import av
import numpy as np
import pytest

from handlers.request_errors import InvalidField, UnsupportedMediaType
from support import encode, photo
from handlers.video import InvalidVideo, VideoInput, VideoLimits, VideoOptions, VideoReader, VideoTooLarge, video_input
from videos import content_type, decoded_frames, make_video

ROOMY = VideoLimits(max_seconds=60, max_frames=100, max_frame_pixels=1920 * 1080, max_decoded_bytes=2**30)
NAMES = ("chelsea", "coffee", "astronaut")


@pytest.fixture(scope="module")
def clips():
    return {container: make_video(NAMES, 1.0, 10, container) for container in ("mp4", "mkv", "webm")}


def read_all(reader: VideoReader, share: int = 2):
    frames = []
    while not reader.done:
        frames += reader.take(share)
    return frames


@pytest.mark.parametrize("container", ["mp4", "mkv", "webm"])
def test_each_container_gives_the_frames_ffmpeg_decodes(clips, container):
    data = clips[container]
    reader = VideoReader(video_input(data, content_type(container)), ROOMY)
    frames = read_all(reader)
    expected = decoded_frames(data, 1.0)
    assert [(f.index, f.time) for f in frames] == [(i, t) for i, (t, _) in enumerate(expected)] == [
        (0, 0.0), (1, 1.0), (2, 2.0)]
    for frame, (_, image) in zip(frames, expected):
        assert frame.error is None and frame.image.shape == (3, 240, 320)
        assert frame.image.equal(image)


def test_sample_fps_and_max_frames(clips):
    data = clips["mp4"]
    every = read_all(VideoReader(VideoInput(data, "mp4", VideoOptions(0, None, True), None), ROOMY), share=7)
    assert [f.index for f in every] == list(range(30)) and every[11].time == pytest.approx(1.1)
    four = read_all(VideoReader(VideoInput(data, "mp4", VideoOptions(2, 4, True), None), ROOMY))
    assert [f.time for f in four] == [0.0, 0.5, 1.0, 1.5]


def test_json_options_are_read_and_checked(clips):
    b64 = base64.b64encode(clips["webm"]).decode()
    video = video_input({"video": b64, "sample_fps": 0, "max_frames": 5, "stream": False}, "application/json")
    assert (video.demuxer, video.options) == ("matroska", VideoOptions(0.0, 5, False))
    assert video_input({"image": b64}, "application/json") is None  # a photo
    assert video_input(encode(photo("chelsea")), "image/jpeg") is None
    for bad, message in (({"sample_fps": -1}, "sample_fps"), ({"sample_fps": "2"}, "sample_fps"),
                         ({"max_frames": 0}, "max_frames"), ({"stream": "yes"}, "stream")):
        with pytest.raises(InvalidField, match=message):
            video_input({"video": b64, **bad}, "application/json")


def test_only_the_three_containers_are_opened():
    with pytest.raises(UnsupportedMediaType, match="video/avi"):
        video_input(b"RIFF....AVI LIST", "video/avi")
    hls = base64.b64encode(b"#EXTM3U\n#EXTINF:1,\nfile:///etc/passwd\n").decode()
    with pytest.raises(UnsupportedMediaType, match="not an MP4, WebM or Matroska"):
        video_input({"video": hls}, "application/json")
    with pytest.raises(InvalidVideo, match="cannot be read"):  # a playlist sent as MP4 is read as MP4: refused
        VideoReader(video_input(b"#EXTM3U\n#EXTINF:1,\nfile:///etc/passwd\n", "video/mp4"), ROOMY)
    with pytest.raises(InvalidVideo, match="empty"):
        video_input(b"", "video/mp4")


def test_a_file_without_video_is_refused():
    out = io.BytesIO()
    with av.open(out, mode="w", format="matroska") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), dtype=np.int16), format="s16", layout="mono")
        frame.sample_rate, frame.pts = 8000, 0
        for packet in list(stream.encode(frame)) + list(stream.encode()):
            container.mux(packet)
    with pytest.raises(InvalidVideo, match="no video stream"):
        VideoReader(video_input(out.getvalue(), "video/x-matroska"), ROOMY)


@pytest.mark.parametrize("limits, options, message", [
    (VideoLimits(2.5, 100, 10**7, 2**30), VideoOptions(1, None, True), "lasts 3.0 s, above this model's maxVideoSeconds 2.5"),
    (VideoLimits(60, 2, 10**7, 2**30), VideoOptions(1, None, True), "3 frames would be answered, above this model's maxVideoFrames 2"),
    (VideoLimits(60, 100, 320 * 239, 2**30), VideoOptions(1, None, True), "frames of 320x240 are above"),
    (VideoLimits(60, 100, 10**7, 320 * 240 * 3 * 29), VideoOptions(1, None, True), "maxVideoDecodedBytes"),
])
def test_the_header_is_held_to_the_limits_before_any_frame(clips, limits, options, message):
    with pytest.raises(VideoTooLarge, match=message) as refused:
        VideoReader(VideoInput(clips["mp4"], "mp4", options, None), limits)
    assert refused.value.status == 413


def test_max_frames_bounds_what_is_decoded(clips):
    # 30 frames are over the decoded budget, but 2 answered frames at 1 fps need the first 2 s only
    limits = VideoLimits(60, 100, 10**7, 320 * 240 * 3 * 25)
    frames = read_all(VideoReader(VideoInput(clips["mp4"], "mp4", VideoOptions(1, 2, True), None), limits))
    assert [f.index for f in frames] == [0, 1]


def test_truncated_and_damaged_videos(clips):
    data = clips["mkv"]
    with pytest.raises(InvalidVideo):
        VideoReader(video_input(data[:60], "video/x-matroska"), ROOMY)
    # the first half of the file: the frames it holds, then the end (Matroska streams need no index)
    frames = read_all(VideoReader(video_input(data[: len(data) // 2], "video/x-matroska"), ROOMY))
    assert [f.error for f in frames] == [None] * len(frames) and 1 <= len(frames) <= 2
    damaged = bytearray(data)
    damaged[len(data) // 3: len(data) // 3 + 4000] = bytes(4000)  # zeros over packets in the middle
    frames = read_all(VideoReader(video_input(bytes(damaged), "video/x-matroska"), ROOMY))
    assert frames[0].error is None and frames[0].image is not None


def test_a_frame_past_the_limits_while_decoding_ends_the_video(clips):
    reader = VideoReader(video_input(clips["mp4"], "video/mp4"), ROOMY)
    reader.limits = VideoLimits(1.5, 100, 10**7, 2**30)  # as if the header had declared a shorter video
    frames = read_all(reader)
    assert [f.index for f in frames] == [0, 1, 2]  # the error takes the next frame's number
    assert frames[-1].image is None and isinstance(frames[-1].error, VideoTooLarge)
    assert "runs past maxVideoSeconds 1.5" in frames[-1].error.message
