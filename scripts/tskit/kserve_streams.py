"""Intermediate answers (a video's NDJSON lines, step by step) on the KServe engine.

A handler streams as under TorchServe: `ts.handler_utils.utils.send_intermediate_predict_response` encodes a frame
of TorchServe's worker protocol and writes it to `context.cl_socket`. Here that socket is a `FrameSink`: it reads
each frame back (ts/protocol/otf_message_handler.create_predict_response's layout) and hands every request's
chunk to the engine, which sends it on that request's HTTP answer at once (a chunked 200). The final answer of a
streamed request is its last chunk, as TorchServe sends it.
"""

import asyncio
import struct
from dataclasses import dataclass
from typing import Callable, Dict, Tuple


@dataclass
class Answer:
    status: int
    body: bytes
    headers: Dict[str, str]
    more: bool = False  # a reply with more to come (continuous batching's `ts_stream_next: true`)


@dataclass
class Streamed:
    """A request whose handler sent intermediate answers: its chunks, the final one last, then None.
    `left()` says its client went away (continuous batching then stops sending it to the handler)."""

    headers: Dict[str, str]
    chunks: asyncio.Queue
    left: Callable[[], None] = lambda: None


class FrameReader:
    def __init__(self, frame: bytes):
        self.frame, self.at = frame, 0

    def int(self) -> int:
        (value,) = struct.unpack_from("!i", self.frame, self.at)
        self.at += 4
        return value

    def bytes(self) -> bytes:
        length = self.int()
        value = self.frame[self.at:self.at + max(length, 0)]
        self.at += max(length, 0)
        return value


def read_frame(frame: bytes) -> Dict[str, Tuple[bytes, Dict[str, str]]]:
    """{request id: (its chunk, its response headers)} of one predict-response frame."""
    reader = FrameReader(frame)
    reader.int()    # the frame's status code
    reader.bytes()  # its message
    chunks = {}
    while (length := reader.int()) != -1:
        request_id = reader.frame[reader.at:reader.at + length].decode("utf-8")
        reader.at += length
        content_type = reader.bytes().decode("utf-8")
        reader.int()    # the request's status
        reader.bytes()  # its reason phrase
        headers = {reader.bytes().decode("utf-8"): reader.bytes().decode("utf-8") for _ in range(reader.int())}
        if content_type:
            headers["content-type"] = content_type
        chunks[request_id] = (reader.bytes(), headers)
    return chunks


class FrameSink:
    """What the handler takes for TorchServe's socket: each frame's chunks go to `deliver(request id, chunk,
    headers)` (called on the handler's thread; the engine passes them to its event loop)."""

    def __init__(self, deliver: Callable[[str, bytes, Dict[str, str]], None]):
        self.deliver = deliver

    def sendall(self, frame: bytes) -> None:
        for request_id, (chunk, headers) in read_frame(bytes(frame)).items():
            self.deliver(request_id, chunk, headers)
