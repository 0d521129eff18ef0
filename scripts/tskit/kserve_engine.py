"""A second engine: KServe's Python ModelServer (kserve 0.21) serving the archives `make archives` built, with
each archive's own handler doing the work (`make serve ENGINE=kserve`; run as `python -m tskit.kserve_engine`).

TorchServe is archived; KServe's ModelServer is maintained. Nothing is rebuilt: each served declaration's .mar is
unpacked (tskit.unpacked) and its handler class initialised with TorchServe's own Context, exactly as a TorchServe
worker does, so the answers, the 4xx bodies, the budgets and the protocols (KServe v1, Open Inference Protocol
v2, JSON and binary) are the handler's. What TorchServe did around the handler is done here:
    rows            tskit.kserve_rows: the request as TorchServe's worker hands it (HTTP), or a gRPC v2 request
                    in v2's binary form
    batching        HandlerBatcher: requests gathered up to the declaration's batchSize within its maxBatchDelay,
                    one batch at a time per model on a thread of its own (one TorchServe worker's behaviour);
                    StepBatcher: a continuously batched archive's steps (ContinuousBatching.java's behaviour)
    the doors       tskit.kserve_wire: HTTP 9080 and gRPC 9081 on 127.0.0.1, the inference key, error answers
    rollouts        tskit.kserve_rollout: a model's next archive swapped in with no request failed
"""

import argparse
import asyncio
import contextvars
import json
import logging
import os
import sys
import uuid
from dataclasses import dataclass
from typing import Dict, List, Optional, Union

from handlers.request_errors import RequestError
from tskit.kserve_metrics import QueueCounters, register
from tskit.kserve_rollout import Rollouts
from tskit.kserve_rows import Row, grpc_row
from tskit.kserve_streams import Answer, FrameSink, Streamed
from tskit.kserve_wire import JSON, QueueFull, bound_server, error_body, grpc_failure, wire_app

ADMISSION_WAIT_S = 2.0  # how long a request waits for a place in a full queue: the stated wait (tskit.admission)
STREAM_NEXT = "ts_stream_next"  # TorchServe's mark of a reply with more to come
SERVING = contextvars.ContextVar("serving", default="-")  # the model whose batch this thread runs


@dataclass
class Pending:
    row: Row
    future: asyncio.Future
    request_id: str
    enqueued: float  # the event loop's clock when it arrived (its wait for a place counts as queue wait)
    chunks: Optional[asyncio.Queue] = None
    sent: bool = False  # a handler call has had its body (continuous batching sends it again without)
    closed: bool = False  # its client left while its answer streamed


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
        self.going: List[Pending] = []  # continuous batching: requests whose answers go on at the next call
        self.admitted = 0  # requests holding a place (queued, or their body being read)
        self.tasks: List[asyncio.Task] = []
        self.counters = QueueCounters()  # tskit.kserve_metrics

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
            self.tasks = [loop.create_task(self.run(handler)) for handler in self.handlers]
        arrived = loop.time()
        try:
            await asyncio.wait_for(self.slots.acquire(), wait)
        except asyncio.TimeoutError:
            self.counters.refused += 1
            raise QueueFull() from None
        self.admitted += 1
        return arrived

    def leave(self) -> None:
        """An admitted request that will not be queued (its body could not be read) gives its place back."""
        self.admitted -= 1
        self.slots.release()

    async def drained(self, timeout: float) -> None:
        """Once no request is admitted, queued, running or going on (a rollout's old version), or `timeout`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (self.admitted or self.running or self.going) and loop.time() < deadline:
            await asyncio.sleep(0.05)

    def stop(self) -> None:
        """Its handlers' tasks cancelled, their archive's folder removed (a rollout's old version). A request
        still here after the drain's timeout is answered, never left hanging: a stream ends where it is, one
        not begun gets 503."""
        for task in self.tasks:
            task.cancel()
        left = [*self.going, *self.running.values()]
        while self.queue is not None and not self.queue.empty():
            left.append(self.queue.get_nowait())
        gone = error_body(503, "ServiceUnavailableException", f'Model "{self.unpacked.model_name}": the version '
                          "serving this request was replaced before it was answered; send it again.")
        for pending in left:
            if pending.chunks is not None:
                pending.chunks.put_nowait(None)
            elif not pending.future.done():
                pending.future.set_result(Answer(503, gone, {"content-type": JSON}))
        self.going, self.running = [], {}
        self.handlers = []
        self.unpacked.cleanup()

    async def submit(self, row: Row, arrived: float) -> Union[Answer, Streamed]:
        """An admitted request's row to the queue: its answer (or its stream) once its batch has run."""
        loop = asyncio.get_running_loop()
        pending = Pending(row, loop.create_future(), str(uuid.uuid4()), arrived)  # TorchServe's ids: x-request-id
        self.queue.put_nowait(pending)
        self.counters.requests += 1
        return await pending.future

    async def next_batch(self, loop, room: int, wait: bool) -> List[Pending]:
        """Up to `room` requests from the queue, their places freed. `wait`: the first as it comes and more within
        maxBatchDelay (TorchServe's batch); otherwise only those already waiting (continuous batching's joiners,
        taken without delaying the running requests' next step)."""
        batch = []
        if wait and room > 0:
            batch.append(await self.queue.get())
            deadline = loop.time() + self.delay
            while len(batch) < room and (remaining := deadline - loop.time()) > 0:
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), remaining))
                except asyncio.TimeoutError:
                    break
        while not wait and len(batch) < room and not self.queue.empty():
            batch.append(self.queue.get_nowait())
        for _ in batch:  # out of the queue: their places are free
            self.slots.release()
        self.admitted -= len(batch)
        self.counters.queue_wait_us += sum(loop.time() - p.enqueued for p in batch) * 1e6
        return batch

    async def run(self, handler) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self.next_batch(loop, self.batch_size, wait=True)
            for pending, answer in zip(batch, await self.call(handler, batch, loop)):
                self.deliver(pending, answer)

    async def call(self, handler, batch: List[Pending], loop) -> List[Answer]:
        """One handle() call on a thread of its own; if the glue itself fails, every request of it gets a 500."""
        self.running.update({p.request_id: p for p in batch})
        try:
            SERVING.set(self.unpacked.model_name)  # to_thread copies the context: the batch's log lines
            return await asyncio.to_thread(self.handle, handler, batch, loop)
        except Exception as err:  # the handler isolates requests; this is the glue failing: answer them all
            return [Answer(500, error_body(500, "InternalError", str(err)), {"content-type": JSON}) for _ in batch]
        finally:
            for pending in batch:
                self.running.pop(pending.request_id, None)
                pending.sent = True

    def deliver(self, pending: Pending, answer: Answer) -> bool:
        """A reply to its request: the answer, a chunk of its stream (`answer.more`), or a stream's last chunk.
        True while the request goes on (continuous batching sends it to the next call)."""
        if answer.more:
            if pending.chunks is None:
                self.open_stream(pending, answer.headers)
            pending.chunks.put_nowait(answer.body)
            return not pending.closed
        if pending.chunks is not None:  # a stream: its final answer is its last chunk
            pending.chunks.put_nowait(answer.body)
            pending.chunks.put_nowait(None)
        elif not pending.future.done():
            pending.future.set_result(Answer(answer.status, answer.body,
                                             {**answer.headers, "x-request-id": pending.request_id}))
        return False

    def open_stream(self, pending: Pending, headers: Dict[str, str]) -> None:
        """The request's answer becomes a stream (a chunked 200 with the first reply's headers)."""
        pending.chunks = asyncio.Queue()
        headers = {**{k: v for k, v in headers.items() if k != STREAM_NEXT}, "x-request-id": pending.request_id}
        pending.future.set_result(Streamed(headers, pending.chunks,
                                           lambda: setattr(pending, "closed", True)))

    def handle(self, handler, batch: List[Pending], loop) -> List[Answer]:
        """One handle() call, as a TorchServe worker makes it: the rows, each request's id and headers on the
        Context, and a socket that takes intermediate answers (tskit.kserve_streams). A request already sent
        (continuous batching) comes again with its headers and no body, as TorchServe sends a cached one."""
        from ts.context import RequestProcessor

        context = self.unpacked.context()
        context.request_processor = [RequestProcessor(p.row.cached_headers() if p.sent else p.row.headers)
                                     for p in batch]
        context.request_ids = {i: p.request_id for i, p in enumerate(batch)}
        context.cl_socket = FrameSink(lambda rid, chunk, headers: loop.call_soon_threadsafe(self.stream, rid, chunk,
                                                                                          headers))
        outputs = handler.handle([{} if p.sent else p.row.parts for p in batch], context)
        return [Answer((context.get_response_status(i) or (200,))[0] or 200,
                       out if isinstance(out, bytes) else str(out).encode(),
                       {"content-type": JSON, **context.get_response_headers(i)}, more=continues(context, i, out))
                for i, out in enumerate(outputs)]

    def stream(self, request_id: str, chunk: bytes, headers: Dict[str, str]) -> None:
        """An intermediate answer (on the event loop): the request's answer becomes a stream, this its chunk."""
        pending = self.running.get(request_id)
        if pending is None:
            return
        if pending.chunks is None:
            self.open_stream(pending, headers)
        pending.chunks.put_nowait(chunk)


class StepBatcher(HandlerBatcher):
    """A continuously batched archive (`continuousBatching: true`: the text generator, a video declared so), as
    TorchServe's ContinuousBatching.java runs it: one handler call per step with every running request (sent
    again without its body) plus new ones up to batchSize (waiting maxBatchDelay only when none runs); a request
    stays while its reply says more is coming (`ts_stream_next: true`) and its client is still there. A client
    that left is not sent again: the handler frees its state at that call, as under TorchServe."""

    async def run(self, handler) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self.going = [p for p in self.going if not p.closed]
            batch = self.going + await self.next_batch(loop, self.batch_size - len(self.going), wait=not self.going)
            answers = await self.call(handler, batch, loop)
            self.going = [pending for pending, answer in zip(batch, answers) if self.deliver(pending, answer)]


def continues(context, idx: int, output) -> bool:
    """Whether request `idx`'s reply is one of more (TorchServe's worker marks it `ts_stream_next: true` by the
    handler's stopping criterion: ts/protocol/otf_message_handler.create_predict_response)."""
    criteria = context.stopping_criteria
    return bool(criteria) and criteria[idx](output) is False

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
            threads = unpacked.settings.intraOpThreads
            batcher = StepBatcher if unpacked.config.get("continuousBatching") else HandlerBatcher
            self.batcher = batcher([in_process_handler(unpacked, threads)[0] for _ in range(unpacked.workers)],
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
    parser.add_argument("--models", nargs="+", help="default: every archive in the store")
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
    """The archives in `store` this engine serves by default: every one."""
    return sorted(name[:-len(".mar")] for name in os.listdir(store) if name.endswith(".mar"))


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    from kserve.model_server import app

    keys = {"inference": None, "management": None}
    if args.key_file:
        with open(args.key_file, encoding="utf-8") as f:
            keys = {kind: entry["key"] for kind, entry in json.load(f).items()}
    names = args.models or store_models(args.store)
    models = [archive_model(name, os.path.join(args.store, f"{name}.mar"),
                            os.path.join(args.unpack_dir, name)) for name in names]
    batchers = {model.name: model.batcher for model in models}
    register({name: b.counters for name, b in batchers.items()}, lambda name: batchers[name].depth)
    print(f"loaded {', '.join(names)}", flush=True)
    # sets KServe's logging: ours after
    server = bound_server(args.host, args.http_port, args.grpc_port, keys["inference"])
    rollouts = Rollouts(args.store, args.unpack_dir, batchers, server.registered_models, archive_model)
    wire_app(app, keys, batchers, rollouts, args.max_request_size, ADMISSION_WAIT_S)
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
