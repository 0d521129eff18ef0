"""The image kinds' video glue (handlers/video_batch_handler.py) with a real ts Context, step by step as TorchServe's
continuous batching calls it: a video's frames go in steps beside new photos, each step's lines marked "more to
come" until the last; each frame's line holds the answer the same picture gets as a photo; a video whose client
left is dropped; a video over a limit is a 413 before any frame."""

import base64
import json

import pytest

from handlers.image_classifier_handler import ImageClassifierHandler
from support import encode, extract_archive, make_context, photo, request_batch
from videos import decoded_frames, make_video

NAMES = ("chelsea", "coffee", "astronaut") * 4  # 12 s, one answered frame a second


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    model_dir, manifest, config = extract_archive("mobilenet_v2.mar", str(tmp_path_factory.mktemp("mobilenet_v2")))
    return model_dir, manifest, dict(config, continuousBatching=True)


@pytest.fixture(scope="module")
def handler(archive):
    handler = ImageClassifierHandler()
    handler.initialize(make_context(*archive))
    return handler


@pytest.fixture(scope="module")
def clip():
    return make_video(NAMES, 1.0, 5, "mp4")


def step(handler, archive, requests):
    """One TorchServe call: `requests` are (request id, key, body, content type); a running video's row is empty
    (TorchServe does not send its body again). Returns per request (body, status, stop flag)."""
    context = make_context(*archive)
    rows = request_batch(context, [(key, body, ctype) for _, key, body, ctype in requests])
    for idx, (seq, key, _, _) in enumerate(requests):
        if key is None:
            rows[idx] = {}
    context.request_ids = {idx: seq for idx, (seq, *_) in enumerate(requests)}
    outputs = handler.handle(rows, context)
    stops = context.stopping_criteria or {}
    return [(out, context.get_response_status(i)[0], stops[i](out) if i in stops else None)
            for i, out in enumerate(outputs)]


def lines(body: bytes):
    return [json.loads(line) for line in body.decode().splitlines()]


def photo_answer(handler, archive, image):
    [(body, status, _)] = step(handler, archive, [("p", "body", encode(image.permute(1, 2, 0).numpy(), "PNG"),
                                                   "image/png")])
    assert status == 200
    return json.loads(body)


def test_a_video_goes_in_steps_beside_photos(handler, archive, clip):
    cat = encode(photo("chelsea"))
    first = step(handler, archive, [("v", "body", clip, "video/mp4"), ("p1", "body", cat, "image/jpeg")])
    (video_body, status, stop), (photo_body, photo_status, photo_stop) = first
    assert (status, stop, photo_status, photo_stop) == (200, False, 200, None)
    assert [line["frame"] for line in lines(video_body)] == list(range(8))  # videoFramesPerStep
    second = step(handler, archive, [("v", None, None, None), ("p2", "body", cat, "image/jpeg")])
    assert second[0][2] is True and second[1][1:] == (200, None)
    rest = lines(second[0][0])
    assert [line.get("frame") for line in rest] == [8, 9, 10, 11, None]
    assert rest[-1] == {"frames": 12, "done": True}
    every = lines(video_body) + rest[:-1]
    for line, (seconds, image) in zip(every, decoded_frames(clip, 1.0)):
        assert line["time"] == seconds
        assert line["predictions"] == photo_answer(handler, archive, image)["predictions"]
    assert handler.videos == {}
    alone = step(handler, archive, [("p", "body", cat, "image/jpeg")])[0][0]  # (every call lists the running
    assert json.loads(photo_body) == json.loads(alone)  # videos: this one's now would have dropped the video)


def test_a_video_asked_whole_is_answered_in_its_first_call(handler, archive, clip):
    document = {"video": base64.b64encode(clip).decode(), "stream": False, "topk": 1, "sample_fps": 0.5}
    [(body, status, stop)] = step(handler, archive, [("w", "body", document, "application/json")])
    assert (status, stop) == (200, None)  # an ordinary reply: one NDJSON body
    answer = lines(body)
    assert [line.get("time") for line in answer] == [0.0, 2.0, 4.0, 6.0, 8.0, 10.0, None]
    assert all(len(line["predictions"]) == 1 for line in answer[:-1]) and answer[-1] == {"frames": 6, "done": True}


def test_a_video_whose_client_left_is_dropped(handler, archive, clip):
    step(handler, archive, [("gone", "body", clip, "video/mp4")])
    assert list(handler.videos) == ["gone"]
    [(_, status, _)] = step(handler, archive, [("p3", "body", encode(photo("coffee")), "image/jpeg")])
    assert status == 200 and handler.videos == {}


def test_limits_answer_before_any_frame(handler, archive, clip):
    document = {"video": base64.b64encode(clip).decode(), "sample_fps": 0}  # 60 frames: fine
    long = make_video(("coffee",), 700.0 / 25, 25, "mp4", size=(64, 48))  # 28 s of 25 fps: 700 frames
    handler.video_limits = handler.video_limits.__class__(20, 3600, 8_294_400, 16 * 2**30)
    try:
        answers = step(handler, archive, [("ok", "body", document, "application/json"),
                                          ("long", "body", long, "video/mp4")])
    finally:
        handler.video_limits = handler.video_limits.__class__(600, 3600, 8_294_400, 16 * 2**30)
    assert answers[0][1:] == (200, False)
    assert answers[1][1] == 413 and json.loads(answers[1][0])["type"] == "VideoTooLarge"
    assert "maxVideoSeconds 20" in json.loads(answers[1][0])["message"]
    handler.forget(["ok"])


class Socket:
    """TorchServe's socket to the frontend, as the worker's intermediate responses write to it."""

    def __init__(self):
        self.messages = []

    def sendall(self, data: bytes) -> None:
        self.messages.append(data)


def test_without_continuous_batching_a_video_streams_within_its_call(handler, archive, clip):
    """Several workers (no continuous batching): the call holds the video, its steps' lines sent as intermediate
    responses in order, the last step's lines and the done line as the final reply, marked last."""
    context = make_context(*archive)
    rows = request_batch(context, [("body", clip, "video/mp4")])
    context.request_ids, context.cl_socket = {0: "held"}, Socket()
    handler.streaming = False
    try:
        [body] = handler.handle(rows, context)
    finally:
        handler.streaming = True
    sent = [m for m in context.cl_socket.messages]
    assert len(sent) == 1 and b'{"frame": 0, ' in sent[0] and b'"frame": 7, ' in sent[0] and b'"frame": 8, ' not in sent[0]
    assert [line.get("frame") for line in lines(body)] == [8, 9, 10, 11, None]
    assert context.stopping_criteria[0](body) is True and handler.videos == {}
