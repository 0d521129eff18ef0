"""KServe's Python SDK (`kserve.InferenceRESTClient`, protocol v2) against the real server, for every served
model, in its default binary-tensor mode and in JSON mode.

With `set_data_from_numpy(..., binary_data=True)` (the SDK's default) the SDK sends
`application/octet-stream` with the `Inference-Header-Content-Length` extension (JSON header, then the
raw BYTES element); in JSON mode, `application/json` with the element in the JSON. Outputs asked for
with `binary_data` come back binary. Each answer must equal the plain /predictions answer of the same
input (the reference), and no worker may restart.
"""

import asyncio
import json

import grpc
import httpx
import numpy as np
import pytest
from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, RESTConfig
from kserve.protocol.infer_type import RequestedOutput

from support import CAT_LABELS, v2_case, v2_input, worker_ids
from tskit.declaration import served

KIND_OF = {d.name: d.kind for d in served() if d.kind != "text-generator"}  # its own: test_generator.py
BINARY_HEADER = "inference-header-content-length"  # set on an answer that carries binary outputs


async def _infer(server, request: InferRequest, answer_headers: dict):
    async with InferenceRESTClient(RESTConfig(protocol="v2", timeout=120)) as sdk:
        return await sdk.infer(server.inference_url, request, model_name=request.model_name,
                               headers=server.auth_headers("inference"), response_headers=answer_headers)


def infer(server, model, element, binary, outputs=None, parameters=None):
    """One SDK call as a user writes it: (InferResponse, the answer's HTTP headers)."""
    tensor = InferInput("input", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([element], dtype=np.object_), binary_data=binary)
    requested = [RequestedOutput(name, parameters={"binary_data": binary}) for name in outputs] if outputs else None
    request = InferRequest(model_name=model, infer_inputs=[tensor], request_outputs=requested, parameters=parameters)
    answer_headers = {}
    result = asyncio.run(_infer(server, request, answer_headers))
    return result, {k.lower(): v for k, v in answer_headers.items()}


def output(result, name):
    return next(o for o in result.outputs if o.name == name).as_numpy()


def text(values):
    return [v.decode() if isinstance(v, bytes) else v for v in values]


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("model", sorted(KIND_OF))
def test_kserve_sdk_gets_the_plain_answer(client, v2_server, model, binary):
    before, element, reference, names = v2_case(client, model, KIND_OF[model], binary)
    result, answer_headers = infer(v2_server, model, element, binary, outputs=names)
    assert (BINARY_HEADER in answer_headers) == binary  # outputs came back in the form asked for
    assert result.model_name == model
    if "embedding" in reference:
        vector = output(result, "embedding")
        assert vector.shape == (1, len(reference["embedding"]))
        np.testing.assert_allclose(vector[0], reference["embedding"], atol=1e-6)
        assert output(result, "truncated").tolist() == [reference["truncated"]]
    else:
        labels = text(output(result, "labels")[0])
        assert labels == [p["label"] for p in reference["predictions"]]
        np.testing.assert_allclose(output(result, "probabilities")[0],
                                   [p["probability"] for p in reference["predictions"]], atol=1e-6)
    if model == "mobilenet_v2":
        assert labels[0] in CAT_LABELS
    if model == "minilm_topics":
        assert labels[0] == "Sports"
    assert worker_ids(client, model) == before


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_parameters_topk_is_honoured(client, v2_server, binary):
    model = next(m for m, kind in KIND_OF.items() if kind == "image-classifier")
    element, (body, content_type) = v2_input("image-classifier", binary)
    reference = client.predict(model, body, content_type).json()["predictions"][:2]
    result, _ = infer(v2_server, model, element, binary, outputs=["labels", "indices"], parameters={"topk": 2})
    assert text(output(result, "labels")[0]) == [p["label"] for p in reference]
    assert output(result, "indices")[0].tolist() == [p["index"] for p in reference]


@pytest.mark.parametrize("kind, element, binary, status, error", [
    ("image-classifier", b"not an image at all", True, 415, "UnsupportedMediaType"),
    ("image-classifier", b"not base64 !!", False, 400, "InvalidBase64"),
    ("text-classifier", b"caf\xe9", True, 400, "InvalidUTF8"),
], ids=["image-not-an-image", "image-json-not-base64", "text-not-utf8"])
def test_a_bad_element_is_a_4xx_in_the_contracts_words(client, v2_server, kind, element, binary, status, error):
    # the SDK raises httpx.HTTPStatusError; its text shows the contract's message, which is what the user reads
    model = next(m for m, k in KIND_OF.items() if k == kind)
    before = worker_ids(client, model)
    with pytest.raises(httpx.HTTPStatusError) as raised:
        infer(v2_server, model, element, binary)
    answer = raised.value.response
    assert answer.status_code == status
    assert answer.json()["code"] == status and answer.json()["type"] == error
    assert answer.json()["message"] in str(raised.value) and str(status) in str(raised.value)
    assert worker_ids(client, model) == before


def test_server_health_as_the_sdk_sees_it(server):
    """`/v2/health/live|ready` exist only with TorchServe's `ts_open_inference_protocol`; per-model
    readiness (`/v2/models/<m>/ready`) does not exist in TorchServe 0.12 at all, which the SDK reports as
    not ready. See docs/clients.md."""
    oip = server.props.get("ts_open_inference_protocol", "false").lower() == "true"
    model = sorted(KIND_OF)[0]

    async def health():
        async with InferenceRESTClient(RESTConfig(protocol="v2", timeout=60)) as sdk:
            headers = server.auth_headers("inference")
            answers = {}
            for name, call in (("live", sdk.is_server_live), ("ready", sdk.is_server_ready)):
                try:
                    answers[name] = await call(server.inference_url, headers=headers)
                except httpx.HTTPStatusError as err:
                    answers[name] = err.response.status_code
            answers["model_ready"] = await sdk.is_model_ready(server.inference_url, model, headers=headers)
            return answers

    expected = True if oip else 404
    assert asyncio.run(health()) == {"live": expected, "ready": expected, "model_ready": False}


def test_the_kserve_engines_health_as_the_sdk_sees_it(kserve_engine):
    """The KServe engine has v2 health and per-model readiness (they are KServe's own routes)."""
    async def health():
        async with InferenceRESTClient(RESTConfig(protocol="v2", timeout=60)) as sdk:
            url, headers = kserve_engine.inference_url, kserve_engine.auth_headers()
            return {"live": await sdk.is_server_live(url, headers=headers),
                    "ready": await sdk.is_server_ready(url, headers=headers),
                    "model_ready": [await sdk.is_model_ready(url, m, headers=headers) for m in sorted(KIND_OF)]}

    assert asyncio.run(health()) == {"live": True, "ready": True, "model_ready": [True] * len(KIND_OF)}


# ---- gRPC v2 (the KServe engine's 127.0.0.1:9081; TorchServe's own gRPC APIs are tests/integration/test_grpc.py)
def grpc_infer(engine, model, element, binary, token=True):
    """One call of the SDK's InferenceGRPCClient: binary puts the element in raw_input_contents, else in
    contents.bytes_contents (given as data: the SDK's set_data_from_numpy refuses non-UTF-8 bytes there); the
    answer as an InferResponse."""
    if binary:
        tensor = InferInput("input", [1], "BYTES")
        tensor.set_data_from_numpy(np.array([element], dtype=np.object_), binary_data=True)
    else:
        tensor = InferInput("input", [1], "BYTES", data=[element])
    request = InferRequest(model_name=model, infer_inputs=[tensor])
    metadata = [(k.lower(), v) for k, v in engine.auth_headers().items()] if token else []

    async def call():
        sdk = InferenceGRPCClient(engine.grpc_address, timeout=120, retries=0)
        try:
            return await sdk.infer(request, headers=metadata)
        finally:
            await sdk.close()

    return asyncio.run(call())


@pytest.mark.parametrize("binary", [True, False], ids=["raw", "contents"])
@pytest.mark.parametrize("model", sorted(KIND_OF))
def test_kserve_sdk_over_grpc_gets_the_plain_answer(client, kserve_engine, model, binary):
    # gRPC's BYTES are raw in either form (no base64, unlike v2 JSON): the binary case's element for both
    _, element, reference, _ = v2_case(client, model, KIND_OF[model], True)
    result = grpc_infer(kserve_engine, model, element, binary)
    assert result.model_name == model
    if "embedding" in reference:
        np.testing.assert_allclose(output(result, "embedding")[0], reference["embedding"], atol=1e-6)
    else:
        assert text(output(result, "labels")[0]) == [p["label"] for p in reference["predictions"]]
        np.testing.assert_allclose(output(result, "probabilities")[0],
                                   [p["probability"] for p in reference["predictions"]], atol=1e-6)


def test_a_bad_element_over_grpc_is_invalid_argument_with_the_contracts_body(kserve_engine):
    model = next(m for m, k in KIND_OF.items() if k == "image-classifier")
    with pytest.raises(grpc.RpcError) as raised:
        grpc_infer(kserve_engine, model, b"not an image at all", True)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    body = json.loads(raised.value.details())
    assert (body["code"], body["type"]) == (415, "UnsupportedMediaType")


def test_grpc_inference_needs_the_key_and_health_does_not(kserve_engine):
    model = next(m for m, k in KIND_OF.items() if k == "text-classifier")
    with pytest.raises(grpc.RpcError) as raised:
        grpc_infer(kserve_engine, model, b"The striker scored twice", True, token=False)
    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert json.loads(raised.value.details())["type"] == "InvalidKeyException"

    async def health():
        sdk = InferenceGRPCClient(kserve_engine.grpc_address, timeout=30, retries=0)
        try:
            return (await sdk.is_server_live(), await sdk.is_server_ready(),
                    [await sdk.is_model_ready(m) for m in sorted(KIND_OF)])
        finally:
            await sdk.close()

    assert asyncio.run(health()) == (True, True, [True] * len(KIND_OF))
