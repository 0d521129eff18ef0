"""The KServe engine's two doors, on 127.0.0.1 only, with TorchServe's key and the handlers' own answers.

    HTTP 9080   KServe's FastAPI app. Inference POSTs (`/v1/models/<m>:predict`, `/v2/models/<m>[/versions/<v>]
                /infer`) go from the raw request to the model's batcher (tskit.kserve_rows.http_row): the handler
                reads the body once, as under TorchServe, so its answers, 4xx bodies, binary v2 and budgets are
                TorchServe's byte for byte; a body KServe would have parsed first (and answered 500 or KServe's
                own {"error"} 400) never reaches KServe's parser. Health, metadata and readiness are KServe's.
    gRPC 9081   KServe's GRPCInferenceService: its servicer calls the model's predict() (tskit.kserve_engine);
                a handler's 4xx is INVALID_ARGUMENT with the contract's JSON body as details.
    the key     `authorization: Bearer <inference key>` on every inference call, HTTP header or gRPC metadata;
                TorchServe's InvalidKeyException body otherwise (400 / UNAUTHENTICATED). Probes stay open.
KServe binds 0.0.0.0 and [::] in code: the loopback servers below are subclasses that bind 127.0.0.1.
"""

import asyncio
import json
import re
from typing import Dict

JSON = "application/json"
INVALID_KEY = json.dumps({"code": 400, "type": "InvalidKeyException", "message": "Token Authorization failed. "
                          "Token either incorrect, expired, or not provided correctly"}).encode()
PROTECTED = ("/v1/models/", "/v2/models/")  # inference routes; their GET (metadata, ready) stays open
INFER = re.compile(r"^/v1/models/(?P<v1>[^/:]+):predict$|^/v2/models/(?P<v2>[^/]+)(?:/versions/[^/]+)?/infer$")
GRPC_INFER = "/inference.GRPCInferenceService/ModelInfer"


def wire_app(app, inference_key: str, batchers: Dict[str, object]) -> None:
    """KServe's FastAPI app: the key on the inference routes, and their requests straight to the batchers."""
    from fastapi.responses import Response

    from handlers.request_errors import RequestError
    from tskit.kserve_rows import http_row

    async def serve_inference(request, call_next):
        if request.method != "POST" or not request.url.path.startswith(PROTECTED):
            return await call_next(request)
        if request.headers.get("authorization", "") != f"Bearer {inference_key}":
            return Response(INVALID_KEY, status_code=400, media_type=JSON)
        match = INFER.match(request.url.path)
        batcher = batchers.get(match["v1"] or match["v2"]) if match else None
        if batcher is None:  # another route, or a model this engine does not serve: KServe answers
            return await call_next(request)
        try:
            row = await http_row(request)
        except RequestError as err:
            return Response(json.dumps(err.to_dict()).encode(), status_code=err.status, media_type=JSON)
        answer = await batcher.submit(row)
        return Response(answer.body, status_code=answer.status, headers=answer.headers)

    app.middleware("http")(serve_inference)


def grpc_failure(status: int, body: bytes) -> Exception:
    """A handler's error answer as the gRPC status KServe's interceptor sends, the body as its details."""
    from grpc_interceptor import exceptions

    details = body.decode("utf-8", "replace")
    if status in (429, 503):
        return exceptions.Unavailable(details)
    if 400 <= status < 500:
        return exceptions.InvalidArgument(details)
    return exceptions.Internal(details)


def key_interceptor(inference_key: str):
    """A gRPC interceptor refusing ModelInfer without the inference key (health and metadata stay open)."""
    import grpc
    from grpc.aio import ServerInterceptor

    async def refuse(request, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, INVALID_KEY.decode())

    class KeyInterceptor(ServerInterceptor):
        async def intercept_service(self, continuation, details):
            if details.method == GRPC_INFER:
                sent = dict(details.invocation_metadata or ()).get("authorization", "")
                if sent != f"Bearer {inference_key}":
                    return grpc.unary_unary_rpc_method_handler(refuse)
            return await continuation(details)

    return KeyInterceptor()


def loopback_server(http_port: int, grpc_port: int, inference_key: str):
    """KServe's ModelServer with REST and gRPC on 127.0.0.1 only (kserve 0.21's single-process start path)."""
    from concurrent import futures

    from grpc import aio
    from kserve import ModelServer
    from kserve.constants.constants import FASTAPI_APP_IMPORT_STRING
    from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc
    from kserve.protocol.grpc.interceptors import ExceptionToStatusInterceptor
    from kserve.protocol.grpc.server import GRPCServer
    from kserve.protocol.grpc.servicer import InferenceServicer
    from kserve.protocol.rest.server import RESTServer

    class LoopbackRESTServer(RESTServer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.config.host = "127.0.0.1"

    class LoopbackGRPCServer(GRPCServer):
        async def start(self, max_workers):
            self._server = aio.server(futures.ThreadPoolExecutor(max_workers=max_workers),
                                      interceptors=(key_interceptor(inference_key), ExceptionToStatusInterceptor()))
            grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
                InferenceServicer(self._data_plane, self._model_repository_extension), self._server)
            self._server.add_insecure_port(f"127.0.0.1:{self._port}")
            await self._server.start()
            await self._server.wait_for_termination()

    class LoopbackModelServer(ModelServer):
        def start(self, models) -> None:
            self._register_and_check_atleast_one_model_is_ready(models)
            self._rest_server = LoopbackRESTServer(
                FASTAPI_APP_IMPORT_STRING, self.dataplane, self.model_repository_extension, self.http_port,
                access_log_format=self.access_log_format, workers=1, grace_period=self.grace_period,
                event_loop=self.event_loop, timeout_keep_alive=self.timeout_keep_alive)
            self.servers.append(self._rest_server.start())
            self._grpc_server = LoopbackGRPCServer(self.grpc_port, self.dataplane, self.model_repository_extension,
                                                   kwargs={}, grace_period=self.grace_period)
            self.servers.append(self._grpc_server.start(self.max_threads))
            self.setup_event_loop()
            self.register_signal_handler()
            asyncio.run(self._serve())

    return LoopbackModelServer(http_port=http_port, grpc_port=grpc_port, enable_grpc=True, workers=1)
