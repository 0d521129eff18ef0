"""Start, wait for and stop the KServe engine (tskit.kserve_engine) as `make serve ENGINE=kserve` does.

    engine = KServeEngine(store, workdir)          # workdir: key_file.json, logs/, its pid file
    engine.start(models); engine.wait_ready(models); engine.stop()

The inference key is key_file.json's in the workdir, the file TorchServe writes there (`make serve`), so both
engines take the same key; where there is none yet, one is written in TorchServe's format. The process is
stopped by the pid it was started with (never by name).
"""

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from typing import List, Optional

import psutil
import requests

from tskit import kinds
from tskit.declaration import served

HTTP_PORT, GRPC_PORT = 9080, 9081
PID_FILE = "kserve_engine.pid"
KEY_FILE = "key_file.json"


def one_shot_models(names: List[str]) -> List[str]:
    """Of `names`, those answered in one shot (not the text generators): what (O)'s side-by-side load sends."""
    streaming = {d.name for d in served() if kinds.kind(d.kind).streams_every_request}
    return [n for n in names if n not in streaming]


class KServeEngine:
    def __init__(self, store: str, workdir: str, http_port: int = HTTP_PORT, grpc_port: int = GRPC_PORT,
                 max_request_size: int = 6553500):
        """`max_request_size`: config.properties' (TorchServe's default otherwise): larger bodies get 413."""
        self.store, self.workdir = os.path.abspath(store), os.path.abspath(workdir)  # the engine runs in workdir
        self.http_port, self.grpc_port, self.max_request_size = http_port, grpc_port, max_request_size
        self.url = f"http://127.0.0.1:{http_port}"

    @property
    def key_file(self) -> str:
        return os.path.join(self.workdir, KEY_FILE)

    @property
    def inference_url(self) -> str:
        return self.url

    @property
    def grpc_address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def auth_headers(self, kind: str = "inference") -> dict:
        """The HTTP header the engine requires on inference (the same key_file.json key as TorchServe's)."""
        with open(self.key_file, encoding="utf-8") as f:
            return {"Authorization": f"Bearer {json.load(f)[kind]['key']}"}

    @property
    def log_file(self) -> str:
        """The engine's output: KServe's log and the handlers' own lines, each with its model's name."""
        return os.path.join(self.workdir, "logs", "kserve_engine.log")

    @property
    def unpack_dir(self) -> str:
        """The archives unpacked while the engine runs (removed when it stops)."""
        return os.path.join(self.workdir, "kserve_models")

    def ensure_key_file(self) -> None:
        if os.path.exists(self.key_file):
            return
        keys = {kind: {"key": secrets.token_urlsafe(24), "expiration time": "never"}
                for kind in ("management", "inference", "API")}
        with open(self.key_file, "w", encoding="utf-8") as f:
            json.dump(keys, f, indent=2)

    def pid(self) -> Optional[int]:
        try:
            with open(os.path.join(self.workdir, PID_FILE), encoding="utf-8") as f:
                pid = int(f.read().strip())
        except (OSError, ValueError):
            return None
        try:  # a child that ended stays a zombie until reaped: it no longer runs
            return pid if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE else None
        except psutil.Error:
            return None

    def start(self, models: List[str]) -> None:
        if self.pid():
            raise RuntimeError(f"the KServe engine already runs (pid {self.pid()})")
        self.ensure_key_file()
        os.makedirs(os.path.dirname(self.log_file), exist_ok=True)
        shutil.rmtree(self.unpack_dir, ignore_errors=True)
        command = [sys.executable, "-m", "tskit.kserve_engine", "--store", self.store, "--models", *models,
                   "--key-file", self.key_file, "--http-port", str(self.http_port),
                   "--grpc-port", str(self.grpc_port), "--max-request-size", str(self.max_request_size),
                   "--unpack-dir", self.unpack_dir]
        with open(self.log_file, "ab") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir,
                                       start_new_session=True)
        with open(os.path.join(self.workdir, PID_FILE), "w", encoding="utf-8") as f:
            f.write(str(process.pid))

    def ready(self, models: List[str]) -> bool:
        try:
            return all(requests.get(f"{self.url}/v2/models/{m}/ready", timeout=5).status_code == 200 for m in models)
        except requests.RequestException:
            return False

    def wait_ready(self, models: List[str], timeout: float = 300) -> float:
        """Seconds until every model is ready; RuntimeError when the process ends or the time is up."""
        started = time.monotonic()
        while not self.ready(models):
            if not self.pid():
                raise RuntimeError(f"the KServe engine stopped: see {self.log_file}")
            if time.monotonic() - started > timeout:
                raise RuntimeError(f"the KServe engine was not ready within {timeout:.0f} s")
            time.sleep(0.2)
        return time.monotonic() - started

    def stop(self, timeout: float = 30) -> bool:
        pid = self.pid()
        if pid is None:
            return False
        process = psutil.Process(pid)
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except psutil.TimeoutExpired:
            process.kill()
            process.wait(10)
        os.remove(os.path.join(self.workdir, PID_FILE))
        shutil.rmtree(self.unpack_dir, ignore_errors=True)
        return True
