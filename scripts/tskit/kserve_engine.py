"""A second engine: KServe's Python ModelServer (kserve 0.21) serving the archives `make archives` built, with
each archive's own handler doing the work (`make serve ENGINE=kserve`; run as `python -m tskit.kserve_engine`).

TorchServe is archived; KServe's ModelServer is maintained. Nothing is rebuilt: each served declaration's .mar is
unpacked (tskit.unpacked) and its handler class initialised with TorchServe's own Context, exactly as a TorchServe
worker does, so the answers, the 4xx bodies, the budgets and the protocols (KServe v1, Open Inference Protocol
v2 JSON) are the handler's. What TorchServe's frontend did is done here:
    batching        HandlerBatcher: requests gathered up to the declaration's batchSize within its maxBatchDelay,
                    one batch at a time per model on a thread of its own (one TorchServe worker's behaviour)
    errors          the handler's status and body as they are (KServe would wrap them in {"error": ...} as 400)
    the key         `Authorization: Bearer <inference key>` of key_file.json on every inference route; TorchServe's
                    400 InvalidKeyException body otherwise (health and metadata stay open, as probes need)
    loopback        KServe binds 0.0.0.0 in code: LoopbackRESTServer listens on 127.0.0.1 only
Not yet here (issue 28): gRPC v2 on 9081, v2's binary extension, Prometheus metrics of our own, the generator.
"""

import argparse
import asyncio
import json
import logging
import os
import sys
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

JSON = "application/json"
INVALID_KEY = json.dumps({"code": 400, "type": "InvalidKeyException", "message": "Token Authorization failed. "
                          "Token either incorrect, expired, or not provided correctly"}).encode()
PROTECTED = ("/v1/models/", "/v2/models/")  # inference routes; their GET (metadata, ready) stays open


class Answered(Exception):
    """A request the handler answered with an error status: sent with that status and the handler's body."""

    def __init__(self, status: int, body: bytes):
        super().__init__(status)
        self.status, self.body = status, body


@dataclass
class Pending:
    body: object            # the row TorchServe would hand the handler: a parsed JSON document
    headers: Dict[str, str]
    future: asyncio.Future


class HandlerBatcher:
    """The requests of one model, run by its handler in the declaration's batches (TorchServe's batching)."""

    def __init__(self, handler, unpacked):
        self.handler, self.unpacked = handler, unpacked
        self.batch_size, self.delay = unpacked.batch_size, unpacked.max_batch_delay_ms / 1000
        self.queue: Optional[asyncio.Queue] = None

    async def submit(self, body: object, headers: Dict[str, str]) -> Tuple[int, bytes]:
        if self.queue is None:  # made in the server's event loop, on its first request
            self.queue = asyncio.Queue()
            asyncio.get_running_loop().create_task(self.run())
        pending = Pending(body, headers, asyncio.get_running_loop().create_future())
        await self.queue.put(pending)
        return await pending.future

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            deadline = loop.time() + self.delay
            while len(batch) < self.batch_size and (remaining := deadline - loop.time()) > 0:
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), remaining))
                except asyncio.TimeoutError:
                    break
            try:
                answers = await asyncio.to_thread(self.handle, batch)
            except Exception as err:  # the handler isolates requests; this is the glue failing: answer them all
                answers = [(500, json.dumps({"code": 500, "type": "InternalError", "message": str(err)}).encode())
                           for _ in batch]
            for pending, answer in zip(batch, answers):
                if not pending.future.done():
                    pending.future.set_result(answer)

    def handle(self, batch: List[Pending]) -> List[Tuple[int, bytes]]:
        """One handle() call, as a TorchServe worker makes it: rows, each request's headers on the Context."""
        from ts.context import RequestProcessor

        context = self.unpacked.context()
        context.request_processor = [RequestProcessor({"body": {"content-type": JSON}, **p.headers}) for p in batch]
        outputs = self.handler.handle([{"body": p.body} for p in batch], context)
        return [((context.get_response_status(i) or (200,))[0] or 200, out if isinstance(out, bytes) else
                 str(out).encode()) for i, out in enumerate(outputs)]


def v2_document(request) -> dict:
    """A KServe InferRequest (v2 JSON, decoded by KServe) as the v2 document the handler reads."""
    inputs = []
    for tensor in request.inputs:
        entry = {"name": tensor.name, "shape": list(tensor.shape), "datatype": tensor.datatype,
                 "data": [x.decode("utf-8", "surrogateescape") if isinstance(x, bytes) else x
                          for x in list(tensor.data)]}
        if tensor.parameters:
            entry["parameters"] = dict(tensor.parameters)
        inputs.append(entry)
    document = {"inputs": inputs}
    if request.id:
        document["id"] = request.id
    if request.parameters:
        document["parameters"] = dict(request.parameters)
    return document


def archive_model(name: str, mar: str, folder: str):
    """A kserve.Model serving `mar` with its own handler (its class is made here: kserve is imported only by
    this engine's process)."""
    import kserve
    from kserve.protocol.infer_type import InferRequest

    from tskit.unpacked import in_process_handler, unpack

    class ArchiveModel(kserve.Model):
        def load(self) -> bool:
            unpacked = unpack(mar, folder)
            handler, _ = in_process_handler(unpacked, unpacked.settings.intraOpThreads)
            self.batcher = HandlerBatcher(handler, unpacked)
            self.ready = True
            return True

        async def predict(self, payload, headers=None, response_headers=None):
            v2 = isinstance(payload, InferRequest)
            status, body = await self.batcher.submit(v2_document(payload) if v2 else payload, dict(headers or {}))
            if status != 200:
                raise Answered(status, body)
            return body  # the handler's own bytes, sent as they are

    model = ArchiveModel(name)
    model.load()
    return model


def wire_app(app, inference_key: str) -> None:
    """KServe's FastAPI app: the handler's own error answers, and the inference key on the inference routes."""
    from fastapi.responses import Response

    async def answered(request, error: Answered):
        return Response(error.body, status_code=error.status, media_type=JSON)

    async def check_key(request, call_next):
        if request.method == "POST" and request.url.path.startswith(PROTECTED):
            if request.headers.get("authorization", "") != f"Bearer {inference_key}":
                return Response(INVALID_KEY, status_code=400, media_type=JSON)
            response = await call_next(request)
            if "content-type" not in response.headers:  # KServe drops it from bytes answers: they are JSON
                response.headers["content-type"] = JSON
            return response
        return await call_next(request)

    app.add_exception_handler(Answered, answered)
    app.middleware("http")(check_key)


def loopback_server(http_port: int):
    """KServe's ModelServer whose REST server listens on 127.0.0.1 only: KServe writes 0.0.0.0 into uvicorn's
    Config, so the REST server is a subclass that sets the host, and start() (kserve 0.21's single-process path)
    builds it. gRPC is off until it is ours too."""
    from kserve import ModelServer
    from kserve.constants.constants import FASTAPI_APP_IMPORT_STRING
    from kserve.protocol.rest.server import RESTServer

    class LoopbackRESTServer(RESTServer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.config.host = "127.0.0.1"

    class LoopbackModelServer(ModelServer):
        def start(self, models) -> None:
            self._register_and_check_atleast_one_model_is_ready(models)
            self._rest_server = LoopbackRESTServer(
                FASTAPI_APP_IMPORT_STRING, self.dataplane, self.model_repository_extension, self.http_port,
                access_log_format=self.access_log_format, workers=1, grace_period=self.grace_period,
                event_loop=self.event_loop, timeout_keep_alive=self.timeout_keep_alive)
            self.servers.append(self._rest_server.start())
            self.setup_event_loop()
            self.register_signal_handler()
            asyncio.run(self._serve())

    return LoopbackModelServer(http_port=http_port, enable_grpc=False, workers=1)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tskit.kserve_engine", description=__doc__.splitlines()[0])
    parser.add_argument("--store", required=True, help="the folder of the .mar archives")
    parser.add_argument("--models", nargs="+", required=True)
    parser.add_argument("--key-file", required=True, help="key_file.json: its inference key is required")
    parser.add_argument("--http-port", type=int, default=9080)
    parser.add_argument("--unpack-dir", required=True, help="each archive is unpacked in a folder of its name here")
    args = parser.parse_args(argv)
    from kserve.model_server import app

    with open(args.key_file, encoding="utf-8") as f:
        wire_app(app, json.load(f)["inference"]["key"])
    models = [archive_model(name, os.path.join(args.store, f"{name}.mar"),
                            os.path.join(args.unpack_dir, name)) for name in args.models]
    print(f"loaded {', '.join(args.models)}", flush=True)
    server = loopback_server(args.http_port)  # configures KServe's logging: the handlers' lines are added after
    log_handlers()
    server.start(models)
    return 0


def log_handlers() -> None:
    """The handlers' own log lines (each batch: `handled batch size=N invalid=M`) to this process's output, as a
    TorchServe worker writes them to the model log."""
    out = logging.StreamHandler(sys.stdout)
    out.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    logger = logging.getLogger("handlers")
    logger.setLevel(logging.INFO)
    logger.addHandler(out)
    logger.propagate = False


if __name__ == "__main__":
    sys.exit(main())
