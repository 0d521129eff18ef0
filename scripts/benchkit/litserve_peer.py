"""(L) a peer: LitServe serving the file an archive serves, with the archive's batch size, batch timeout
and worker count, decoding with the handlers' own modules, on 127.0.0.1.

LitServe (a bench-only dependency, litserve==0.2.19) takes JSON: {"image": "<base64>"} or {"text": "..."},
read with request_payload as the TorchServe handlers read the same body; it answers what they answer
({"predictions": [...]} or {"embedding": [...]}). One API server process (TorchServe has one frontend),
`workers` inference processes with one intra-op thread each, no authentication (loopback only).

    python -m benchkit.litserve_peer --archive m.mar --port 8123    (the server; LitServePeer runs it)
"""

import argparse
import sys
import tempfile

import requests

from benchkit.peer_process import PeerProcess

JSON = "application/json"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archive", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--api-servers", type=int, default=1)
    parser.add_argument("--unpack-dir", required=True, help="the archive is unpacked here (its starter removes it)")
    args = parser.parse_args(argv)
    import litserve as ls

    from tskit.unpacked import unpack
    from benchkit.litserve_api import ArchiveAPI

    unpacked = unpack(args.archive, args.unpack_dir)
    api = ArchiveAPI(unpacked, max_batch_size=unpacked.batch_size, batch_timeout=unpacked.max_batch_delay_ms / 1000)
    server = ls.LitServer(api, accelerator="cpu", devices=1, workers_per_device=unpacked.workers, timeout=60)
    server.run(host="127.0.0.1", port=args.port, num_api_servers=args.api_servers, log_level="warning",
               generate_client_file=False)
    return 0


class LitServePeer(PeerProcess):
    """The peer in a subprocess of its own (benchkit.peer_process)."""

    def __init__(self, archive: str, port: int, log_path: str, api_servers: int = 1):
        scratch = tempfile.mkdtemp(prefix="litserve-mar-")
        super().__init__("LitServe", [sys.executable, "-m", "benchkit.litserve_peer", "--archive", archive,
                                      "--port", str(port), "--api-servers", str(api_servers),
                                      "--unpack-dir", scratch],
                         f"http://127.0.0.1:{port}/health", log_path, scratch=scratch)
        self.port = port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/predict"

    def ask(self, workload: dict) -> requests.Response:
        """One request with a workload's body (LitServe's JSON), the response whatever its status."""
        with open(workload["path"], "rb") as f:
            return requests.post(self.url, data=f.read(), headers={"Content-Type": workload["content_type"]},
                                 timeout=120)


if __name__ == "__main__":
    sys.exit(main())
