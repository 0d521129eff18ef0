"""worker_log.py: TorchServe's per-batch INFO line is dropped in the worker; every other record passes.

Checked against TorchServe's own protocol code: a real inference message read by its retrieve_msg logs the
line without the filter and not with it, so a TorchServe that rewords the line fails here.
"""

import logging
import socket
import struct

import pytest
from ts.protocol.otf_message_handler import retrieve_msg

from handlers.worker_log import DropPerBatchNoise, drop_per_batch_noise


class Lines(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


@pytest.fixture
def root():
    """The root logger as the worker sets it up (INFO), a handler that keeps its lines; restored after."""
    logger, lines = logging.getLogger(), Lines()
    level, filters = logger.level, list(logger.filters)
    logger.filters[:] = [f for f in filters if not isinstance(f, DropPerBatchNoise)]  # a handler loaded by an earlier
    logger.setLevel(logging.INFO)                                                     # test of this process adds it
    logger.addHandler(lines)
    yield logger, lines.lines
    logger.removeHandler(lines)
    logger.setLevel(level)
    logger.filters[:] = filters


def framed(data: bytes) -> bytes:
    return struct.pack("!i", len(data)) + data


def inference_message(body: bytes) -> bytes:
    """One request as TorchServe's frontend frames it: id, one header, one `body` parameter, end markers."""
    end = struct.pack("!i", -1)
    request = framed(b"req-1") + framed(b"Content-Type") + framed(b"text/plain") + end
    request += framed(b"body") + framed(b"text/plain") + framed(body) + end
    return b"I" + request + end


def read_one(body: bytes):
    ours, theirs = socket.socketpair()
    with ours, theirs:
        ours.sendall(inference_message(body))
        return retrieve_msg(theirs)


def test_torchserve_logs_the_line_without_the_filter(root):
    _, lines = root
    command, batch = read_one(b"hello")
    assert command == b"I" and batch[0]["parameters"][0]["value"] == "hello"
    assert any(line.startswith("Backend received inference at:") for line in lines), lines


def test_the_filter_drops_it_and_the_message_still_arrives(root):
    logger, lines = root
    drop_per_batch_noise(logger)
    command, batch = read_one(b"hello")
    assert command == b"I" and batch[0]["requestId"] == b"req-1"
    assert not any(line.startswith("Backend received inference at:") for line in lines), lines


def test_every_other_record_passes(root):
    logger, lines = root
    drop_per_batch_noise(logger)
    logging.info("handled batch size=%d invalid=%d", 4, 0)
    logging.warning("Failed utf-8 decoding of input data. Forwarding encoded payload")
    logging.getLogger("ts.service").info("Backend received inference at: %d", 1)  # not the root logger's
    assert lines == ["handled batch size=4 invalid=0", "Failed utf-8 decoding of input data. Forwarding encoded payload",
                     "Backend received inference at: 1"]


def test_installed_once(root):
    logger, _ = root
    drop_per_batch_noise(logger)
    drop_per_batch_noise(logger)
    assert sum(isinstance(f, DropPerBatchNoise) for f in logger.filters) == 1
