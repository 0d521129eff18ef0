"""Admission: how many requests the frontend holds per model, and what that can cost its heap.

A model's queue (`torchserve.jobQueueSize` in its declaration, TorchServe's `job_queue_size` for the
others) is sized by time: it holds what the model serves within a stated wait. A queue sized only for
the heap's worst case (16) refused 98% of requests at 64 connections, because every refused request
comes straight back (wrk, load balancers and impatient clients retry at once) and each refusal still
costs the frontend a body read and a token check: the refusals took the CPU the workers needed.

The other side of the limit: TorchServe copies each queued body into the JVM heap, so the worst case is
every queue slot and every batch in a worker holding a body of `max_request_size`. That sum must fit the
heap (`-Xmx` in `vmargs`) with room for the copies and the rest of the frontend (HEAP_SHARE); `make
config` refuses a configuration where it does not. docs/limits-and-overload.md has the arithmetic.
"""

import re
from dataclasses import dataclass
from typing import Dict, List

from tskit.declaration import Declaration, DeclarationError
from tskit.properties import parse_properties

TORCHSERVE_JOB_QUEUE_SIZE = 100        # TorchServe's default when config.properties does not set it
TORCHSERVE_MAX_REQUEST_SIZE = 6553500  # likewise
HEAP_SHARE = 0.75  # of -Xmx for queued and batched bodies: the rest for copies, netty and the frontend itself
UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30}


@dataclass
class ModelAdmission:
    name: str
    queue: int        # requests waiting in the frontend
    in_workers: int   # requests inside the workers' batches (workers x batch size)


def heap_bytes(vmargs: str) -> int:
    """-Xmx of the frontend's JVM, in bytes; 0 when not set (the JVM then takes a quarter of the host's memory)."""
    match = re.search(r"-Xmx(\d+)([kmgKMG]?)\b", vmargs)
    return int(match.group(1)) * UNITS[match.group(2).lower()] if match else 0


def admissions(props: Dict[str, str], declarations: List[Declaration]) -> List[ModelAdmission]:
    default_queue = int(props.get("job_queue_size", TORCHSERVE_JOB_QUEUE_SIZE))
    return [ModelAdmission(d.name, int(d.torchserve.get("jobQueueSize", default_queue)),
                           int(d.torchserve.get("maxWorkers", 1)) * int(d.torchserve.get("batchSize", 1)))
            for d in declarations]


def worst_case_bytes(props: Dict[str, str], declarations: List[Declaration]) -> int:
    """Every queue slot and every batch slot of the served models holding a body of max_request_size."""
    body = int(props.get("max_request_size", TORCHSERVE_MAX_REQUEST_SIZE))
    return sum(a.queue + a.in_workers for a in admissions(props, declarations)) * body


def check_heap(text: str, declarations: List[Declaration]) -> None:
    """DeclarationError when the worst case of queued bodies does not fit the frontend's heap."""
    props = parse_properties(text)
    heap = heap_bytes(props.get("vmargs", ""))
    if not heap:
        raise DeclarationError("config.properties: vmargs sets no -Xmx: the frontend's heap must be sized for the "
                               "worst case of queued bodies (docs/limits-and-overload.md)")
    worst = worst_case_bytes(props, declarations)
    if worst > HEAP_SHARE * heap:
        queues = ", ".join(f"{a.name} {a.queue}+{a.in_workers}" for a in admissions(props, declarations))
        raise DeclarationError(
            f"config.properties: the queues ({queues}) x max_request_size need up to {worst / 2**30:.2f} GiB of the "
            f"frontend's heap, above {HEAP_SHARE:.0%} of -Xmx ({heap / 2**30:.2f} GiB): lower a model's "
            f"torchserve.jobQueueSize or max_request_size, or raise -Xmx")
