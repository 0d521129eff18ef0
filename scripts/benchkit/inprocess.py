"""The work without a server, in process: (C) the model alone and (J) the whole job.

(C) the archive's handler, initialised from the unpacked archive as its worker is, running only its forward pass
    on one (batch size) batch of the workload's items, decoded and collated once: no HTTP, no decoding; the
    ceiling of the model itself.
(J) the whole job: the kind's own steps (the handler's read_input, decode, collate, forward, postprocess:
    tskit.unpacked.answer_items) for batches of the workload's request body, with the archive's batch size
    and settings; what TorchServe's frontend, IPC and batching add is (B) or (F) against this.
Both take the best of the layouts a server could use on this machine: one process on all cores and
one single-threaded process per core, each process started fresh, all of them running at once.
"""

import multiprocessing
import queue
import time
from typing import List, Tuple

import psutil
import torch

from tskit.unpacked import answer_items, decode_body, in_process_handler, unpack


def _whole_job(handler, body: bytes, batch: int):
    return lambda: answer_items(handler, [decode_body(handler, body) for _ in range(batch)])


def _model_job(handler, body: bytes, batch: int):
    inputs = handler.collate([decode_body(handler, body)] * batch)
    return lambda: handler.inference(inputs)


def _rate(what: str, mar: str, body: bytes, threads: int, seconds: float, ready, start, out) -> None:
    """One process: load, warm up, say ready, wait for the common start, run `seconds`; (items/s, ms per batch)."""
    torch.set_num_threads(threads)
    unpacked = unpack(mar)
    handler, _ = in_process_handler(unpacked, threads)
    batch = unpacked.batch_size
    job = (_model_job if what == "C" else _whole_job)(handler, body, batch)
    with torch.inference_mode():
        for _ in range(3):
            job()
        ready.put(True)
        start.wait()
        runs, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            job()
            runs += 1
    elapsed = time.perf_counter() - started
    unpacked.cleanup()
    out.put((runs * batch / elapsed, elapsed / runs * 1e3))


def layouts() -> List[Tuple[int, int]]:
    cores = psutil.cpu_count(logical=True)
    return [(1, cores)] + ([(cores, 1)] if cores > 1 else [])


def each_layout(target, args: tuple, seconds: float, one_layout: bool = False):
    """(layout "PxT", what each of its P processes put) for every layout: the processes started fresh (spawn),
    `target(*args, threads, seconds, ready, start, out)` in each, all of them released at once."""
    context = multiprocessing.get_context("spawn")
    for processes, threads in layouts()[:1] if one_layout else layouts():
        ready, start, out = context.Queue(), context.Event(), context.Queue()
        workers = [context.Process(target=target, args=(*args, threads, seconds, ready, start, out))
                   for _ in range(processes)]
        for worker in workers:
            worker.start()
        for _ in workers:
            wait_ready(ready, workers)
        start.set()
        results = [out.get(timeout=seconds + 600) for _ in workers]
        for worker in workers:
            worker.join()
        yield f"{processes}x{threads}", results


def wait_ready(ready, workers, timeout: float = 600) -> None:
    """One process's `ready`; a process that died first (its traceback is on stderr) fails the wait at once."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return ready.get(timeout=5)
        except queue.Empty:
            if any(w.exitcode not in (None, 0) for w in workers) or time.monotonic() > deadline:
                raise RuntimeError(f"a measuring process died or stalled: exit codes {[w.exitcode for w in workers]}")


def best_rate(what: str, mar: str, body: bytes, seconds: float, one_layout: bool = False) -> dict:
    """Items/s of (C) or (J) for the archive `mar`: the best layout, with every layout's figure
    (`one_layout`: the first only, for bench --quick, where each layout costs its processes' start)."""
    tried = {}
    best = None
    for layout, rates in each_layout(_rate, (what, mar, body), seconds, one_layout):
        throughput = sum(rate for rate, _ in rates)
        tried[layout] = round(throughput, 1)
        if best is None or throughput > best["throughput"]:
            best = {"layout": layout, "throughput": throughput, "p50_ms": sum(ms for _, ms in rates) / len(rates)}
    best["layouts"] = tried
    return best
