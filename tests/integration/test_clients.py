"""Clients this project did not write, against the real server: tritonclient (Open Inference Protocol v2),
in its default binary-tensor mode and in JSON mode, for every served model.

tritonclient sends no Content-Type; in binary mode it writes the `Inference-Header-Content-Length`
extension (JSON header, then raw tensors) and reads binary outputs back the same way. Each answer must
equal the plain /predictions answer of the same input (the reference), and no worker may restart.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from support import CAT_LABELS, v2_case, v2_input, worker_ids
from tskit.declaration import served

KIND_OF = {d.name: d.kind for d in served() if d.kind != "text-generator"}  # its own: test_generator.py


def triton_client(server):
    return triton.InferenceServerClient(url=server.inference_url.removeprefix("http://"), network_timeout=120)


def infer(server, model, element, binary, outputs=None, parameters=None):
    tensor = triton.InferInput("input", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([element], dtype=np.object_), binary_data=binary)
    requested = [triton.InferRequestedOutput(name, binary_data=binary) for name in outputs] if outputs else None
    return triton_client(server).infer(model, [tensor], outputs=requested, parameters=parameters,
                                       headers=server.auth_headers("inference"))


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("model", sorted(KIND_OF))
def test_tritonclient_gets_the_plain_answer(client, v2_server, model, binary):
    before, element, reference, names = v2_case(client, model, KIND_OF[model], binary)
    result = infer(v2_server, model, element, binary, outputs=names)
    if "embedding" in reference:
        vector = result.as_numpy("embedding")
        assert vector.shape == (1, len(reference["embedding"]))
        np.testing.assert_allclose(vector[0], reference["embedding"], atol=1e-6)
        assert result.as_numpy("truncated").tolist() == [False]
    else:
        labels = [x.decode() if isinstance(x, bytes) else x for x in result.as_numpy("labels")[0]]
        assert labels == [p["label"] for p in reference["predictions"]]
        np.testing.assert_allclose(result.as_numpy("probabilities")[0],
                                   [p["probability"] for p in reference["predictions"]], atol=1e-6)
    if model == "mobilenet_v2":
        assert labels[0] in CAT_LABELS
    if model == "minilm_topics":
        assert labels[0] == "Sports"
    assert worker_ids(client, model) == before


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_parameters_topk_is_honoured(v2_server, binary):
    model = next(m for m, kind in KIND_OF.items() if kind == "image-classifier")
    element, _ = v2_input("image-classifier", binary)
    result = infer(v2_server, model, element, binary, outputs=["labels", "indices"], parameters={"topk": 2})
    assert result.as_numpy("labels").shape == (1, 2) and result.as_numpy("indices").shape == (1, 2)


def test_a_bad_element_is_a_4xx_in_the_contracts_words(v2_server):
    # tritonclient shows v2's {"error": ...}: v2 errors carry it beside the contract's code/type/message
    model = next(m for m, kind in KIND_OF.items() if kind == "image-classifier")
    with pytest.raises(InferenceServerException) as raised:
        infer(v2_server, model, b"not an image at all", True, outputs=["labels"])
    assert str(raised.value.status()) == "415"
    assert "not a recognised image" in raised.value.message()


def test_tritonclient_health_on_the_kserve_engine(kserve_engine):
    """Against TorchServe these are false (v2 health needs its OIP switch, which breaks its gRPC); the KServe
    engine has them."""
    triton_http = triton_client(kserve_engine)
    assert triton_http.is_server_live() and triton_http.is_server_ready()
    assert [triton_http.is_model_ready(m) for m in sorted(KIND_OF)] == [True] * len(KIND_OF)


def triton_grpc(engine, model, element: bytes, outputs, tmp_path, key=True):
    """tests/triton_grpc_probe.py in a process of its own (see its docstring): its JSON document."""
    element_file = tmp_path / "element"
    element_file.write_bytes(element)
    sent = engine.auth_headers()["Authorization"].removeprefix("Bearer ") if key else ""
    done = subprocess.run([sys.executable, os.path.join(os.path.dirname(__file__), "..", "triton_grpc_probe.py"),
                           engine.grpc_address, sent, model, str(element_file), *outputs],
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.parametrize("model", sorted(KIND_OF))
def test_tritonclient_over_grpc_on_the_kserve_engine(client, kserve_engine, model, tmp_path):
    _, element, reference, names = v2_case(client, model, KIND_OF[model], True)
    answer = triton_grpc(kserve_engine, model, element, names, tmp_path)
    assert (answer["live"], answer["ready"], answer["model_ready"]) == (True, True, True)
    if "embedding" in reference:
        np.testing.assert_allclose(answer["outputs"]["embedding"][0], reference["embedding"], atol=1e-6)
    else:
        assert answer["outputs"]["labels"][0] == [p["label"] for p in reference["predictions"]]


def test_tritonclient_over_grpc_sees_the_contracts_error(kserve_engine, tmp_path):
    model = next(m for m, kind in KIND_OF.items() if kind == "image-classifier")
    answer = triton_grpc(kserve_engine, model, b"not an image at all", ["labels"], tmp_path)
    assert answer["error"]["status"] == "StatusCode.INVALID_ARGUMENT"
    assert json.loads(answer["error"]["details"])["type"] == "UnsupportedMediaType"
