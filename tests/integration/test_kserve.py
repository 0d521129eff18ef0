"""`make kserve`'s layout started the way KServe's TorchServe runtime starts it, and the Grafana
dashboard's queries checked against what the server really exports."""

import base64
import json
import os
import re
import subprocess
import sys
import tempfile
import time

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from support import CAT_LABELS, REPO, encode, photo
from ts_server import TorchServe, free_ports, running
from tskit.declaration import served


@pytest.fixture(scope="module")
def kserve_server(tmp_path_factory):
    """The cpu layout with its storage root at a temp dir (the pod mounts it at /mnt/models) and
    loopback ports instead of 0.0.0.0:8085: the only differences from what the pod runs."""
    root = str(tmp_path_factory.mktemp("kserve"))
    ports = free_ports(4)
    layout = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "kserve_layout.py"), "--out", root,
                             "--root", os.path.join(root, "cpu"), "--bind", "127.0.0.1", "--variants", "cpu",
                             "--ports", f"{ports[0]},{ports[0]},{ports[1]},{ports[2]},{ports[3]}"],
                            capture_output=True, text=True, timeout=120)
    assert layout.returncode == 0, layout.stderr
    storage = os.path.join(root, "cpu")
    assert sorted(os.listdir(os.path.join(storage, "model-store"))) == [
        "minilm_embedding.mar", "minilm_topics.mar", "mobilenet_v2.mar"]
    workdir = tempfile.mkdtemp(dir=root)
    server = TorchServe(os.path.join(storage, "config", "config.properties"), workdir=workdir,
                        tmpdir=os.path.join(workdir, "tmp"))
    with running(server):
        yield server


def test_layout_config_is_what_the_runtime_needs():
    out = tempfile.mkdtemp()
    subprocess.run([sys.executable, os.path.join(REPO, "scripts", "kserve_layout.py"), "--out", out],
                   check=True, capture_output=True, timeout=120)
    from ts_server import read_properties

    for variant, gpus in (("cpu", "0"), ("gpu", "1")):
        props = read_properties(os.path.join(out, variant, "config", "config.properties"))
        assert props["inference_address"] == "http://0.0.0.0:8085" == props["management_address"]
        assert props["model_store"] == "/mnt/models/model-store"
        assert props["metrics_config"] == "/mnt/models/config/metrics.yaml"
        assert props["number_of_gpu"] == gpus
        snapshot = json.loads(props["model_snapshot"])
        assert sorted(snapshot["models"]) == sorted(d.name for d in served())


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
    # TorchServe's own health check (in the pod, /v2/health/ready is answered by KServe's model server)
    assert requests.get(f"{url}/ping", timeout=30).json() == {"status": "Healthy"}


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
