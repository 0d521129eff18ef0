"""TorchServe's gRPC APIs (inference 7070, management 7071), with the same tokens and answers as over HTTP.

The stubs are generated from the .proto files inside the installed TorchServe jar (grpcio-tools) into
scripts/ts_grpc/ (`python -m tskit.grpc_client`, run by `make serve` and `make test`; git-ignored), so
they always match the server. Tokens go as metadata `authorization: Bearer <key>`; the keys and their
renewal (on expiry only) come from tskit.client's TorchServeClient, whose `grpc()` makes this client.
"""

import json
import os
import shutil
import sys
import tempfile
import zipfile
from typing import Iterator, List, Optional

STUBS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "ts_grpc")
PROTOS = ("inference.proto", "management.proto", "open_inference_grpc.proto")


def server_jar() -> str:
    import ts

    return os.path.join(os.path.dirname(ts.__file__), "frontend", "model-server.jar")


def generate_stubs(out: str = STUBS) -> None:
    """inference_pb2(_grpc) and management_pb2(_grpc) as the package `ts_grpc`, from the jar's protos."""
    from grpc_tools import protoc

    with tempfile.TemporaryDirectory() as tmp, zipfile.ZipFile(server_jar()) as jar:
        os.makedirs(os.path.join(tmp, "ts_grpc"))
        for name in PROTOS:  # under ts_grpc/ so the generated imports read `from ts_grpc import ...`
            with open(os.path.join(tmp, "ts_grpc", name), "wb") as f:
                f.write(jar.read(name))
        includes = os.path.join(os.path.dirname(protoc.__file__), "_proto")  # google/protobuf/*.proto
        staging = os.path.join(tmp, "out")
        os.makedirs(staging)
        for name in PROTOS:
            code = protoc.main(["protoc", f"-I{tmp}", f"-I{includes}", f"-I{_googleapis_protos()}",
                                f"--python_out={staging}", f"--grpc_python_out={staging}", f"ts_grpc/{name}"])
            if code != 0:
                raise RuntimeError(f"protoc failed on {name} from {server_jar()}")
        open(os.path.join(staging, "ts_grpc", "__init__.py"), "w").close()
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(os.path.join(staging, "ts_grpc"), out)


def _googleapis_protos() -> str:
    """The folder above google/rpc/status.proto (googleapis-common-protos ships the .proto files)."""
    import google.rpc.status_pb2 as status

    return os.path.dirname(os.path.dirname(os.path.dirname(status.__file__)))


class GrpcError(Exception):
    """A gRPC call that failed: its status code name and details."""


class GrpcClient:
    """The CLI's gRPC side: ping, predict, stream, list, describe, scale (answers parsed like HTTP's)."""

    def __init__(self, client, inference_address: str, management_address: str, timeout: float = 60):
        import grpc

        try:
            from ts_grpc import inference_pb2_grpc, management_pb2_grpc
        except ImportError:
            raise GrpcError("gRPC stubs are missing: run `make serve` or `.venv/bin/python -m tskit.grpc_client`") from None
        self.client, self.timeout = client, timeout
        self.inference = inference_pb2_grpc.InferenceAPIsServiceStub(grpc.insecure_channel(inference_address))
        self.management = management_pb2_grpc.ManagementAPIsServiceStub(grpc.insecure_channel(management_address))

    def _call(self, method, request, kind: str):
        """One call with `kind`'s key; a rejected key is handled as over HTTP (renewed only if expired)."""
        import grpc

        for attempt in range(2):
            sent = self.client.key(kind)
            metadata = [("authorization", f"Bearer {sent}")] if sent is not None else []
            try:
                return method(request, metadata=metadata, timeout=self.timeout)
            except grpc.RpcError as err:
                if attempt == 0 and sent is not None and "token" in (err.details() or "").lower():
                    self.client.after_rejection(kind, sent)
                    continue
                raise GrpcError(f"{err.code().name}: {err.details()}") from None

    def ping(self) -> dict:
        from google.protobuf import empty_pb2

        return json.loads(self._call(self.inference.Ping, empty_pb2.Empty(), "inference").health)

    def _prediction_request(self, model: str, body: bytes, version: Optional[str]):
        from ts_grpc import inference_pb2

        # the handler reads input "data" as it reads a multipart field or a raw body
        return inference_pb2.PredictionsRequest(model_name=model, model_version=version or "", input={"data": body})

    def predict(self, model: str, body: bytes, version: Optional[str] = None) -> dict:
        return json.loads(self.predict_bytes(model, body, version))

    def predict_bytes(self, model: str, body: bytes, version: Optional[str] = None) -> bytes:
        """The answer as it came (a video's is NDJSON: a line per frame)."""
        return self._call(self.inference.Predictions, self._prediction_request(model, body, version),
                          "inference").prediction

    def stream(self, model: str, body: bytes, version: Optional[str] = None) -> List[dict]:
        """StreamPredictions: this package's handlers answer it with one final message."""
        responses: Iterator = self._call(self.inference.StreamPredictions,
                                         self._prediction_request(model, body, version), "inference")
        import grpc

        try:
            return [json.loads(r.prediction) for r in responses]
        except grpc.RpcError as err:
            raise GrpcError(f"{err.code().name}: {err.details()}") from None

    def _management(self, method: str, request) -> object:
        """The management answer: JSON where TorchServe sends JSON, else its message as HTTP words it."""
        message = self._call(getattr(self.management, method), request, "management").msg
        try:
            return json.loads(message)
        except ValueError:
            return {"status": message}

    def list_models(self) -> dict:
        from ts_grpc import management_pb2

        return self._management("ListModels", management_pb2.ListModelsRequest(limit=100))

    def describe(self, model: str, version: Optional[str] = None) -> list:
        from ts_grpc import management_pb2

        return self._management("DescribeModel", management_pb2.DescribeModelRequest(model_name=model,
                                                                                      model_version=version or ""))

    def scale(self, model: str, min_workers: int, max_workers: Optional[int] = None,
              version: Optional[str] = None) -> dict:
        from ts_grpc import management_pb2

        request = management_pb2.ScaleWorkerRequest(model_name=model, model_version=version or "",
                                                    min_worker=min_workers, max_worker=max_workers or min_workers,
                                                    synchronous=True)
        return self._management("ScaleWorker", request)


if __name__ == "__main__":
    generate_stubs()
    print(f"gRPC stubs written to {STUBS}", file=sys.stderr)
