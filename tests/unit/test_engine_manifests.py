"""The KServe engine's cluster manifests (deploy/clusterservingruntime-engine.yaml, deploy/inferenceservice-engine.yaml)
against the engine's own command line and the package's other manifests: the runtime's args parse with the engine's
parser, its ports, probes and scrape port agree, and it reads the storage layout `make kserve` writes."""

import os

import yaml

from tskit import autoscaling
from tskit.kserve_engine import parser
from tskit.properties import parse_properties
from tskit.server import REPO

RUNTIME = os.path.join(autoscaling.DEPLOY, "clusterservingruntime-engine.yaml")
SERVICE = os.path.join(autoscaling.DEPLOY, "inferenceservice-engine.yaml")


def load(path):
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def test_the_runtime_args_are_the_engines_command_line_for_a_pod():
    runtime = load(RUNTIME)
    (container,) = runtime["spec"]["containers"]
    assert container["command"] == ["python", "-m", "tskit.kserve_engine"]
    args = parser().parse_args(container["args"])
    assert (args.host, args.no_key, args.key_file, args.models) == ("0.0.0.0", True, None, None)
    assert args.store == "/mnt/models/model-store"  # the layout of `make kserve` (tskit.deploy), mounted by KServe
    assert [p["containerPort"] for p in container["ports"]] == [args.http_port]
    assert runtime["spec"]["annotations"]["prometheus.kserve.io/port"] == str(args.http_port)
    with open(os.path.join(REPO, "config.properties"), encoding="utf-8") as f:
        assert args.max_request_size == int(parse_properties(f.read())["max_request_size"])


def test_the_service_selects_the_runtime_and_probes_the_engines_health_routes():
    runtime, service = load(RUNTIME), load(SERVICE)
    (container,) = runtime["spec"]["containers"]
    port = parser().parse_args(container["args"]).http_port
    model = service["spec"]["predictor"]["model"]
    assert model["modelFormat"]["name"] in {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    assert model["protocolVersion"] in runtime["spec"]["protocolVersions"]
    assert (model["readinessProbe"]["httpGet"], model["livenessProbe"]["httpGet"]) == (
        {"path": "/v2/health/ready", "port": port}, {"path": "/v2/health/live", "port": port})
    cpu = load(os.path.join(autoscaling.DEPLOY, "inferenceservice-cpu.yaml"))
    assert model["storageUri"] == cpu["spec"]["predictor"]["model"]["storageUri"]  # the same uploaded layout


def test_the_engine_needs_a_key_file_or_an_explicit_no_key():
    import pytest

    with pytest.raises(SystemExit):
        parser().parse_args(["--store", "s", "--unpack-dir", "u"])
    assert parser().parse_args(["--store", "s", "--unpack-dir", "u", "--key-file", "k"]).host == "127.0.0.1"
