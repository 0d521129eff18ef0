"""TorchServe's gRPC APIs on the real server: the CLI (`tsctl.py --grpc`) prints what it prints over HTTP,
and StreamPredictions, which restarts the worker of a handler that never sets `ts_stream_next`, gets one
final message from every model with no worker restart."""

import base64
import json
import os
import subprocess
import sys

import pytest

from support import CAT_LABELS, REPO, encode, photo
from tskit.declaration import served
from tskit.grpc_client import STUBS, generate_stubs
from videos import make_video

KIND_OF = {d.name: d.kind for d in served() if d.kind != "text-generator"}  # its own: test_generator.py
STRIKER = "The striker scored twice in the final"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("grpc_inputs")
    (folder / "cat.jpg").write_bytes(encode(photo("chelsea")))
    return folder


@pytest.fixture(scope="module")
def grpc_client(server):
    if not os.path.exists(os.path.join(STUBS, "__init__.py")):
        generate_stubs()  # what `make test` did already; here so the module runs alone (never rewritten under
        # a parallel run: another test process may be importing them)

    return server.client().grpc(server.listening.grpc_inference, server.listening.grpc_management)


def tsctl(server, *args):
    cmd = [sys.executable, os.path.join(REPO, "scripts", "tsctl.py"), "--inference-url", server.inference_url,
           "--management-url", server.management_url, "--key-file", server.key_file,
           "--grpc-inference", server.listening.grpc_inference, "--grpc-management", server.listening.grpc_management,
           *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def request_of(kind, inputs):
    return [str(inputs / "cat.jpg")] if kind == "image-classifier" else ["--text", STRIKER]


@pytest.mark.parametrize("model", sorted(KIND_OF))
def test_cli_predict_over_grpc_prints_what_http_prints(server, inputs, model):
    args = ["predict", model, *request_of(KIND_OF[model], inputs)]
    assert tsctl(server, "--grpc", *args) == tsctl(server, *args)


def test_cli_ping_list_describe_scale_over_grpc(server):
    assert tsctl(server, "--grpc", "ping") == tsctl(server, "ping") == {"status": "Healthy"}
    assert tsctl(server, "--grpc", "list") == tsctl(server, "list")
    model = sorted(KIND_OF)[0]
    over_grpc, over_http = tsctl(server, "--grpc", "describe", model), tsctl(server, "describe", model)
    assert [(d["modelName"], d["modelVersion"], d["minWorkers"]) for d in over_grpc] == \
        [(d["modelName"], d["modelVersion"], d["minWorkers"]) for d in over_http]
    # scale over gRPC: one worker more, then back; the HTTP describe shows each count take effect
    workers = over_http[0]["minWorkers"]
    try:
        for target in (workers + 1, workers):
            answer = tsctl(server, "--grpc", "scale", model, "--min", str(target), "--max", str(target))
            assert answer == {"status": f"Workers scaled to {target} for model: {model}"}, answer
            described = tsctl(server, "describe", model)[0]
            assert (described["minWorkers"], described["maxWorkers"]) == (target, target), described
            assert [w["status"] for w in described["workers"]] == ["READY"] * target, described["workers"]
    finally:
        tsctl(server, "scale", model, "--min", str(workers), "--max", str(workers))


@pytest.mark.parametrize("model", sorted(KIND_OF))
def test_stream_predictions_answers_once_and_keeps_the_worker(client, grpc_client, model):
    before = sorted(w["pid"] for w in client.describe(model)["workers"])
    body = encode(photo("chelsea")) if KIND_OF[model] == "image-classifier" else STRIKER.encode()
    messages = grpc_client.stream(model, body)
    assert messages == [grpc_client.predict(model, body)]
    if model == "mobilenet_v2":
        assert messages[0]["predictions"][0]["label"] in CAT_LABELS
    assert sorted(w["pid"] for w in client.describe(model)["workers"]) == before


def test_bad_input_over_grpc_gets_the_contracts_json(grpc_client):
    # gRPC has no per-request HTTP status: TorchServe's GRPCJob sends the handler's body as the answer
    model = next(m for m, kind in KIND_OF.items() if kind == "image-classifier")
    answer = grpc_client.predict(model, encode(photo("chelsea"))[:3000])  # a truncated JPEG
    assert answer["code"] == 400 and answer["type"] == "CorruptImage"


# ---- TorchServe's Open Inference Protocol gRPC service: off (config.properties says why) --------------
def test_the_open_inference_grpc_service_is_not_served(server):
    import grpc
    from ts_grpc import open_inference_grpc_pb2 as oip, open_inference_grpc_pb2_grpc as oip_grpc

    assert server.props.get("ts_open_inference_protocol", "false") != "true"
    stub = oip_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(server.listening.grpc_inference))
    with pytest.raises(grpc.RpcError) as raised:
        stub.ServerLive(oip.ServerLiveRequest(), metadata=[("authorization", f"Bearer {server.keys()['inference']}")],
                        timeout=30)
    assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_a_video_over_grpc_is_answered_whole(client, grpc_client):
    """gRPC cannot stream under TorchServe 0.12 (docs/video.md): a video sent as JSON gets every line in one answer."""
    clip = make_video(("chelsea", "coffee"), 1.0, 4, "mp4")
    body = json.dumps({"video": base64.b64encode(clip).decode(), "topk": 1}).encode()
    before = sorted(w["pid"] for w in client.describe("mobilenet_v2")["workers"])
    lines = [json.loads(line) for line in grpc_client.predict_bytes("mobilenet_v2", body).splitlines()]
    assert [line.get("time") for line in lines] == [0.0, 1.0, None] and lines[-1] == {"frames": 2, "done": True}
    assert lines[0]["predictions"][0]["label"] in CAT_LABELS and lines[1]["predictions"][0]["label"] == "espresso"
    assert sorted(w["pid"] for w in client.describe("mobilenet_v2")["workers"]) == before
