"""A second engine: KServe's Python ModelServer (kserve 0.21) serving the archives `make archives` built, with
each archive's own handler doing the work (`make serve ENGINE=kserve`; run as `python -m tskit.kserve_engine`).

TorchServe is archived; KServe's ModelServer is maintained. Nothing is rebuilt: each served declaration's .mar is
unpacked (tskit.unpacked) and its handler class initialised with TorchServe's own Context, exactly as a TorchServe
worker does, so the answers, the 4xx bodies, the budgets and the protocols (KServe v1, Open Inference Protocol
v2, JSON and binary) are the handler's. What TorchServe did around the handler is done here:
    rows            tskit.kserve_rows: the request as TorchServe's worker hands it (HTTP), or a gRPC v2 request
                    in v2's binary form
    batching        HandlerBatcher: requests gathered up to the declaration's batchSize within its maxBatchDelay,
                    one batch at a time per model on a thread of its own (one TorchServe worker's behaviour)
    the doors       tskit.kserve_wire: HTTP 9080 and gRPC 9081 on 127.0.0.1, the inference key, error answers
Not yet here (issue 28): Prometheus metrics of our own, the generator, several workers per model.
"""

import argparse
import asyncio
import contextvars
import itertools
import json
import logging
import os
import sys
from dataclasses import dataclass
from typing import Dict, List, Optional, Union

from handlers.request_errors import RequestError
from tskit.kserve_metrics import QueueCounters, register
from tskit.kserve_rows import Row, grpc_row
from tskit.kserve_streams import Answer, FrameSink, Streamed
from tskit.kserve_wire import JSON, QueueFull, bound_server, error_body, grpc_failure, wire_app

ADMISSION_WAIT_S = 2.0  # how long a request waits for a place in a full queue: the stated wait (tskit.admission)
SERVING = contextvars.ContextVar("serving", default="-")  # the model whose batch this thread runs


@dataclass
class Pending:
    row: Row
    future: asyncio.Future
    request_id: str
    enqueued: float  # the event loop's clock when it arrived (its wait for a place counts as queue wait)
    chunks: Optional[asyncio.Queue] = None


class HandlerBatcher:
    """The requests of one model, run by its handlers in the declaration's batches (TorchServe's batching): one
    handler per worker of the declaration (minWorkers), each taking the next batch from the one queue, as
    TorchServe's workers do; each its own instance (a handler keeps its call's Context on itself)."""

    def __init__(self, handlers: list, unpacked):
        self.handlers, self.unpacked = handlers, unpacked
        self.batch_size, self.delay = unpacked.batch_size, unpacked.max_batch_delay_ms / 1000
        self.queue: Optional[asyncio.Queue] = None
        self.slots: Optional[asyncio.Semaphore] = None  # the queue's places: jobQueueSize
        self.running: Dict[str, Pending] = {}  # request id -> the request, while its batch runs
        self.counters = QueueCounters()  # tskit.kserve_metrics
        self.count = itertools.count()

    @property
    def depth(self) -> int:
        return self.queue.qsize() if self.queue is not None else 0

    async def admit(self, wait: float) -> float:
        """A place in the queue (jobQueueSize of them), waiting up to `wait` seconds for one: under overload a
        request waits, and is refused (QueueFull: 503) only past that. Called before the body is read, so a
        waiting request holds no body. The event loop's clock when it arrived."""
        loop = asyncio.get_running_loop()
        if self.queue is None:  # made in the server's event loop, on the first request
            self.queue, self.slots = asyncio.Queue(), asyncio.Semaphore(self.unpacked.job_queue_size)
            for handler in self.handlers:
                loop.create_task(self.run(handler))
        arrived = loop.time()
        try:
            await asyncio.wait_for(self.slots.acquire(), wait)
        except asyncio.TimeoutError:
            self.counters.refused += 1
            raise QueueFull() from None
        return arrived

    def leave(self) -> None:
        """An admitted request that will not be queued (its body could not be read) gives its place back."""
        self.slots.release()

    async def submit(self, row: Row, arrived: float) -> Union[Answer, Streamed]:
        """An admitted request's row to the queue: its answer (or its stream) once its batch has run."""
        loop = asyncio.get_running_loop()
        pending = Pending(row, loop.create_future(), f"kserve-{next(self.count)}", arrived)
        self.queue.put_nowait(pending)
        self.counters.requests += 1
        return await pending.future

    async def run(self, handler) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            deadline = loop.time() + self.delay
            while len(batch) < self.batch_size and (remaining := deadline - loop.time()) > 0:
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), remaining))
                except asyncio.TimeoutError:
                    break
            for _ in batch:  # out of the queue: their places are free
                self.slots.release()
            self.running.update({p.request_id: p for p in batch})
            began = loop.time()
            self.counters.queue_wait_us += sum(began - p.enqueued for p in batch) * 1e6
            try:
                SERVING.set(self.unpacked.model_name)  # to_thread copies the context: the batch's log lines
                answers = await asyncio.to_thread(self.handle, handler, batch, loop)
            except Exception as err:  # the handler isolates requests; this is the glue failing: answer them all
                failure = json.dumps({"code": 500, "type": "InternalError", "message": str(err)}).encode()
                answers = [Answer(500, failure, {"content-type": JSON}) for _ in batch]
            for pending, answer in zip(batch, answers):
                self.running.pop(pending.request_id, None)
                if pending.chunks is not None:  # a stream: its final answer is its last chunk
                    pending.chunks.put_nowait(answer.body)
                    pending.chunks.put_nowait(None)
                elif not pending.future.done():
                    pending.future.set_result(answer)

    def handle(self, handler, batch: List[Pending], loop) -> List[Answer]:
        """One handle() call, as a TorchServe worker makes it: the rows, each request's id and headers on the
        Context, and a socket that takes intermediate answers (tskit.kserve_streams)."""
        from ts.context import RequestProcessor

        context = self.unpacked.context()
        context.request_processor = [RequestProcessor(p.row.headers) for p in batch]
        context.request_ids = {i: p.request_id for i, p in enumerate(batch)}
        context.cl_socket = FrameSink(lambda rid, chunk, headers: loop.call_soon_threadsafe(self.stream, rid, chunk,
                                                                                          headers))
        outputs = handler.handle([p.row.parts for p in batch], context)
        return [Answer((context.get_response_status(i) or (200,))[0] or 200,
                       out if isinstance(out, bytes) else str(out).encode(),
                       {"content-type": JSON, **context.get_response_headers(i)}) for i, out in enumerate(outputs)]

    def stream(self, request_id: str, chunk: bytes, headers: Dict[str, str]) -> None:
        """An intermediate answer (on the event loop): the request's answer becomes a stream, this its chunk."""
        pending = self.running.get(request_id)
        if pending is None:
            return
        if pending.chunks is None:
            pending.chunks = asyncio.Queue()
            pending.future.set_result(Streamed({k: v for k, v in headers.items() if k != "ts_stream_next"},
                                               pending.chunks))
        pending.chunks.put_nowait(chunk)


async def gathered(streamed: Streamed) -> Answer:
    """A streamed answer whole (gRPC v2 has no NDJSON stream): its chunks joined."""
    chunks = []
    while (chunk := await streamed.chunks.get()) is not None:
        chunks.append(chunk)
    return Answer(200, b"".join(chunks), streamed.headers)


def grpc_response(document: dict):
    """The handler's v2 JSON answer as KServe's InferResponse with every output in raw_output_contents, as Triton
    answers: tritonclient's gRPC reads numbers only from there (never from contents.fp32_contents)."""
    from kserve.protocol.infer_type import InferOutput, InferResponse

    outputs = [InferOutput(o["name"], list(o["shape"]), o["datatype"], o["data"], o.get("parameters"))
               for o in document["outputs"]]
    return InferResponse(document.get("id"), document.get("model_name"), outputs,
                         model_version=document.get("model_version"), parameters=document.get("parameters"),
                         use_binary_outputs=True)


def archive_model(name: str, mar: str, folder: str):
    """A kserve.Model serving `mar` with its own handler (its class is made here: kserve is imported only by
    this engine's process). HTTP requests reach its batcher straight from tskit.kserve_wire; KServe's gRPC
    servicer calls predict() with its InferRequest."""
    import kserve

    from tskit.unpacked import in_process_handler, unpack

    class ArchiveModel(kserve.Model):
        def load(self) -> bool:
            unpacked = unpack(mar, folder)
            # This engine does not batch continuously: a handler that would stream across calls (a video under
            # continuous batching) answers within its call, its steps sent as intermediate answers.
            unpacked.config.pop("continuousBatching", None)
            threads = unpacked.settings.intraOpThreads
            self.batcher = HandlerBatcher([in_process_handler(unpacked, threads)[0] for _ in range(unpacked.workers)],
                                          unpacked)
            self.ready = True
            return True

        async def predict(self, payload, headers=None, response_headers=None):
            try:
                row = grpc_row(payload, self.name)
            except RequestError as err:
                raise grpc_failure(400, json.dumps(err.to_dict()).encode()) from None
            try:
                arrived = await self.batcher.admit(ADMISSION_WAIT_S)
                answer = await self.batcher.submit(row, arrived)
                if isinstance(answer, Streamed):
                    answer = await gathered(answer)
            except QueueFull:
                raise grpc_failure(503, error_body(503, "ServiceUnavailableException",
                                                   f'Model "{self.name}" has no worker: its queue is full.')) from None
            if answer.status != 200:
                raise grpc_failure(answer.status, answer.body)
            return grpc_response(json.loads(answer.body))

    model = ArchiveModel(name)
    model.load()
    return model


def parser() -> argparse.ArgumentParser:
    """The engine's command line (deploy/clusterservingruntime-engine.yaml's args are checked against it)."""
    parser = argparse.ArgumentParser(prog="python -m tskit.kserve_engine", description=__doc__.splitlines()[0])
    parser.add_argument("--store", required=True, help="the folder of the .mar archives")
    parser.add_argument("--models", nargs="+", help="default: every archive in the store that is not continuously "
                        "batched (the generator needs TorchServe)")
    keys = parser.add_mutually_exclusive_group(required=True)
    keys.add_argument("--key-file", help="key_file.json: its inference key is required")
    keys.add_argument("--no-key", action="store_true", help="no key (a cluster whose mesh authenticates, as the "
                      "cluster TorchServe config of tskit.deploy runs without tokens)")
    parser.add_argument("--host", default="127.0.0.1", help="the address both doors bind (a pod: 0.0.0.0)")
    parser.add_argument("--http-port", type=int, default=9080)
    parser.add_argument("--grpc-port", type=int, default=9081)
    parser.add_argument("--max-request-size", type=int, default=6553500, help="config.properties' max_request_size")
    parser.add_argument("--unpack-dir", required=True, help="each archive is unpacked in a folder of its name here")
    return parser


def store_models(store: str) -> List[str]:
    """The archives in `store` this engine serves: every one that is not continuously batched."""
    from tskit.unpacked import peek

    names = sorted(name[:-len(".mar")] for name in os.listdir(store) if name.endswith(".mar"))
    return [n for n in names if not peek(os.path.join(store, f"{n}.mar")).config.get("continuousBatching")]


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    from kserve.model_server import app

    key = None
    if args.key_file:
        with open(args.key_file, encoding="utf-8") as f:
            key = json.load(f)["inference"]["key"]
    names = args.models or store_models(args.store)
    models = [archive_model(name, os.path.join(args.store, f"{name}.mar"),
                            os.path.join(args.unpack_dir, name)) for name in names]
    batchers = {model.name: model.batcher for model in models}
    wire_app(app, key, batchers, args.max_request_size, ADMISSION_WAIT_S)
    register({name: b.counters for name, b in batchers.items()}, lambda name: batchers[name].depth)
    print(f"loaded {', '.join(names)}", flush=True)
    server = bound_server(args.host, args.http_port, args.grpc_port, key)  # sets KServe's logging: ours after
    log_handlers()
    server.start(models)
    return 0


def log_handlers() -> None:
    """The handlers' own log lines (each batch: `handled batch size=N invalid=M`) to this process's output, as a
    TorchServe worker writes them to the model log, each with its model's name (one process serves them all)."""
    out = logging.StreamHandler(sys.stdout)
    out.setFormatter(logging.Formatter("%(asctime)s [%(model)s] %(name)s %(levelname)s %(message)s"))
    out.addFilter(name_the_model)
    logger = logging.getLogger("handlers")
    logger.setLevel(logging.INFO)
    logger.addHandler(out)
    logger.propagate = False


def name_the_model(record: logging.LogRecord) -> bool:
    record.model = SERVING.get()
    return True


if __name__ == "__main__":
    sys.exit(main())
