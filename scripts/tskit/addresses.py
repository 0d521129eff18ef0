"""Where a TorchServe listens, read from its config.properties: the one place ports are spelled.

`of(props)` reads the five addresses of a config, with TorchServe 0.12's own defaults for keys it leaves
out (ConfigManager: 8080, 8081, 8082 on 127.0.0.1, gRPC 7070 / 7071); `served()` is the repo's
config.properties, the server `make serve` starts, so the CLI's, the client's and the tools' defaults
agree with it by construction (change a port there and they follow).
"""

import functools
import os
from dataclasses import dataclass
from typing import Dict

from tskit.properties import read_properties

CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                      "config.properties")
TORCHSERVE_DEFAULTS = {
    "inference_address": "http://127.0.0.1:8080", "management_address": "http://127.0.0.1:8081",
    "metrics_address": "http://127.0.0.1:8082", "grpc_inference_address": "127.0.0.1",
    "grpc_management_address": "127.0.0.1", "grpc_inference_port": "7070", "grpc_management_port": "7071",
}


@dataclass(frozen=True)
class Addresses:
    inference: str          # http://host:port of the inference API
    management: str
    metrics: str
    grpc_inference: str     # host:port, as grpc.insecure_channel takes it
    grpc_management: str


def of(props: Dict[str, str]) -> Addresses:
    value = {**TORCHSERVE_DEFAULTS, **props}
    return Addresses(value["inference_address"].rstrip("/"), value["management_address"].rstrip("/"),
                     value["metrics_address"].rstrip("/"),
                     f"{value['grpc_inference_address']}:{value['grpc_inference_port']}",
                     f"{value['grpc_management_address']}:{value['grpc_management_port']}")


@functools.lru_cache(maxsize=None)
def served() -> Addresses:
    """The repo's config.properties (TorchServe's defaults where it is missing, as for an installed copy)."""
    return of(read_properties(CONFIG) if os.path.exists(CONFIG) else {})
