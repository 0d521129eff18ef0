"""(L) a peer: LitServe serving the file an archive serves, with the archive's batch size, batch timeout
and worker count, decoding with the handlers' own modules, on 127.0.0.1.

LitServe (a bench-only dependency, litserve==0.2.19) takes JSON: {"image": "<base64>"} or {"text": "..."},
read with request_payload as the TorchServe handlers read the same body; it answers what they answer
({"predictions": [...]} or {"embedding": [...]}). One API server process (TorchServe has one frontend),
`workers` inference processes with one intra-op thread each, no authentication (loopback only).

    python -m benchkit.litserve_peer --archive m.mar --port 8123    (the server; LitServePeer runs it)
"""

import argparse
import subprocess
import sys
import time
from typing import Optional

import psutil
import requests

JSON = "application/json"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archive", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--api-servers", type=int, default=1)
    args = parser.parse_args(argv)
    import litserve as ls

    from benchkit.archives import unpack
    from benchkit.litserve_api import ArchiveAPI

    unpacked = unpack(args.archive)
    api = ArchiveAPI(unpacked, max_batch_size=unpacked.batch_size, batch_timeout=unpacked.max_batch_delay_ms / 1000)
    server = ls.LitServer(api, accelerator="cpu", devices=1, workers_per_device=unpacked.workers, timeout=60)
    server.run(host="127.0.0.1", port=args.port, num_api_servers=args.api_servers, log_level="warning",
               generate_client_file=False)
    return 0


class LitServePeer:
    """The peer in a subprocess of its own; stopped by pid (it and its children), never by name."""

    def __init__(self, archive: str, port: int, log_path: str, api_servers: int = 1):
        self.archive, self.port, self.log_path, self.api_servers = archive, port, log_path, api_servers
        self.process: Optional[subprocess.Popen] = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/predict"

    def start(self, timeout: float = 300) -> None:
        self._log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "benchkit.litserve_peer", "--archive", self.archive, "--port", str(self.port),
             "--api-servers", str(self.api_servers)],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"LitServe exited ({self.process.returncode}); log: {self.log_path}\n" + self.log_tail())
            try:
                if requests.get(f"http://127.0.0.1:{self.port}/health", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"LitServe not healthy after {timeout:.0f} s; log: {self.log_path}\n" + self.log_tail())

    def ask(self, workload: dict) -> requests.Response:
        """One request with a workload's body (LitServe's JSON), the response whatever its status."""
        with open(workload["path"], "rb") as f:
            return requests.post(self.url, data=f.read(), headers={"Content-Type": workload["content_type"]},
                                 timeout=120)

    def log_tail(self, lines: int = 20) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return "".join(f.readlines()[-lines:])

    def stop(self, timeout: float = 20) -> None:
        if self.process is None:
            return
        try:
            family = [psutil.Process(self.process.pid)] + psutil.Process(self.process.pid).children(recursive=True)
        except psutil.Error:
            family = []
        for proc in family:
            try:
                proc.terminate()
            except psutil.Error:
                pass
        _, alive = psutil.wait_procs(family, timeout=timeout)
        for proc in alive:  # only the processes this peer started, by pid
            try:
                proc.kill()
            except psutil.Error:
                pass
        self.process.wait(timeout=timeout)
        self._log.close()
        self.process = None


if __name__ == "__main__":
    sys.exit(main())
