"""A real TorchServe for the integration tests: its own ports, working dir and temp dir.

It serves the archives `make archives` built into model_store/, with the repo's config.properties
except for the addresses, so it can run beside a `make serve` server. It is always stopped.
"""

import os
import re
import socket
import time

import pytest
import requests

from support import MODEL_STORE, REPO
from ts_server import TorchServe, read_properties, write_properties


def free_ports(count):
    sockets = []
    for _ in range(count):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        sockets.append(s)
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_config(workdir, **overrides):
    props = read_properties(os.path.join(REPO, "config.properties"))
    inference, management, metrics, grpc_inference, grpc_management = free_ports(5)
    props.update({
        "inference_address": f"http://127.0.0.1:{inference}",
        "management_address": f"http://127.0.0.1:{management}",
        "metrics_address": f"http://127.0.0.1:{metrics}",
        "grpc_inference_port": str(grpc_inference),
        "grpc_management_port": str(grpc_management),
        "model_store": MODEL_STORE,
        "metrics_config": os.path.join(REPO, props["metrics_config"]),
    })
    props.update(overrides)
    path = os.path.join(workdir, "config.properties")
    write_properties(props, path)
    return path


class Client:
    """requests with the server's tokens; `auth=False` sends none."""

    def __init__(self, server: TorchServe):
        self.server = server

    def _headers(self, kind, headers, auth):
        headers = dict(headers or {})
        if auth:
            headers["Authorization"] = f"Bearer {self.server.keys()[kind]}"
        return headers

    def infer(self, method, path, headers=None, auth=True, **kwargs):
        return requests.request(method, self.server.inference_url + path,
                                headers=self._headers("inference", headers, auth), timeout=120, **kwargs)

    def manage(self, method, path, headers=None, auth=True, **kwargs):
        return requests.request(method, self.server.management_url + path,
                                headers=self._headers("management", headers, auth), timeout=120, **kwargs)

    def predict(self, model, body, content_type, **kwargs):
        return self.infer("POST", f"/predictions/{model}", data=body,
                          headers={"Content-Type": content_type}, **kwargs)

    def batch_sizes(self, model):
        """Sizes of the batches the model's handler reported (`handled batch size=N`), in order."""
        with open(self.server.model_log, encoding="utf-8", errors="replace") as f:
            log = f.read()
        pattern = rf"-{re.escape(model)}_[0-9.]+-stdout MODEL_LOG - handled batch size=(\d+)"
        return [int(n) for n in re.findall(pattern, log)]

    def batches_since(self, model, before, total, timeout=15):
        """Batch sizes logged after the first `before`, once they add up to `total` requests.
        The frontend copies worker stdout to model_log.log on its own thread, so a line can land
        a moment after the response it belongs to."""
        deadline = time.monotonic() + timeout
        while True:
            sizes = self.batch_sizes(model)[before:]
            if sum(sizes) >= total or time.monotonic() > deadline:
                return sizes
            time.sleep(0.2)

    def describe(self, model):
        response = self.manage("GET", f"/models/{model}")
        response.raise_for_status()
        return response.json()[0]


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("torchserve"))
    server = TorchServe(test_config(workdir), workdir=workdir, tmpdir=os.path.join(workdir, "tmp"))
    server.start()
    try:
        server.wait_ready(timeout=300)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def client(server):
    return Client(server)
