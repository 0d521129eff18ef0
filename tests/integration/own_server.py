"""A TorchServe of a test module's own, for tests that damage server state (kill workers, register
broken archives, roll versions out): its own ports, working dir, TMPDIR and model store.

The model store is a folder named `model_store` in the test's temp dir, with links to the archives
`make archives` built (and any extra archive the test adds), so nothing is ever written into the
repo's model_store/. Always used as a context manager: the server is stopped however the test ends.
"""

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from typing import Dict, Iterable, Iterator, List, Optional

import requests

from conftest import Client, test_config
from support import MODEL_STORE, REPO
from tskit.server import TorchServe, running
from tskit.client import ClientError
from tskit.declaration import served

# what `make serve` loads, from the declarations, but the text generator (tests/integration/test_generator.py
# covers its faults; its streams would hold these modules' loads for seconds each)
ALL_MODELS = tuple(d.name for d in served() if not d.torchserve.get("continuousBatching"))


def model_store(base: str, models: Iterable[str], extra: Optional[Dict[str, str]] = None,
                sources: Optional[Dict[str, str]] = None) -> str:
    """`base`/model_store with links to the repo's archives of `models` (or to `sources[model]`, an archive
    of the test's own under the model's name) and copies of `extra` ({file name in the store: path})."""
    store = os.path.join(base, "model_store")
    os.makedirs(store, exist_ok=True)
    for name in models:
        source = (sources or {}).get(name) or os.path.join(MODEL_STORE, f"{name}.mar")
        if not os.path.exists(source):
            raise FileNotFoundError(f"{source} is missing: run `make archives` first")
        os.symlink(source, os.path.join(store, f"{name}.mar"))
    for file_name, path in (extra or {}).items():
        shutil.copy(path, os.path.join(store, file_name))
    return store


@contextlib.contextmanager
def own_server(base: str, models: Iterable[str] = ALL_MODELS, extra: Optional[Dict[str, str]] = None,
               sources: Optional[Dict[str, str]] = None, **overrides) -> Iterator[TorchServe]:
    """A started TorchServe serving `models` (READY), stopped on exit."""
    models = list(models)
    workdir = os.path.join(base, "server")
    os.makedirs(workdir, exist_ok=True)
    props = {"model_store": model_store(base, models, extra, sources),
             "load_models": ",".join(f"{m}.mar" for m in models)}
    props.update(overrides)
    server = TorchServe(test_config(workdir, **props), workdir=workdir, tmpdir=os.path.join(workdir, "tmp"))
    server.new_ports = lambda: test_config(workdir, **props)
    with running(server, models, timeout=300):
        yield server


def worker_pids(client: Client, models: Iterable[str] = ALL_MODELS) -> Dict[str, List[int]]:
    """The worker pids of each model's default version (describe API)."""
    return {m: sorted(w["pid"] for w in client.describe(m)["workers"]) for m in models}


def wait_until(predicate, timeout: float, interval: float = 0.1, what: str = "condition"):
    """Poll `predicate` until it returns something truthy; that value, or TimeoutError."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = predicate()
        except (requests.RequestException, ClientError, OSError, ValueError, KeyError, IndexError):
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout:g} s")
        time.sleep(interval)


def kill_worker(pid: int) -> None:
    """SIGKILL one worker process, by the pid the describe API gave (never by name)."""
    os.kill(pid, signal.SIGKILL)


BROKEN_HANDLER = '''"""A handler whose initialize always raises: an archive that cannot be loaded (fault-injection test)."""
from ts.torch_handler.base_handler import BaseHandler


class BrokenHandler(BaseHandler):
    def initialize(self, context):
        raise RuntimeError("{message}")
'''


def build_broken_archive(directory: str, model_name: str, version: str, message: str) -> str:
    """A .mar whose handler raises RuntimeError(message) in initialize; returns its path."""
    os.makedirs(directory, exist_ok=True)
    handler = os.path.join(directory, "broken_handler.py")
    with open(handler, "w", encoding="utf-8") as f:
        f.write(BROKEN_HANDLER.format(message=message))
    config = os.path.join(directory, "model-config.yaml")
    with open(config, "w", encoding="utf-8") as f:
        f.write("minWorkers: 1\nmaxWorkers: 1\nmaxRetryTimeoutInSec: 5\n")
    archiver = shutil.which("torch-model-archiver", path=os.path.dirname(sys.executable)) or "torch-model-archiver"
    subprocess.run([archiver, "--force", "--model-name", model_name, "--version", version, "--handler", handler,
                    "--config-file", config, "--export-path", directory], check=True, timeout=120)
    return os.path.join(directory, f"{model_name}.mar")


def build_version_archive(base: str, store: str, version: str = "2.0") -> str:
    """`make archive-version MOBILENET_VERSION=<version>` into `store` (its build folder under `base`: nothing
    written into the repo); the archive's path."""
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}  # under `make test`
    make = subprocess.run(["make", "--no-print-directory", "archive-version", f"MOBILENET_VERSION={version}",
                           f"STORE={store}", f"BUILD={base}/build"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert make.returncode == 0, make.stdout + make.stderr
    assert os.path.isdir(os.path.join(base, "build", f"mobilenet_v2_v{version}")), "make did not build into BUILD"
    return os.path.join(store, f"mobilenet_v2_v{version}.mar")
