"""`make kserve`'s layout started the way KServe's TorchServe runtime starts it, the manifests in deploy/
checked against the layout and the models' declarations, and the Grafana dashboard's queries checked
against what the server really exports.

TorchServe's own kserve_wrapper (which the runtime runs in front of TorchServe) is not in this repo and
cannot be installed from a package registry, so it is not started here: docs/kserve.md records what was
measured through it by hand.
"""

import base64
import json
import os
import re
import subprocess
import sys
import time

import psutil
import pytest
import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families

from support import CAT_LABELS, REPO, encode, photo
from tskit.server import TorchServe, free_ports, running
from tskit.properties import read_properties
from tskit.declaration import served

WRAPPER_PORT = 8080  # KServe's model server in the pod (the wrapper hard-codes it)
LOOPBACK = "127.0.0.1"
def make_layout(out, *args):
    subprocess.run([sys.executable, os.path.join(REPO, "scripts", "kserve_layout.py"), "--out", str(out), *args],
                   check=True, capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def kserve_server(tmp_path_factory):
    """The cpu layout with its storage root at a temp dir (the pod mounts it at /mnt/models), free
    loopback ports and the metrics listener on loopback too (this machine's rule): the only differences
    from what the pod runs. TS_SERVICE_ENVELOPE is set as the runtime sets it from an InferenceService's
    `serviceEnvelope: kservev2` label: the layout must not let it change anything."""
    root = tmp_path_factory.mktemp("kserve")
    ports = free_ports(4)
    make_layout(root, "--root", str(root / "cpu"), "--metrics-bind", LOOPBACK, "--variants", "cpu",
                "--ports", f"{ports[0]},{ports[0]},{ports[1]},{ports[2]},{ports[3]}")
    workdir = root / "work"
    server = TorchServe(str(root / "cpu" / "config" / "config.properties"), workdir=str(workdir),
                        tmpdir=str(workdir / "tmp"))
    with pytest.MonkeyPatch.context() as env:
        env.setenv("TS_SERVICE_ENVELOPE", "kservev2")
        with running(server):
            yield server


@pytest.fixture(scope="module")
def pod_layout(tmp_path_factory):
    """`make kserve`'s layout as it goes to the cluster (default arguments), cpu and gpu."""
    out = tmp_path_factory.mktemp("kserve_layout")
    make_layout(out)
    return out


def named_files(props, root):
    """Every file or folder the config names, as a path under the storage root."""
    names = [props["model_store"], props["metrics_config"]]
    names += [w.split("=", 1)[1] for w in props.get("vmargs", "").split() if w.startswith("-Dlog4j.configurationFile=")]
    assert all(n.startswith(root + "/") for n in names), names
    return [n[len(root) + 1:] for n in names]


@pytest.mark.parametrize("variant, gpus", [("cpu", "0"), ("gpu", "1")])
def test_layout_config_is_what_the_runtime_needs(pod_layout, variant, gpus):
    storage = pod_layout / variant
    props = read_properties(str(storage / "config" / "config.properties"))
    # TorchServe's APIs only for the wrapper beside it; metrics on the pod IP for Prometheus
    assert props["inference_address"] == props["management_address"] == f"http://{LOOPBACK}:8085"
    assert props["grpc_inference_address"] == props["grpc_management_address"] == LOOPBACK
    assert props["metrics_address"] == "http://0.0.0.0:8082"
    assert props["disable_token_authorization"] == "true" and props["enable_model_api"] == "false"
    assert props["enable_envvars_config"] == "false" and props["ts_open_inference_protocol"] == "false"
    assert props["number_of_gpu"] == gpus
    # every file the config names is shipped (log4j2.xml included when vmargs names one)
    for name in named_files(props, "/mnt/models"):
        assert (storage / name).exists(), f"the config names /mnt/models/{name}, which the layout lacks"
    assert sorted(os.listdir(storage / "model-store")) == sorted(f"{d.name}.mar" for d in served())
    # the wrapper reads the file line by line (key=value, no continuations) and json-loads model_snapshot
    with open(storage / "config" / "config.properties", encoding="utf-8") as f:
        lines = dict(line.rstrip("\n").split("=", 1) for line in f if "=" in line and not line.startswith("#"))
    assert sorted(json.loads(lines["model_snapshot"])["models"]) == sorted(d.name for d in served())


def listeners(server):
    frontend = psutil.Process(server.pid())
    connections = getattr(frontend, "net_connections", None) or frontend.connections  # psutil 6+ / 5.9
    return {(c.laddr.ip.removeprefix("::ffff:"), c.laddr.port) for c in connections(kind="inet")
            if c.status == psutil.CONN_LISTEN}


def test_the_layout_listens_only_where_its_config_says(kserve_server):
    props = kserve_server.props
    port = lambda url: int(url.rsplit(":", 1)[1])
    expected = {(LOOPBACK, port(props["inference_address"])), (LOOPBACK, port(props["metrics_address"])),
                (LOOPBACK, int(props["grpc_inference_port"])), (LOOPBACK, int(props["grpc_management_port"]))}
    assert listeners(kserve_server) == expected


def test_the_metrics_listener_serves_metrics_only(kserve_server):
    # in the pod this is the one TorchServe listener on the pod IP: nothing but /metrics (and TorchServe's
    # read-only API description, which every listener answers) may answer there
    metrics = kserve_server.metrics_url
    assert requests.get(f"{metrics}/metrics", timeout=30).status_code == 200
    assert requests.get(f"{metrics}/api-description", timeout=30).json()["info"]["title"] == "TorchServe APIs"
    model = sorted(d.name for d in served())[0]
    # what TorchServe 0.12's metrics listener answers each (measured): the management and inference routes
    # are unknown resources there, whatever the method, not methods it refuses
    not_found = (404, "ResourceNotFoundException")
    expected = {("GET", "/models"): not_found, ("GET", f"/models/{model}"): not_found,
                ("PUT", f"/models/{model}?min_worker=0"): not_found, ("POST", f"/predictions/{model}"): not_found,
                ("GET", "/ping"): not_found, ("POST", f"/v2/models/{model}/infer"): not_found,
                ("GET", "/token?type=inference"): not_found}
    for (method, path), (status, error_type) in expected.items():
        answer = requests.request(method, metrics + path, timeout=30)
        assert (answer.status_code, answer.json()["type"]) == (status, error_type), (method, path, answer.text[:200])


def test_v1_and_v2_requests_on_the_kserve_layout(kserve_server):
    url = kserve_server.inference_url
    cat = base64.b64encode(encode(photo("chelsea"))).decode()
    v1 = requests.post(f"{url}/v1/models/mobilenet_v2:predict", json={"instances": [{"data": cat}]}, timeout=60)
    assert v1.status_code == 200, v1.text
    assert v1.json()["predictions"][0]["predictions"][0]["label"] in CAT_LABELS
    v2 = requests.post(f"{url}/v2/models/minilm_topics/infer", timeout=60, json={
        "id": "k1", "inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["The striker scored twice in the final"]}]})
    assert v2.status_code == 200, v2.text
    labels = next(o for o in v2.json()["outputs"] if o["name"] == "labels")
    assert labels["data"][0] == "Sports" and v2.json()["id"] == "k1"
    plain = requests.post(f"{url}/predictions/minilm_embedding", data="hello".encode(),
                          headers={"Content-Type": "text/plain"}, timeout=60)
    assert plain.status_code == 200 and len(plain.json()["embedding"]) == 384
    # TorchServe's own health check (in the pod, /v2/health/ready is answered by the wrapper)
    assert requests.get(f"{url}/ping", timeout=30).json() == {"status": "Healthy"}


def test_the_wrapper_way_v2_request_is_answered_on_the_v1_route(kserve_server):
    # with the manifests' protocolVersion v1 the wrapper posts a v2 request's JSON to TorchServe's
    # /v1/models/<m>:predict: the handler must answer it in v2 form
    url = kserve_server.inference_url
    v2 = requests.post(f"{url}/v1/models/minilm_topics:predict", timeout=60, json={
        "id": "w1", "model_name": "minilm_topics", "parameters": {"topk": 2},
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["The striker scored twice in the final"]}]})
    assert v2.status_code == 200, v2.text
    labels = next(o for o in v2.json()["outputs"] if o["name"] == "labels")
    assert labels["shape"] == [1, 2] and labels["data"][0] == "Sports" and v2.json()["id"] == "w1"


def manifests():
    with open(os.path.join(REPO, "deploy", "inferenceservice-cpu.yaml"), encoding="utf-8") as f:
        cpu_text = f.read()
    docs = {}
    for name in ("inferenceservice-cpu", "inferenceservice-gpu", "networkpolicy", "istio-authorizationpolicy"):
        with open(os.path.join(REPO, "deploy", f"{name}.yaml"), encoding="utf-8") as f:
            docs[name] = list(yaml.safe_load_all(f))
    return cpu_text, docs


def test_manifests_match_the_layout_and_the_declarations(pod_layout):
    props = read_properties(str(pod_layout / "cpu" / "config" / "config.properties"))
    metrics_port = int(props["metrics_address"].rsplit(":", 1)[1])
    # the one-shot models: the wrapper answers a text generator whole (KServe's v1/v2), docs/kserve.md
    settings = [d.torchserve for d in served() if not d.torchserve.get("continuousBatching")]
    full_batches = max(s["batchSize"] * s["maxWorkers"] for s in settings)
    cpu_text, docs = manifests()
    services = [docs["inferenceservice-cpu"][0], docs["inferenceservice-gpu"][0]]
    for isvc in services:
        predictor = isvc["spec"]["predictor"]
        assert isvc["metadata"]["annotations"]["prometheus.kserve.io/port"] == str(metrics_port)
        assert predictor["scaleTarget"] == full_batches
        assert predictor["timeout"] == max(s["responseTimeout"] for s in settings)
        assert predictor["model"]["protocolVersion"] == "v1"  # v1 and v2 both work through the wrapper
        assert predictor["model"]["readinessProbe"]["httpGet"]["port"] == WRAPPER_PORT
    # the comment's arithmetic is the declarations' numbers
    batch, workers = map(int, re.search(r"scaleTarget: \d+ +# .*?batchSize (\d+) x (\d+) workers", cpu_text).groups())
    assert {(batch, workers)} == {(s["batchSize"], s["maxWorkers"]) for s in settings}
    # the NetworkPolicy selects both services and admits the wrapper and metrics, never TorchServe's APIs
    policy = docs["networkpolicy"][0]
    selected = policy["spec"]["podSelector"]["matchExpressions"][0]["values"]
    assert sorted(selected) == sorted(s["metadata"]["name"] for s in services)
    admitted = {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}
    assert {WRAPPER_PORT, metrics_port} <= admitted
    torchserve_apis = {int(props["inference_address"].rsplit(":", 1)[1]), int(props["grpc_inference_port"]),
                       int(props["grpc_management_port"])}
    assert not admitted & torchserve_apis
    istio = {d["kind"]: d for d in docs["istio-authorizationpolicy"]}
    metric_rules = [op for rule in istio["AuthorizationPolicy"]["spec"]["rules"] for op in rule["to"]
                    if "ports" in op["operation"]]
    assert metric_rules[0]["operation"]["ports"] == [str(metrics_port)]


def dashboard_metric_names():
    with open(os.path.join(REPO, "deploy", "grafana-dashboard.json"), encoding="utf-8") as f:
        dashboard = json.load(f)
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs.append(next(v["query"] for v in dashboard["templating"]["list"] if v["name"] == "model"))
    functions = {"sum", "by", "rate", "label_values", "model_name", "ModelName", "ErrorType", "without", "irate"}
    names = set()
    for expr in exprs:
        expr = re.sub(r"\{[^}]*\}", "", expr)  # drop label matchers
        expr = re.sub(r"\[[^\]]*\]", "", expr)  # drop ranges
        names |= {n for n in re.findall(r"[A-Za-z_][A-Za-z0-9_]*", expr) if n not in functions}
    return names


def test_every_dashboard_query_names_an_exported_metric(client, server):
    # traffic first, so every model metric (including an InvalidInputs series) exists
    assert client.predict("minilm_topics", b"caf\xe9", "text/plain").status_code == 400
    assert client.predict("minilm_topics", "Stocks rallied".encode(), "text/plain").status_code == 200
    deadline = time.monotonic() + 15  # the frontend picks up worker metric lines asynchronously
    text = ""
    while "InvalidInputs{" not in text and time.monotonic() < deadline:
        text = requests.get(f"{server.metrics_url}/metrics", timeout=30).text
        time.sleep(0.3)
    families = list(text_string_to_metric_families(text))  # valid Prometheus text, or this raises
    assert families
    # PromQL sees the names exactly as exposed (the parser would add `_total` to some counters)
    exported = set(re.findall(r"^([A-Za-z_:][A-Za-z0-9_:]*)[{ ]", text, re.MULTILINE))
    names = dashboard_metric_names()
    assert {"ts_inference_requests_total", "InvalidInputs", "BatchSize_sum", "InferenceTime_count"} <= names
    missing = sorted(names - exported)
    assert not missing, f"dashboard queries metrics the server does not export: {missing}"
