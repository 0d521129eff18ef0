"""The glue of the image kinds: photos as BatchHandler answers them, and videos answered frame by frame.

A request whose body is a video (video.py: MP4, WebM, Matroska, raw or JSON {"video": ...}) is checked from
its header (a 4xx before any frame) and then answered in steps. With the archive's `continuousBatching: true`,
TorchServe calls `handle` once per step with every running request (a running video's body is not sent again:
its reader is kept here) plus new ones: each step decodes the next frames of every running video, runs them in
ONE forward pass with the step's photos, and answers each video with the NDJSON lines of its frames done
(`{"frame": i, "time": s, ...the kind's answer...}`, an `error` object for a frame that failed, then
`{"frames": n, "done": true}`). So a long video never holds the worker: a photo waits at most one step.
How each reply is marked (TorchServe 0.12, measured with the text generator): a video answered in its first
step is an ordinary reply (a first reply marked last hangs the client); the others are "more to come" until
their last. Without continuous batching (a model of several workers: TorchServe 0.12 stalls their streams) the
video is answered within its call, each step's lines sent at once as TorchServe's intermediate responses (its
worker stays with it; each video held on a thread of its own). Over gRPC (0.12 drops a gRPC stream after one
step) or with `"stream": false`, every line comes in one NDJSON body.
Subclasses add hooks to BatchHandler's: `frame_item(image, options)`, an RGB uint8 [3, H, W] frame as the model's
item (the same steps a decoded photo takes); `frame_options(video)`, a JSON video's per-frame options, read
before any frame; `check_frame_size(width, height)`, the kind's bound on a frame, from the header.
"""

import json
import logging
import os
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Deque, Dict, List, Optional, Sequence, Tuple

import torch

from handlers.batch_handler import INFERENCE_FAILED, BatchHandler, DecodedRequest, PreparedBatch
from handlers.protocols import Answer, Request
from ts.handler_utils.utils import send_intermediate_predict_response
from handlers.request_errors import InternalError, RequestError
from handlers.video import NDJSON, Frame, VideoInput, VideoLimits, VideoReader, video_input

logger = logging.getLogger(__name__)
MODEL_LANES = min(2, os.cpu_count() or 1)  # forward passes of one held video's steps at once


@dataclass
class RunningVideo:
    reader: VideoReader
    options: Any                    # the kind's per-frame options (frame_options), read when it opened
    replied: bool = False           # a reply has gone out: later ones belong to a stream
    lines: List[bytes] = field(default_factory=list)  # this step's lines


class VideoBatchHandler(BatchHandler):
    def initialize(self, context):
        self.videos: Dict[str, RunningVideo] = {}
        super().initialize(context)
        settings = self.settings
        self.video_limits = VideoLimits(settings.maxVideoSeconds, settings.maxVideoFrames, settings.maxFramePixels,
                                        settings.maxVideoDecodedBytes)
        self.streaming = bool((context.model_yaml_config or {}).get("continuousBatching"))

    # ---- hooks for the image kinds ----------------------------------------------------------------
    def frame_options(self, video: VideoInput) -> Any:
        """The kind's options for every frame of a video (a JSON body's `topk`...), read before any frame."""
        return None

    def frame_item(self, image: torch.Tensor, options: Any) -> Any:
        raise NotImplementedError

    def check_frame_size(self, width: int, height: int) -> None:
        """The kind's own bound on a frame of this size (raise RequestError), from the header."""

    # ---- a new request: a photo (BatchHandler) or a video, opened and checked ---------------------
    def decode_items(self, request: Request) -> DecodedRequest:
        video = video_input(request.body, request.content_type) if request.protocol == "plain" else None
        if video is None:
            return super().decode_items(request)
        options = self.frame_options(video)
        reader = VideoReader(video, self.video_limits)
        try:
            codec = reader.stream.codec_context
            self.check_frame_size(codec.width, codec.height)
        except BaseException:
            reader.close()
            raise
        return DecodedRequest([], request, video=RunningVideo(reader, options))

    # ---- one TorchServe call ------------------------------------------------------------------------
    def handle_batch(self, data: List[dict]) -> List[bytes]:
        started = time.perf_counter()
        known = self.context.request_ids or {}  # TorchServe always gives them; a bare Context has none
        ids = [known.get(idx, f"#{idx}") for idx in range(len(data))]
        self.forget([seq for seq in self.videos if seq not in set(ids)])  # their clients left
        running = [idx for idx, seq in enumerate(ids) if seq in self.videos]
        batch = self.preprocess(data, skip=running)
        for idx in [i for i, decoded in batch.requests.items() if decoded.video is not None]:
            self.videos[ids[idx]] = batch.requests.pop(idx).video
            running.append(idx)
        videos = {idx: self.videos[ids[idx]] for idx in running}
        timings: Dict[str, float] = {}
        photo_items = len(batch.items)
        frames = self.add_frames(batch, videos)
        results = self.guarded_results(batch, timings, started)
        answers: Dict[int, Any] = dict(batch.errors)
        if results is None:
            answers.update(self.failed(batch))
        else:
            answers.update(self.group_answers(batch, results[:photo_items]))
        self.frame_lines(videos, frames, results)
        self.batch_done(len(data), timings, batch)
        self.answer_held(ids, {idx: video for idx, video in videos.items() if self.held(idx, video)})
        return self.replies(data, ids, answers, batch, running)

    def answer_held(self, ids: List[str], held: Dict[int, RunningVideo]) -> None:
        """The videos answered within this call, each on a thread of its own up to the cores: FFmpeg and the model
        release the GIL, and TorchServe may hand one worker several videos at once (its batch) while the
        model's other workers idle (measured: 4 videos in one worker ran at one video's speed)."""
        lock = threading.Lock()  # one writer on TorchServe's socket at a time
        if len(held) <= 1:
            self.run_held(ids, held, lock)
            return
        with ThreadPoolExecutor(max_workers=min(len(held), os.cpu_count() or 1)) as pool:
            list(pool.map(lambda item: self.run_held(ids, dict([item]), lock), held.items()))

    def run_held(self, ids: List[str], videos: Dict[int, RunningVideo], lock: threading.Lock) -> None:
        """Step after step until the videos end: the next step's frames decoded on one thread while the model runs
        the steps before on MODEL_LANES more (a worker holding one video then uses the cores: measured, one
        thread for FFmpeg and the model in turn ran at 0.69 of one process with two); lines kept in order, each
        step's sent at once, the last step's with the final reply."""
        with ThreadPoolExecutor(max_workers=1) as decoder, ThreadPoolExecutor(max_workers=MODEL_LANES) as model:
            upcoming = decoder.submit(self.next_frames, videos)
            with lock:  # the lines of the call's shared step
                self.send_lines(ids, videos)
            running: Deque = deque()
            while upcoming is not None or running:
                if upcoming is not None:
                    batch, frames = upcoming.result()
                    more = any(not video.reader.done for video in videos.values())
                    upcoming = decoder.submit(self.next_frames, videos) if more else None
                    running.append((model.submit(self.frame_results, batch), frames))
                    if len(running) < MODEL_LANES and upcoming is not None:
                        continue
                results, frames = running.popleft()
                self.frame_lines(videos, frames, results.result())
                if upcoming is not None or running:
                    with lock:
                        self.send_lines(ids, videos)

    def held(self, idx: int, video: RunningVideo) -> bool:
        """Answered within this call: without continuous batching, over gRPC, or asked `"stream": false`."""
        return not (self.streaming and video.reader.options.stream) or self.came_by_grpc(idx)

    def send_lines(self, ids: List[str], held: Dict[int, RunningVideo]) -> None:
        """Without continuous batching, a streamed video's lines so far, sent at once (TorchServe's intermediate
        responses: its worker stays with it, the model's other workers take the photos)."""
        ready = {idx: video for idx, video in held.items()
                 if video.lines and video.reader.options.stream and not self.came_by_grpc(idx)}
        if not ready:
            return
        bodies = {}
        for idx, video in ready.items():
            bodies[idx], video.lines, video.replied = self.bounded_lines(b"".join(video.lines)), [], True
            self.context.set_response_content_type(idx, NDJSON)
        send_intermediate_predict_response(bodies, {idx: ids[idx] for idx in ready}, "frames", 200, self.context)

    def next_frames(self, videos: Dict[int, RunningVideo]) -> Tuple[PreparedBatch, List[Tuple[int, Frame, int]]]:
        batch = PreparedBatch()
        return batch, self.add_frames(batch, videos)

    def frame_results(self, batch: PreparedBatch) -> Optional[List[Any]]:
        """One forward pass over held videos' frames; None when it failed (logged: their lines say so)."""
        try:  # not through the response cache, which is one thread's: a frame is never asked twice
            return self.run_model(batch, {}, time.perf_counter()) if batch.items else []
        except Exception:
            logger.exception("inference failed for %d frames", len(batch.items))
            return None

    def add_frames(self, batch: PreparedBatch, videos: Dict[int, RunningVideo]) -> List[Tuple[int, Frame, int]]:
        """The next frames of each running video as items of the batch: (request, frame, item or -1 when the
        frame failed before the model). The step's frames are shared: videoFramesPerStep in all, >= 1 each."""
        share = max(1, self.settings.videoFramesPerStep // max(1, len(videos)))
        frames: List[Tuple[int, Frame, int]] = []
        for idx, video in videos.items():
            for frame in video.reader.take(share):
                position = -1
                if frame.image is not None:
                    try:
                        item = self.frame_item(frame.image, video.options)
                    except RequestError as err:
                        frame = frame._replace(image=None, error=err)
                    else:
                        position = len(batch.items)
                        batch.items.append(item)
                        batch.owners.append(idx)
                        batch.topks.append(None)
                frames.append((idx, frame, position))
        return frames

    def frame_lines(self, videos: Dict[int, RunningVideo], frames: List[Tuple[int, Frame, int]],
                    results: Optional[List[Any]]) -> None:
        """Each frame's line, in order (`results`: the batch's, None when its forward pass failed)."""
        failure = InternalError(INFERENCE_FAILED)
        for idx, frame, position in frames:
            if position < 0:
                result = frame.error
            else:
                result = failure if results is None else results[position]
            videos[idx].lines.append(frame_line(frame, result))

    # ---- answers ------------------------------------------------------------------------------------
    def replies(self, data: List[dict], ids: List[str], answers: Dict[int, Any], batch: PreparedBatch,
                running: Sequence[int]) -> List[bytes]:
        protocols = {idx: decoded.request.protocol for idx, decoded in batch.requests.items()}
        bodies: List[bytes] = []
        stops: Dict[int, Optional[bool]] = {}
        for idx in range(len(data)):
            if idx in running:
                body, stops[idx] = self.video_reply(idx, ids[idx])
                bodies.append(body)
            else:
                bodies.append(self.encode(idx, answers[idx], protocols.get(idx)))
                stops[idx] = None
        self.mark_streams(stops)
        return bodies

    def video_reply(self, idx: int, seq: str) -> Tuple[bytes, Optional[bool]]:
        """This step's lines and how the reply is marked: None ordinary, False more, True the last (a first reply
        that is also the last is an ordinary one)."""
        video = self.videos[seq]
        if video.reader.done:
            video.lines.append(json.dumps({"frames": video.reader.answered, "done": True}).encode() + b"\n")
            del self.videos[seq]
        body, video.lines = b"".join(video.lines), []
        body = self.bounded_lines(body)
        self.context.set_response_content_type(idx, NDJSON)
        first, video.replied = not video.replied, True
        if self.came_by_grpc(idx):
            return body, True  # gRPC reads ts_stream_next on every answer: "false", its one message
        if video.reader.done:
            return body, None if first else True
        return body, False

    def bounded_lines(self, body: bytes) -> bytes:
        """A step's lines over maxResponseBytes (the frontend would fail the worker's message): one error line."""
        _, error = self.bounded(Answer(body, NDJSON), None)
        if error is None:
            return body
        return json.dumps({"error": error.to_dict()}).encode() + b"\n"

    def forget(self, seqs: List[str]) -> None:
        for seq in seqs:
            self.videos.pop(seq).reader.close()
        if seqs:
            logger.info("stopped %d videos whose clients left: %s", len(seqs), " ".join(seqs))


def frame_line(frame: Frame, result: Any) -> bytes:
    """One frame's NDJSON line: its answer, or its error in the contract's JSON."""
    line = {"frame": frame.index, "time": round(frame.time, 6)}
    if isinstance(result, RequestError):
        line["error"] = result.to_dict()
    else:
        line.update(result)
    return json.dumps(line).encode("utf-8") + b"\n"
