"""TorchServe servers: start one, wait until its models are READY, stop it; a private one for tools and tests.

TorchServe keeps its pid file in the temp dir and writes key_file.json into the directory it was
started from. A server is therefore identified by (working dir, TMPDIR): `make serve` uses the repo
root and the system temp dir; each test server gets its own of both, plus its own ports.
Servers are stopped with `torchserve --stop` (which signals the pid in that pid file), never by name.
`scripts/ts_server.py` is the command over this module (make serve, make stop).
"""

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from typing import Dict, Iterator, List, Optional

import psutil

from tskit import addresses
from tskit.client import ClientError, KeyFile, TorchServeClient
from tskit.properties import read_properties, write_properties

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PID_FILE = ".model_server.pid"


def free_ports(count: int) -> List[int]:
    """Ports free on 127.0.0.1 now (all held open together, so they differ)."""
    sockets = []
    for _ in range(count):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        sockets.append(s)
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def absolute_log_config(vm_arg: str) -> str:
    """-Dlog4j.configurationFile=<path relative to the repo> -> the same with an absolute path."""
    key, _, value = vm_arg.partition("=")
    if key == "-Dlog4j.configurationFile" and value and "://" not in value and not os.path.isabs(value):
        return f"{key}={os.path.join(REPO, value)}"
    return vm_arg


def private_config(workdir: str, **overrides: str) -> str:
    """The repo's config.properties for a server of one's own: free loopback ports, the repo's model
    store and metrics config by absolute path, then `overrides`; written into `workdir`."""
    props = read_properties(os.path.join(REPO, "config.properties"))
    inference, management, metrics, grpc_inference, grpc_management = free_ports(5)
    props.update({
        "inference_address": f"http://127.0.0.1:{inference}",
        "management_address": f"http://127.0.0.1:{management}",
        "metrics_address": f"http://127.0.0.1:{metrics}",
        "grpc_inference_port": str(grpc_inference),
        "grpc_management_port": str(grpc_management),
        "model_store": os.path.join(REPO, "model_store"),
        "metrics_config": os.path.join(REPO, props["metrics_config"]),
        "vmargs": " ".join(absolute_log_config(word) for word in props.get("vmargs", "").split()),
    })
    props.update(overrides)
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "config.properties")
    write_properties(props, path)
    return path


def private_server(workdir: str, **overrides: str) -> "TorchServe":
    """A TorchServe of one's own (see private_config), with its own TMPDIR under `workdir`."""
    server = TorchServe(private_config(workdir, **overrides), workdir=workdir, tmpdir=os.path.join(workdir, "tmp"))
    server.new_ports = lambda: private_config(workdir, **overrides)
    return server


def port_taken(error: Exception) -> bool:
    """The frontend died because a port it was given was bound meanwhile (free_ports can only say
    which ports were free a moment ago)."""
    text = str(error)
    return "BindException" in text or "Address already in use" in text


@contextlib.contextmanager
def running(server: "TorchServe", models: Optional[List[str]] = None, timeout: float = 300) -> Iterator["TorchServe"]:
    """Start `server`, wait until `models` (default: those it loads) are READY, always stop it.
    A private server that lost one of its ports to another process is started again on new ones."""
    for attempt in range(3):
        try:
            server.start()
            server.wait_ready(models, timeout)
            break
        except RuntimeError as err:
            server.stop()
            if server.new_ports is None or not port_taken(err) or attempt == 2:
                raise
            server.use_config(server.new_ports())
    try:
        yield server
    finally:
        server.stop()


class TorchServe:
    """One TorchServe instance: its config file, working dir (key file, logs) and temp dir."""

    def __init__(self, config: str, workdir: str = REPO, tmpdir: Optional[str] = None,
                 log_dir: Optional[str] = None):
        self.workdir = os.path.abspath(workdir)
        self.tmpdir = os.path.abspath(tmpdir or tempfile.gettempdir())
        self.log_dir = os.path.abspath(log_dir or os.path.join(self.workdir, "logs"))
        self.new_ports = None  # private servers: writes the config again with other free ports
        self.use_config(config)

    def use_config(self, config: str) -> None:
        self.config = os.path.abspath(config)
        self.props = read_properties(self.config)

    # -- addresses and keys -------------------------------------------------------------------
    @property
    def listening(self) -> addresses.Addresses:
        """Where this server's config says it listens (HTTP URLs, gRPC host:port)."""
        return addresses.of(self.props)

    @property
    def inference_url(self) -> str:
        return self.listening.inference

    @property
    def management_url(self) -> str:
        return self.listening.management

    @property
    def metrics_url(self) -> str:
        return self.listening.metrics

    @property
    def key_file(self) -> str:
        return os.path.join(self.workdir, "key_file.json")

    def keys(self) -> Dict[str, str]:
        return KeyFile(self.key_file).keys()

    def client(self, timeout: float = 120) -> TorchServeClient:
        """The package's one client (tskit.client), with this server's addresses and key file."""
        return TorchServeClient(self.inference_url, self.management_url,
                                self.key_file if self.token_auth else None, timeout, metrics_url=self.metrics_url)

    @property
    def model_log(self) -> str:
        return os.path.join(self.log_dir, "model_log.log")

    def batch_sizes(self, model: Optional[str] = None) -> List[int]:
        """Sizes of the batches the handlers reported (`handled batch size=N`, one model log line per batch),
        in order; only `model`'s workers' when named (the frontend prefixes each line with its worker)."""
        worker = rf"-{re.escape(model)}_[0-9.]+-stdout MODEL_LOG - " if model else ""
        with open(self.model_log, encoding="utf-8", errors="replace") as f:
            return [int(n) for n in re.findall(worker + r"handled batch size=(\d+)", f.read())]

    @property
    def console_log(self) -> str:
        return os.path.join(self.log_dir, "console.log")

    @property
    def server_log(self) -> str:
        return os.path.join(self.log_dir, "ts_log.log")

    def expected_models(self) -> List[str]:
        """Model names of `load_models` (archive file names without .mar), or of `model_snapshot`."""
        if self.props.get("model_snapshot"):
            return list(json.loads(self.props["model_snapshot"])["models"])
        names = self.props.get("load_models", "")
        return [n.strip().split("=")[0].removesuffix(".mar") for n in names.split(",") if n.strip()]

    @property
    def token_auth(self) -> bool:
        return self.props.get("disable_token_authorization", "false").lower() != "true"

    def auth_headers(self, kind: str) -> Dict[str, str]:
        """{"Authorization": "Bearer <key>"} for `inference` or `management`; {} without token auth."""
        return self.client().auth_headers(kind)

    # -- process ------------------------------------------------------------------------------
    def _env(self) -> Dict[str, str]:
        # TEMP too: the launcher takes java.io.tmpdir from TEMP (not TMPDIR), and the worker sockets
        # (.ts.sock.900N) live there; with the system's /tmp two servers would share them.
        env = dict(os.environ, TMPDIR=self.tmpdir, TEMP=self.tmpdir, LOG_LOCATION=self.log_dir,
                   METRICS_LOCATION=self.log_dir)
        bin_dir = os.path.dirname(sys.executable)  # the venv's torchserve, java from PATH
        env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
        return env

    def pid(self) -> Optional[int]:
        """The frontend's pid if this instance is running."""
        path = os.path.join(self.tmpdir, PID_FILE)
        try:
            with open(path, encoding="utf-8") as f:
                pid = int(f.read().strip())
            return pid if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE else None
        except (OSError, ValueError, psutil.Error):
            return None

    def start(self) -> None:
        os.makedirs(self.log_dir, exist_ok=True)
        os.makedirs(self.tmpdir, exist_ok=True)
        cmd = [shutil.which("torchserve", path=self._env()["PATH"]) or "torchserve",
               "--start", "--ts-config", self.config]
        # The frontend inherits these descriptors and outlives `torchserve --start`: a file, not a pipe.
        with open(self.console_log, "ab") as console:
            result = subprocess.run(cmd, cwd=self.workdir, env=self._env(), stdin=subprocess.DEVNULL,
                                    stdout=console, stderr=subprocess.STDOUT, timeout=60)
        if result.returncode != 0:
            raise RuntimeError("torchserve --start failed\n" + self.log_tail())

    def stop(self, timeout: float = 60) -> bool:
        """Stop via `torchserve --stop` and wait until the frontend and its workers are gone."""
        pid = self.pid()
        if pid is None:
            return False
        try:
            family = [psutil.Process(pid)] + psutil.Process(pid).children(recursive=True)
        except psutil.Error:
            family = []
        subprocess.run([shutil.which("torchserve", path=self._env()["PATH"]) or "torchserve", "--stop"],
                       cwd=self.workdir, env=self._env(), capture_output=True, timeout=60)
        _, alive = psutil.wait_procs(family, timeout=timeout)
        for proc in alive:  # only processes of the server we started, by pid
            proc.kill()
        return True

    # -- health -------------------------------------------------------------------------------
    def model_status(self, name: str) -> List[dict]:
        """The workers of a model's default version (describe API)."""
        return self.client(timeout=10).workers(name)

    def ready(self, models: List[str]) -> bool:
        """The management API answers and every model has its minWorkers READY (all of them, so that a
        test never starts while a worker is still loading or being replaced)."""
        try:
            client = self.client(timeout=10)
            client.list_models()
            return all(self._workers_ready(client.describe(m)[0]) for m in models)
        except (OSError, ValueError, KeyError, IndexError, ClientError):
            return False

    @staticmethod
    def _workers_ready(described: dict) -> bool:
        ready = sum(w.get("status") == "READY" for w in described.get("workers", []))
        return ready >= max(1, int(described.get("minWorkers", 1)))

    def wait_ready(self, models: Optional[List[str]] = None, timeout: float = 300) -> None:
        models = self.expected_models() if models is None else models
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ready(models):
                return
            if self.pid() is None:
                raise RuntimeError("TorchServe exited during start-up\n" + self.log_tail())
            time.sleep(1)
        raise TimeoutError(f"models {models} not READY after {timeout:.0f} s\n" + self.log_tail())

    def log_tail(self, lines: int = 40) -> str:
        out = []
        for path in (self.console_log, self.server_log, self.model_log):
            if os.path.exists(path):
                with open(path, encoding="utf-8", errors="replace") as f:
                    out.append(f"--- last lines of {path}\n" + "".join(f.readlines()[-lines:]))
        return "\n".join(out) or f"(no logs in {self.log_dir})"
