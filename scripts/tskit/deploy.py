"""The storage layout KServe's TorchServe runtime mounts, from this repo's archives (make kserve:
scripts/kserve_layout.py is its command).

    <out>/cpu/config/config.properties   <out>/cpu/config/metrics.yaml   <out>/cpu/config/log4j2.xml
    <out>/cpu/model-store/*.mar
    <out>/gpu/...                        (the same, number_of_gpu=1)

Upload a variant's folder to the storage the InferenceService's `storageUri` points at
(deploy/inferenceservice-*.yaml). In the pod, KServe mounts it at /mnt/models and the runtime's
container runs `torchserve --start --model-store=/mnt/models/model-store
--ts-config=/mnt/models/config/config.properties`, then TorchServe's `kserve_wrapper` (KServe's model
server, the only thing the pod serves: :8080 REST, :8081 gRPC). The wrapper reads this config to find
TorchServe: `inference_address` for requests, `management_address` for readiness, and the host of
`inference_address` with `grpc_inference_port` for grpc-v2.

The config is config.properties with what the runtime needs changed (and nothing else):
  - TorchServe's inference and management APIs on 127.0.0.1:8085 and its gRPC APIs on 127.0.0.1:7070/7071:
    only the wrapper beside it in the pod talks to them, so nothing outside the pod can describe,
    scale or switch models (token auth is off, see below);
  - metrics on 0.0.0.0:8082, the one port opened to the network, because the manifests' Prometheus
    scrape annotations send Prometheus to <pod IP>:8082 (that listener serves /metrics and TorchServe's
    read-only API description, nothing else); deploy/networkpolicy.yaml admits only the monitoring
    namespace there;
  - paths under the mount point, every file the config names shipped with it (metrics.yaml, and the
    log4j2.xml that vmargs names); models loaded through `model_snapshot`, as the wrapper expects;
  - token authorization off: the wrapper does not send TorchServe tokens; the service is protected by
    the cluster instead (deploy/networkpolicy.yaml, deploy/istio-authorizationpolicy.yaml);
  - the model API (register/unregister) off: the snapshot is the model list;
  - enable_envvars_config=false: the runtime sets TS_SERVICE_ENVELOPE from the InferenceService's
    `serviceEnvelope` label, and with env vars honoured that label would put TorchServe's stock
    envelope (first request of a batch only) in front of the handlers, which read KServe v1/v2 themselves;
    other TS_* variables could change the server's settings from the pod spec;
  - ts_open_inference_protocol=false, whatever config.properties says: in the pod the wrapper answers
    /v2/health/* itself, and the switch would only add TorchServe's Open Inference Protocol gRPC service.
--root, --bind, --metrics-bind and --ports exist for the test that starts TorchServe from this layout
on free loopback ports.

It also keeps the Serverless manifests' `containerConcurrency` (deploy/inferenceservice-{cpu,gpu}.yaml) in
step with the declarations it ships: the sum over served models of batchSize x maxWorkers
(tskit.autoscaling, docs/autoscaling.md), so a changed batch size reaches the cluster's limit too.
"""

import json
import os
import shutil
from typing import Dict, List

from tskit.properties import read_properties, write_properties
from tskit.autoscaling import container_concurrency, sync_manifests
from tskit.declaration import REPO, served

LOG_CONFIG = "-Dlog4j.configurationFile="


def shipped_vmargs(vmargs: str, root: str) -> (str, List[str]):
    """vmargs with the log4j config pointed at <root>/config/, and the repo files to ship there."""
    words, files = [], []
    for word in vmargs.split():
        if word.startswith(LOG_CONFIG):
            source = word[len(LOG_CONFIG):]
            files.append(source if os.path.isabs(source) else os.path.join(REPO, source))
            word = f"{LOG_CONFIG}{root}/config/{os.path.basename(source)}"
        words.append(word)
    return " ".join(words), files


def kserve_properties(root: str, bind: str, metrics_bind: str, ports: Dict[str, int], gpus: int) -> dict:
    props = read_properties(os.path.join(REPO, "config.properties"))
    models = json.loads(props.pop("models"))
    props.pop("load_models", None)
    for version in (v for m in models.values() for v in m.values()):
        version["defaultVersion"] = True
    props.update({
        "inference_address": f"http://{bind}:{ports['inference']}",
        "management_address": f"http://{bind}:{ports['management']}",
        "metrics_address": f"http://{metrics_bind}:{ports['metrics']}",
        "grpc_inference_address": bind,
        "grpc_management_address": bind,
        "grpc_inference_port": str(ports["grpc_inference"]),
        "grpc_management_port": str(ports["grpc_management"]),
        "model_store": f"{root}/model-store",
        "metrics_config": f"{root}/config/{os.path.basename(props['metrics_config'])}",
        "disable_token_authorization": "true",
        "enable_model_api": "false",  # the models come from the snapshot; nothing registers at run time
        "enable_envvars_config": "false",  # see the module docstring: TS_SERVICE_ENVELOPE
        # the wrapper answers KServe's health routes itself; TorchServe's OIP switch would only add a
        # gRPC service whose ModelInfer passes BYTES elements base64-encoded (docs/clients.md)
        "ts_open_inference_protocol": "false",
        "number_of_gpu": str(gpus),
        "model_snapshot": json.dumps({"name": "startup.cfg", "modelCount": len(models), "models": models}),
    })
    if props.get("vmargs"):
        props["vmargs"], _ = shipped_vmargs(props["vmargs"], root)
    return props


def config_files() -> List[str]:
    """The repo files the layout's config names, shipped into <variant>/config/."""
    props = read_properties(os.path.join(REPO, "config.properties"))
    _, logs = shipped_vmargs(props.get("vmargs", ""), "")
    return [os.path.join(REPO, props["metrics_config"])] + logs


def link_or_copy(source: str, target: str) -> None:
    if os.path.exists(target):
        os.remove(target)
    try:
        os.link(source, target)  # no copy of ~180 MB of archives where the filesystem allows
    except OSError:
        shutil.copy(source, target)


def write_layout(out: str, root: str, bind: str, metrics_bind: str, ports: Dict[str, int], gpus: int) -> None:
    os.makedirs(os.path.join(out, "config"), exist_ok=True)
    os.makedirs(os.path.join(out, "model-store"), exist_ok=True)
    write_properties(kserve_properties(root, bind, metrics_bind, ports, gpus),
                     os.path.join(out, "config", "config.properties"))
    for source in config_files():
        shutil.copy(source, os.path.join(out, "config", os.path.basename(source)))
    for name in (d.name for d in served()):  # the models `make serve` loads, from their declarations
        link_or_copy(os.path.join(REPO, "model_store", f"{name}.mar"), os.path.join(out, "model-store", f"{name}.mar"))


PORT_KEYS = ("inference", "management", "metrics", "grpc_inference", "grpc_management")


def parse_ports(text: str) -> Dict[str, int]:
    """"8085,8085,8082,7070,7071" -> {"inference": 8085, ...} (PORT_KEYS' order)."""
    return dict(zip(PORT_KEYS, (int(p) for p in text.split(","))))


def kserve(out: str, root: str, bind: str, metrics_bind: str, ports: Dict[str, int], variants: List[str],
           log=print) -> None:
    """The layout of each variant ("cpu", "gpu") under `out`, and the manifests' containerConcurrency in step."""
    for variant in variants:
        write_layout(os.path.join(out, variant), root, bind, metrics_bind, ports, 1 if variant == "gpu" else 0)
        log(f"KServe layout ({variant}): {os.path.join(out, variant)}")
    for path in sync_manifests():
        log(f"{os.path.relpath(path, REPO)}: containerConcurrency set to {container_concurrency()} from models/*/model.yaml")
