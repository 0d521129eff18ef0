"""torch.profiler over the next N batches of a worker. Pure: imports nothing from `ts`.

Turned on by a model's `handler.profileBatches` (make profile builds such a copy of an archive); off,
the handler pays one integer test per batch and no record_function at all. On, one profile spans the
next N handle() calls, each labelled by phase (decode, collate, model, postprocess); then the worker
writes, into `folder`:
    <model>-<version>-pid<pid>.trace.json   Chrome trace (chrome://tracing, ui.perfetto.dev)
    <model>-<version>-pid<pid>.top.txt      the operators with the most self CPU time (and CUDA time on a GPU)
and profiling stops.
"""

import contextlib
import logging
import os
from typing import Iterator, Optional

import torch

logger = logging.getLogger(__name__)
TOP_OPERATORS = 25


class BatchProfiler:
    def __init__(self, batches: int, folder: str, name: str, device: torch.device):
        self.remaining = batches
        self.folder, self.name, self.device = folder, name, device
        self.profile: Optional[torch.profiler.profile] = None

    @property
    def active(self) -> bool:
        return self.remaining > 0

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Profile one handle() call (a no-op once the N batches are done)."""
        if not self.active:
            yield
            return
        if self.profile is None:
            activities = [torch.profiler.ProfilerActivity.CPU]
            if self.device.type == "cuda":
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            self.profile = torch.profiler.profile(activities=activities, record_shapes=True)
            self.profile.__enter__()
        try:
            with torch.profiler.record_function("batch"):
                yield
        finally:
            self.remaining -= 1
            if self.remaining == 0:
                self.finish()

    def phase(self, name: str):
        """A labelled span inside a profiled batch; nothing at all when profiling is off."""
        return torch.profiler.record_function(name) if self.profile is not None and self.active else contextlib.nullcontext()

    def finish(self) -> None:
        self.profile.__exit__(None, None, None)
        os.makedirs(self.folder, exist_ok=True)
        stem = os.path.join(self.folder, f"{self.name}-pid{os.getpid()}")
        self.profile.export_chrome_trace(stem + ".trace.json")
        sort_by = "self_cuda_time_total" if self.device.type == "cuda" else "self_cpu_time_total"
        table = self.profile.key_averages().table(sort_by=sort_by, row_limit=TOP_OPERATORS)
        with open(stem + ".top.txt", "w", encoding="utf-8") as f:
            f.write(table)
        logger.info("profile written: %s.trace.json and %s.top.txt", stem, stem)
        self.profile = None
