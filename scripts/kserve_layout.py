"""make kserve: the storage layout KServe's TorchServe runtime mounts, from this repo's archives.

    <out>/cpu/config/config.properties   <out>/cpu/config/metrics.yaml   <out>/cpu/model-store/*.mar
    <out>/gpu/...                        (the same, number_of_gpu=1)

Upload a variant's folder to the storage the InferenceService's `storageUri` points at
(deploy/inferenceservice-*.yaml). In the pod, KServe mounts it at /mnt/models and starts
`torchserve --start --model-store=/mnt/models/model-store --ts-config=/mnt/models/config/config.properties`.

The config is config.properties with what the runtime needs changed (and nothing else):
  - addresses: inference and management on 0.0.0.0:8085 (KServe's model server container proxies
    there from 8080), metrics on 0.0.0.0:8082 for Prometheus scraping;
  - paths under the mount point; models loaded through `model_snapshot`, as KServe expects;
  - token authorization off: KServe's proxy in the same pod does not send TorchServe tokens; the
    service is protected by the cluster instead (Istio/Knative authorization, NetworkPolicy);
  - the model API (register/unregister) off: the snapshot is the model list;
  - enable_envvars_config, so operators can override settings with TS_* environment variables.
--root, --bind and --ports exist for the test that starts TorchServe from this layout on loopback.
"""

import argparse
import json
import os
import shutil

from ts_server import REPO, read_properties, write_properties
from tskit.declaration import served


def kserve_properties(root: str, bind: str, ports: dict, gpus: int) -> dict:
    props = read_properties(os.path.join(REPO, "config.properties"))
    models = json.loads(props.pop("models"))
    props.pop("load_models", None)
    for version in (v for m in models.values() for v in m.values()):
        version["defaultVersion"] = True
    props.update({
        "inference_address": f"http://{bind}:{ports['inference']}",
        "management_address": f"http://{bind}:{ports['management']}",
        "metrics_address": f"http://{bind}:{ports['metrics']}",
        "grpc_inference_address": bind,
        "grpc_management_address": bind,
        "grpc_inference_port": str(ports["grpc_inference"]),
        "grpc_management_port": str(ports["grpc_management"]),
        "model_store": f"{root}/model-store",
        "metrics_config": f"{root}/config/metrics.yaml",
        "disable_token_authorization": "true",
        "enable_model_api": "false",  # the models come from the snapshot; nothing registers at run time
        "enable_envvars_config": "true",
        "number_of_gpu": str(gpus),
        "model_snapshot": json.dumps({"name": "startup.cfg", "modelCount": len(models), "models": models}),
    })
    return props


def write_layout(out: str, root: str, bind: str, ports: dict, gpus: int) -> None:
    os.makedirs(os.path.join(out, "config"), exist_ok=True)
    os.makedirs(os.path.join(out, "model-store"), exist_ok=True)
    write_properties(kserve_properties(root, bind, ports, gpus), os.path.join(out, "config", "config.properties"))
    shutil.copy(os.path.join(REPO, "metrics.yaml"), os.path.join(out, "config", "metrics.yaml"))
    for name in (d.name for d in served()):  # the models `make serve` loads, from their declarations
        source = os.path.join(REPO, "model_store", f"{name}.mar")
        target = os.path.join(out, "model-store", f"{name}.mar")
        if os.path.exists(target):
            os.remove(target)
        try:
            os.link(source, target)  # no copy of ~180 MB where the filesystem allows
        except OSError:
            shutil.copy(source, target)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(REPO, "build", "kserve"))
    parser.add_argument("--root", default="/mnt/models", help="where KServe mounts the storage in the pod")
    parser.add_argument("--bind", default="0.0.0.0")
    parser.add_argument("--ports", default="8085,8085,8082,7070,7071",
                        help="inference,management,metrics,grpc_inference,grpc_management")
    parser.add_argument("--variants", nargs="+", default=["cpu", "gpu"], choices=["cpu", "gpu"])
    args = parser.parse_args()
    keys = ["inference", "management", "metrics", "grpc_inference", "grpc_management"]
    ports = dict(zip(keys, (int(p) for p in args.ports.split(","))))
    for variant in args.variants:
        write_layout(os.path.join(args.out, variant), args.root, args.bind, ports, 1 if variant == "gpu" else 0)
        print(f"KServe layout ({variant}): {os.path.join(args.out, variant)}")


if __name__ == "__main__":
    main()
