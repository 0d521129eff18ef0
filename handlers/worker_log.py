"""What a worker prints per batch. TorchServe's frontend reads each worker's stdout line by line (a reader thread
per worker, then a write to model_log.log), so every line a batch prints costs CPU on both sides: measured with
`make account`, TorchServe's own per-batch INFO line was ~1.7% of a short-text worker's CPU.
Pure: imports nothing from `ts`.
"""

import logging
from typing import Tuple

# TorchServe 0.12's protocol module logs this once per batch on the root logger (ts/protocol/otf_message_handler.py,
# retrieve_msg): the batch's arrival time in whole seconds, which the frontend's own access log and
# ts_queue_latency_microseconds already give. Warnings and errors of the protocol are kept.
PER_BATCH_NOISE: Tuple[str, ...] = ("Backend received inference at:",)


class DropPerBatchNoise(logging.Filter):
    """Drops the root logger's per-batch lines of PER_BATCH_NOISE; every other record passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (isinstance(record.msg, str) and record.msg.startswith(PER_BATCH_NOISE))


def drop_per_batch_noise(logger: logging.Logger = None) -> None:
    """Install the filter once on `logger` (the root logger, where TorchServe logs the line)."""
    logger = logger or logging.getLogger()
    if not any(isinstance(f, DropPerBatchNoise) for f in logger.filters):
        logger.addFilter(DropPerBatchNoise())
