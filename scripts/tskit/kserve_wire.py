"""The KServe engine's two doors, on 127.0.0.1 unless told otherwise, with TorchServe's key and the handlers' own
answers.

    HTTP 9080   KServe's FastAPI app. Inference POSTs (`/v1/models/<m>:predict`, `/v2/models/<m>[/versions/<v>]
                /infer`, and TorchServe's `/predictions/<m>`) go from the raw request to the model's batcher
                (tskit.kserve_rows.http_row; a body over max_request_size is 413, a full queue 503): the handler
                reads the body once, as under TorchServe, so its answers, 4xx bodies, binary v2 and budgets are
                TorchServe's byte for byte; a body KServe would have parsed first (and answered 500 or KServe's
                own {"error"} 400) never reaches KServe's parser. Health, metadata and readiness are KServe's.
    gRPC 9081   KServe's GRPCInferenceService: its servicer calls the model's predict() (tskit.kserve_engine);
                a handler's 4xx is INVALID_ARGUMENT with the contract's JSON body as details.
    the key     `authorization: Bearer <inference key>` on every inference call, HTTP header or gRPC metadata;
                TorchServe's InvalidKeyException body otherwise (400 / UNAUTHENTICATED). Probes stay open.
KServe binds 0.0.0.0 and [::] in code: the servers below are subclasses that bind the engine's --host (127.0.0.1
by default; a pod in a cluster passes 0.0.0.0). With no key (--no-key) neither door asks for one.
"""

import asyncio
import json
import re
from typing import Dict, Optional

JSON = "application/json"
INVALID_KEY = json.dumps({"code": 400, "type": "InvalidKeyException", "message": "Token Authorization failed. "
                          "Token either incorrect, expired, or not provided correctly"}).encode()
PROTECTED = ("/predictions/", "/v1/models/", "/v2/models/")  # inference; their GETs (metadata, ready) stay open
# TorchServe's route takes every method and hands what follows the version to the handler as `url_path` (the
# generator's OpenAI routes: /predictions/<m>/<version>/v1/chat/completions, GET .../v1/models)
PLAIN = re.compile(r"^/predictions/(?P<plain>[^/]+)(?:/[^/]+(?:/(?P<url_path>.+))?)?$")
INFER = re.compile(r"^/v1/models/(?P<v1>[^/:]+):predict$|^/v2/models/(?P<v2>[^/]+)(?:/versions/[^/]+)?/infer$")
GRPC_INFER = "/inference.GRPCInferenceService/ModelInfer"
GRPC_REPOSITORY = "/inference.GRPCInferenceService/Repository"
REPOSITORY = "/v2/repository/"  # KServe's model repository extension: the management key (tskit.kserve_rollout)
LOAD = re.compile(r"^/v2/repository/models/(?P<model>[^/]+)/load$")


class QueueFull(Exception):
    """A model's queue holds its jobQueueSize already: the request is refused at once (TorchServe's 503)."""


def error_body(status: int, kind: str, message: str) -> bytes:
    return json.dumps({"code": status, "type": kind, "message": message}).encode()


def wire_app(app, keys: Dict[str, Optional[str]], batchers: Dict[str, object], rollouts, max_request_size: int,
             admission_wait: float) -> None:
    """KServe's FastAPI app: the inference door in front of it, and no slash redirects (`/infer/` is not
    `/infer`: 404 as TorchServe, never a 307). `keys`: key_file.json's inference and management keys (None:
    none asked)."""
    app.add_middleware(InferenceDoor, keys=keys, batchers=batchers, rollouts=rollouts,
                       max_request_size=max_request_size, admission_wait=admission_wait)
    app.router.redirect_slashes = False


class InferenceDoor:
    """The inference routes, answered before KServe's app: the key, then the request straight to its model's
    batcher; TorchServe's plain route (`/predictions/<m>`) and `/ping` beside KServe's v1 and v2. A plain ASGI
    middleware (Starlette's BaseHTTPMiddleware costs a task and a stream per request). A request first gets a
    place in its model's queue, waiting up to `admission_wait` seconds when it is full (503 past that), before
    its body is read: under overload requests wait instead of coming straight back refused, and a waiting
    request holds no body."""

    def __init__(self, app, keys: Dict[str, Optional[str]], batchers: Dict[str, object], rollouts,
                 max_request_size: int, admission_wait: float):
        self.app, self.keys, self.batchers, self.rollouts = app, keys, batchers, rollouts
        self.max_request_size, self.admission_wait = max_request_size, admission_wait

    def refused(self, request, kind: str) -> bool:
        key = self.keys.get(kind)
        return key is not None and request.headers.get("authorization", "") != f"Bearer {key}"

    async def __call__(self, scope, receive, send) -> None:
        from starlette.requests import Request

        response = await self.answer(Request(scope, receive)) if scope["type"] == "http" else None
        if response is None:
            await self.app(scope, receive, send)
        else:
            await response(scope, receive, send)

    async def answer(self, request):
        """The response to an inference request; None for what KServe's app answers (health, metadata, ...)."""
        from starlette.responses import Response

        path = request.url.path
        if path == "/ping":
            return Response(json.dumps({"status": "Healthy"}), media_type=JSON)
        if path.startswith(REPOSITORY):
            return await self.repository(request)
        plain, match = PLAIN.match(path), INFER.match(path)
        if not path.startswith(PROTECTED) or (request.method != "POST" and not match and not plain):
            return None
        if self.refused(request, "inference"):
            return answer_of(400, INVALID_KEY)
        if plain is None and match is None:  # another POST under the models' paths: KServe's (repository, explain)
            return None
        model = plain["plain"] if plain else match["v1"] or match["v2"]
        if request.method != "POST" and not plain:
            return failure(405, "MethodNotAllowedException", f"{request.method} is not allowed")
        return await self.infer(request, model, {"url_path": plain["url_path"] or ""} if plain else {})

    async def infer(self, request, model: str, added: dict):
        """The request through its model's queue: its answer, streamed when the handler streams it."""
        from starlette.responses import Response, StreamingResponse

        from handlers.request_errors import RequestError
        from tskit.kserve_rows import http_row
        from tskit.kserve_streams import Streamed

        if model not in self.batchers:
            return failure(404, "ModelNotFoundException", f"Model not found: {model}")
        batcher = self.batchers[model]
        try:
            arrived = await batcher.admit(self.admission_wait)
        except QueueFull:
            return failure(503, "ServiceUnavailableException", f'Model "{model}" has no worker to serve inference '
                           f"request: its queue stayed full for {self.admission_wait:g} s.")
        try:
            row = await http_row(request, self.max_request_size, added)
        except RequestError as err:
            batcher.leave()
            return answer_of(err.status, json.dumps(err.to_dict()).encode())
        result = await batcher.submit(row, arrived)
        if isinstance(result, Streamed):  # a video's lines, a generator's tokens: sent as they come
            return StreamingResponse(chunks_of(result), status_code=200, headers=result.headers)
        return Response(result.body, status_code=result.status, headers=result.headers)

    async def repository(self, request):
        """KServe's model repository routes, with the management key: `load` is a rollout
        (tskit.kserve_rollout); the engine unloads nothing (it serves what it was started with)."""
        from starlette.responses import Response

        from handlers.request_errors import RequestError

        if self.refused(request, "management"):
            return answer_of(400, INVALID_KEY)
        found = LOAD.match(request.url.path)
        if found is None or request.method != "POST":
            return failure(405 if found else 404, "MethodNotAllowedException" if found else "ResourceNotFoundException",
                           f"{request.method} {request.url.path}: the engine takes POST "
                           f"{REPOSITORY}models/<model>/load (a rollout) only")
        if found["model"] not in self.batchers:
            return failure(404, "ModelNotFoundException", f"Model not found: {found['model']}")
        try:
            body = await request.body()
            archive = (json.loads(body) if body.strip() else {}).get("archive")
            done = await self.rollouts.load(found["model"], archive)
        except (ValueError, AttributeError, RecursionError):
            return failure(400, "BadRequestException", 'the body is JSON {"archive": "<file in the store>"} or empty')
        except RequestError as err:
            return answer_of(err.status, json.dumps(err.to_dict()).encode())
        return Response(json.dumps(done), media_type=JSON)


def failure(status: int, kind: str, message: str):
    return answer_of(status, error_body(status, kind, message))


def answer_of(status: int, body: bytes):
    """A JSON error answer: the contract's body with its status."""
    from starlette.responses import Response

    return Response(body, status_code=status, media_type=JSON)


async def chunks_of(streamed):
    """A stream's chunks as they come; a client that leaves before its end is told to the batcher (Starlette
    closes this generator when the connection drops)."""
    ended = False
    try:
        while (chunk := await streamed.chunks.get()) is not None:
            yield chunk
        ended = True
    finally:
        if not ended:
            streamed.left()


def contract_http_protocol():
    """Uvicorn's HTTP protocol (httptools where installed) whose answer to a request it cannot parse is the
    contract's JSON, as TorchServe's (uvicorn's own is plain text)."""
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    class ContractErrors(AutoHTTPProtocol):
        def send_400_response(self, msg: str) -> None:
            body = error_body(400, "BadRequestException", f"Invalid HTTP message: {msg}")
            self.transport.write(b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n"
                                 + b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body) + body)
            self.transport.close()

    return ContractErrors


def contract_errors(app) -> None:
    """Every error KServe's app answers itself (an unknown path or method, a model it does not know, an
    explainer it has not), in the contract's body with its status, never KServe's {"error"} or FastAPI's
    {"detail"}."""
    from fastapi.responses import Response
    from kserve import errors
    from starlette.exceptions import HTTPException

    by_status = {404: "ResourceNotFoundException", 405: "MethodNotAllowedException", 500: "InternalServerException"}

    def handler(status: int, kind: str = None):
        async def answer(request, error):
            code = getattr(error, "status_code", status)
            return Response(error_body(code, kind or by_status.get(code, "BadRequestException"),
                                       str(getattr(error, "detail", None) or error)[:500]),
                            status_code=code, media_type=JSON)
        return answer

    app.add_exception_handler(HTTPException, handler(404))
    app.add_exception_handler(Exception, handler(500))
    app.add_exception_handler(errors.ModelNotFound, handler(404, "ModelNotFoundException"))
    app.add_exception_handler(errors.ModelNotReady, handler(503, "ServiceUnavailableException"))
    app.add_exception_handler(errors.InvalidInput, handler(400, "BadRequestException"))
    app.add_exception_handler(NotImplementedError, handler(404, "ResourceNotFoundException"))


def grpc_failure(status: int, body: bytes) -> Exception:
    """A handler's error answer as the gRPC status KServe's interceptor sends, the body as its details."""
    from grpc_interceptor import exceptions

    details = body.decode("utf-8", "replace")
    if status in (429, 503):
        return exceptions.Unavailable(details)
    if 400 <= status < 500:
        return exceptions.InvalidArgument(details)
    return exceptions.Internal(details)


def key_interceptor(inference_key: Optional[str]):
    """A gRPC interceptor refusing ModelInfer without the inference key (health and metadata stay open), and
    KServe's repository calls always (its unload would drop a model from gRPC unasked; a rollout is HTTP's
    `POST /v2/repository/models/<m>/load` with the management key)."""
    import grpc
    from grpc.aio import ServerInterceptor

    async def refuse(request, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, INVALID_KEY.decode())

    async def not_here(request, context):
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "the engine's repository is HTTP: POST "
                            "/v2/repository/models/<model>/load with the management key (a rollout)")

    class KeyInterceptor(ServerInterceptor):
        async def intercept_service(self, continuation, details):
            if details.method.startswith(GRPC_REPOSITORY):
                return grpc.unary_unary_rpc_method_handler(not_here)
            if details.method == GRPC_INFER and inference_key is not None:
                sent = dict(details.invocation_metadata or ()).get("authorization", "")
                if sent != f"Bearer {inference_key}":
                    return grpc.unary_unary_rpc_method_handler(refuse)
            return await continuation(details)

    return KeyInterceptor()


def bound_server(host: str, http_port: int, grpc_port: int, inference_key: Optional[str]):
    """KServe's ModelServer with REST and gRPC on `host` only (kserve 0.21's single-process start path)."""
    from concurrent import futures

    from grpc import aio
    from kserve import ModelServer
    from kserve.constants.constants import FASTAPI_APP_IMPORT_STRING
    from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc
    from kserve.protocol.grpc.interceptors import ExceptionToStatusInterceptor
    from kserve.protocol.grpc.server import GRPCServer
    from kserve.protocol.grpc.servicer import InferenceServicer
    from kserve.protocol.rest.server import RESTServer

    class BoundRESTServer(RESTServer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.config.host = host
            self.config.http = contract_http_protocol()

        def _add_exception_handlers(self, app) -> None:  # KServe's, then ours over them
            super()._add_exception_handlers(app)
            contract_errors(app)

    class BoundGRPCServer(GRPCServer):
        async def start(self, max_workers):
            self._server = aio.server(futures.ThreadPoolExecutor(max_workers=max_workers),
                                      interceptors=(key_interceptor(inference_key), ExceptionToStatusInterceptor()))
            grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
                InferenceServicer(self._data_plane, self._model_repository_extension), self._server)
            self._server.add_insecure_port(f"{host}:{self._port}")
            await self._server.start()
            await self._server.wait_for_termination()

    class BoundModelServer(ModelServer):
        def start(self, models) -> None:
            self._register_and_check_atleast_one_model_is_ready(models)
            self._rest_server = BoundRESTServer(
                FASTAPI_APP_IMPORT_STRING, self.dataplane, self.model_repository_extension, self.http_port,
                access_log_format=self.access_log_format, workers=1, grace_period=self.grace_period,
                event_loop=self.event_loop, timeout_keep_alive=self.timeout_keep_alive)
            self.servers.append(self._rest_server.start())
            self._grpc_server = BoundGRPCServer(self.grpc_port, self.dataplane, self.model_repository_extension,
                                                   kwargs={}, grace_period=self.grace_period)
            self.servers.append(self._grpc_server.start(self.max_threads))
            self.setup_event_loop()
            self.register_signal_handler()
            asyncio.run(self._serve())

    return BoundModelServer(http_port=http_port, grpc_port=grpc_port, enable_grpc=True, workers=1)
