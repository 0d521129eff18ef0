"""The work without a server, in process: (C) the model alone and (J) the whole job.

(C) the file an archive serves, loaded as its worker loads it, run on one (batch size) batch of
    ready tensors: no HTTP, no decoding; the ceiling of the model itself.
(J) the whole job: decode + preprocess + model (+ top-k) for batches of the workload's request body,
    with the archive's batch size, its settings and the handlers' own modules; what TorchServe's
    frontend, IPC and batching add is (B) or (F) against this.
Both take the best of the layouts a server could use on this machine: one process on all cores and
one single-threaded process per core, each process started fresh, all of them running at once.
"""

import multiprocessing
import queue
import time
from typing import List, Tuple

import psutil
import torch

from benchkit.archives import unpack
from model_formats import load_model
from tskit import kinds


def _load(mar: str, threads: int):
    unpacked = unpack(mar)
    settings = unpacked.settings
    model = load_model(unpacked.model_file, settings.modelFormat, torch.device("cpu"), threads,
                       settings.optimizeForInference)
    return unpacked, settings, model


def _image_job(unpacked, settings, model, body: bytes, batch: int):
    from classification import load_labels, top_k_predictions
    from image_decoding import decode_rgb
    from image_transforms import collate_normalize, resize_and_crop

    labels = load_labels(unpacked.file(settings.labelsFile))
    reduced = settings.resizeSize if settings.reducedJpegDecode else None

    def job():
        crops = [resize_and_crop(decode_rgb(body, settings.maxImagePixels, reduced), settings.resizeSize,
                                 settings.cropSize) for _ in range(batch)]
        logits = model(collate_normalize(crops, settings.mean, settings.std, torch.device("cpu")))
        top_k_predictions(logits, labels, [settings.topk] * batch)
    return job


def _text_job(unpacked, settings, model, body: bytes, batch: int):
    from text_tokenization import collate_padded, load_tokenizer, tokenize

    tokenizer = load_tokenizer(unpacked.file(settings.tokenizerFile), settings.maxTokens)
    pad = tokenizer.token_to_id(settings.padToken)
    text = body.decode("utf-8")

    def job():
        items = [tokenize(tokenizer, text, settings.maxTokens) for _ in range(batch)]
        model(*collate_padded(items, pad, torch.device("cpu")))
    return job


def _model_job(unpacked, settings, model, body: bytes, batch: int):
    if kinds.kind(unpacked.kind).family == "image":
        inputs = (torch.randn(batch, 3, settings.cropSize, settings.cropSize),)
    else:
        from text_tokenization import collate_padded, load_tokenizer, tokenize

        tokenizer = load_tokenizer(unpacked.file(settings.tokenizerFile), settings.maxTokens)
        item = tokenize(tokenizer, body.decode("utf-8"), settings.maxTokens)
        inputs = collate_padded([item] * batch, tokenizer.token_to_id(settings.padToken), torch.device("cpu"))
    return lambda: model(*inputs)


def _rate(what: str, mar: str, body: bytes, threads: int, seconds: float, ready, start, out) -> None:
    """One process: load, warm up, say ready, wait for the common start, run `seconds`; (items/s, ms per batch)."""
    torch.set_num_threads(threads)
    unpacked, settings, model = _load(mar, threads)
    batch = unpacked.batch_size
    make = _model_job if what == "C" else (_image_job if kinds.kind(unpacked.kind).family == "image" else _text_job)
    job = make(unpacked, settings, model, body, batch)
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
