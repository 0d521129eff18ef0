"""Admission: how many requests the frontend holds per model, within one server-wide heap budget.

Each model's queue is sized by time: it asks for what it serves within the stated wait (~2 s), its
declaration's `torchserve.jobQueueSize` (TorchServe's `job_queue_size` for a model that declares none).
A queue sized only for the heap's worst case (16) refused 98% of requests at 64 connections, because
every refused request comes straight back and each refusal still costs the frontend a body read and a
token check: the refusals took the CPU the workers needed.

The other side of the limit: TorchServe copies each queued body into the JVM heap, so the worst case is
every queue slot and every batch slot in a worker holding a body of `max_request_size`. That worst case
must fit HEAP_SHARE of the heap (-Xmx, or -XX:MaxRAMPercentage of the host's memory). The budget is ONE
figure for the whole server, shared among the models:

    slots    = HEAP_SHARE x heap // max_request_size             (960 for 10 GiB and 8 MiB)
    reserve  = job_queue_size + the largest batch slots          (one version registered by hand: a rollout)
    room     = slots - reserve - sum of every model's batch slots (maxWorkers x batchSize)
    queue_i  = want_i x room / sum of wants, when the wants do not fit the room; else want_i

so every model keeps the same fraction of its stated wait, and a model added shrinks the others' queues
instead of failing. A model is never given less than its floor (FLOOR_BATCHES full batches for each of
its workers, or its want if smaller): below that its workers would idle for want of queued work while
clients are refused. Only when the floors do not fit is the configuration refused, naming what to change.
TorchServe 0.12 reads a model's queue only from its archive (model-config.yaml's jobQueueSize), so `make
config` stamps each share into the served archives (tskit.archive_queue). docs/limits-and-overload.md.
"""

import math
import re
from dataclasses import dataclass
from typing import Dict, List, Optional

from tskit.declaration import Declaration, DeclarationError
from tskit.properties import parse_properties

TORCHSERVE_JOB_QUEUE_SIZE = 100        # TorchServe's default when config.properties does not set it
TORCHSERVE_MAX_REQUEST_SIZE = 6553500  # likewise
HEAP_SHARE = 0.75  # of the heap for queued and batched bodies: the rest for copies, netty and the frontend itself
FLOOR_BATCHES = 2  # the least queue: this many full batches waiting for each worker
UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30}


class AdmissionError(DeclarationError):
    """The served models' least queues do not fit the frontend's heap; the message says what to change."""


@dataclass
class ModelAdmission:
    name: str
    queue: int        # requests waiting in the frontend: the model's share of the budget
    in_workers: int   # requests inside the workers' batches (workers x batch size)
    want: int = 0     # the queue it asks for: what it serves within the stated wait

    @property
    def floor(self) -> int:
        return min(self.want, FLOOR_BATCHES * self.in_workers)


@dataclass
class Budget:
    heap: int      # bytes of the frontend's heap
    body: int      # max_request_size
    reserve: int   # slots kept for one version registered by hand

    @property
    def slots(self) -> int:
        """Bodies of max_request_size that HEAP_SHARE of the heap holds."""
        return int(HEAP_SHARE * self.heap) // self.body


def host_memory_bytes(cgroup: str = "/sys/fs/cgroup/memory.max", meminfo: str = "/proc/meminfo") -> int:
    """The memory the JVM sees: the cgroup's limit (a container's) when set, else the host's total."""
    try:
        with open(cgroup, encoding="ascii") as f:
            limit = f.read().strip()
        if limit.isdigit():
            return int(limit)
    except OSError:
        pass
    with open(meminfo, encoding="ascii") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    raise OSError(f"{meminfo} names no MemTotal")


def heap_bytes(vmargs: str, memory: Optional[int] = None) -> int:
    """The frontend's heap in bytes: -Xmx, else -XX:MaxRAMPercentage of the host's memory; 0 when neither is
    set (the JVM's own default differs per host, so the budget would be a guess)."""
    match = re.search(r"-Xmx(\d+)([kmgKMG]?)(?:\s|$)", vmargs)
    if match:
        return int(match.group(1)) * UNITS[match.group(2).lower()]
    match = re.search(r"-XX:MaxRAMPercentage=(\d+(?:\.\d+)?)(?:\s|$)", vmargs)
    if match:
        return int(float(match.group(1)) / 100 * (memory or host_memory_bytes()))
    return 0


def wants(props: Dict[str, str], declarations: List[Declaration]) -> List[ModelAdmission]:
    """Each model's batch slots and the queue it asks for, before any sharing."""
    default_queue = int(props.get("job_queue_size", TORCHSERVE_JOB_QUEUE_SIZE))
    rows = []
    for d in declarations:
        want = int(d.torchserve.get("jobQueueSize", default_queue))
        rows.append(ModelAdmission(d.name, want, int(d.torchserve.get("maxWorkers", 1)) *
                                   int(d.torchserve.get("batchSize", 1)), want))
    return rows


def budget(props: Dict[str, str], declarations: List[Declaration], memory: Optional[int] = None) -> Budget:
    heap = heap_bytes(props.get("vmargs", ""), memory)
    if not heap:
        raise AdmissionError("config.properties: vmargs sets neither -Xmx nor -XX:MaxRAMPercentage: the frontend's "
                             "heap must be known to bound what its queues hold (docs/limits-and-overload.md)")
    largest_batch = max([a.in_workers for a in wants(props, declarations)] + [1])
    reserve = int(props.get("job_queue_size", TORCHSERVE_JOB_QUEUE_SIZE)) + largest_batch
    return Budget(heap, int(props.get("max_request_size", TORCHSERVE_MAX_REQUEST_SIZE)), reserve)


def share(rows: List[ModelAdmission], room: int) -> None:
    """Set each row's queue: its want when the wants fit `room`, else the same fraction of every want,
    floors kept (a model held at its floor leaves the rest of the room to the others)."""
    pinned: Dict[str, int] = {}
    while True:
        free = [r for r in rows if r.name not in pinned]
        asked = sum(r.want for r in free)
        scale = min(1.0, (room - sum(pinned.values())) / asked) if asked else 1.0
        low = {r.name: r.floor for r in free if math.floor(r.want * scale) < r.floor}
        if not low:
            break
        pinned.update(low)
    for r in rows:
        r.queue = pinned[r.name] if r.name in pinned else math.floor(r.want * scale)


def admissions(props: Dict[str, str], declarations: List[Declaration],
               memory: Optional[int] = None) -> List[ModelAdmission]:
    """Every served model's queue, its share of the server's budget; AdmissionError when the floors do not fit."""
    rows = wants(props, declarations)
    plan = budget(props, declarations, memory)
    room = plan.slots - plan.reserve - sum(r.in_workers for r in rows)
    floors = sum(r.floor for r in rows)
    if floors > room:
        raise AdmissionError(refusal(props, rows, plan, room))
    share(rows, room)
    return rows


def needs(rows: List[ModelAdmission], plan: Budget, full: bool) -> tuple:
    """(slots, the -Xmx in whole GiB, the largest max_request_size) that hold every model's floor, or with
    `full` every model's whole want, beside the batch slots and the reserve."""
    slots = plan.reserve + sum(r.in_workers + (r.want if full else r.floor) for r in rows)
    return slots, math.ceil(slots * plan.body / HEAP_SHARE / 2**30), int(HEAP_SHARE * plan.heap) // slots


def refusal(props: Dict[str, str], rows: List[ModelAdmission], plan: Budget, room: int) -> str:
    """What to change when even the least queues do not fit: the heap, the body limit or the models."""
    needed, heap_needed, body_fits = needs(rows, plan, full=False)
    return (f"config.properties: {len(rows)} models need at least {needed} bodies of max_request_size "
            f"({plan.body / 2**20:.1f} MiB) in the frontend's heap (each model {FLOOR_BATCHES} batches queued per "
            f"worker, its batch slots, and {plan.reserve} kept for a version registered by hand), but "
            f"{HEAP_SHARE:.0%} of the heap ({plan.heap / 2**30:.2f} GiB) holds {plan.slots}: raise -Xmx to at "
            f"least {heap_needed}g, lower max_request_size to at most {body_fits} bytes, or serve fewer models "
            f"(`serve: false` in a declaration, or fewer workers)")


def shared_note(props: Dict[str, str], declarations: List[Declaration]) -> str:
    """For `make config`: how much of its stated wait each queue keeps, and when the budget is shared, what
    would give every model its whole queue (at 16x the tuned concurrency a shrunk queue refuses more)."""
    rows = admissions(props, declarations)
    fraction = wait_fraction(rows)
    if fraction >= 1:
        return f"every model's queue is the whole {sum(r.queue for r in rows)} it asks for"
    _, heap_needed, body_fits = needs(rows, budget(props, declarations), full=True)
    return (f"{len(rows)} models share the heap budget: each queue holds {fraction:.0%} of what it asks for "
            f"(of its stated wait); every model's whole queue needs -Xmx{heap_needed}g or max_request_size at "
            f"most {body_fits} bytes (docs/limits-and-overload.md)")


def worst_case_bytes(props: Dict[str, str], declarations: List[Declaration], memory: Optional[int] = None) -> int:
    """Every queue slot and every batch slot of the served models holding a body of max_request_size, with the
    reserve for a version registered by hand."""
    plan = budget(props, declarations, memory)
    return (plan.reserve + sum(a.queue + a.in_workers for a in admissions(props, declarations, memory))) * plan.body


def wait_fraction(rows: List[ModelAdmission]) -> float:
    """The least share of its stated wait that any model's queue holds (1.0: every want fitted)."""
    return min([r.queue / r.want for r in rows if r.want] + [1.0])


def check_heap(text: str, declarations: List[Declaration]) -> List[ModelAdmission]:
    """The served models' queues for config.properties `text`; AdmissionError when they cannot fit its heap."""
    return admissions(parse_properties(text), declarations)

