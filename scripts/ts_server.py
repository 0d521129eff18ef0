"""Start, wait for and stop a TorchServe server; used by `make serve` / `make stop`.

A door over tskit.server (the TorchServe class the tools and tests use):

    python scripts/ts_server.py start [--config config.properties] [--workdir DIR] [--timeout 300]
    python scripts/ts_server.py stop [--config ...] [--workdir DIR]
    python scripts/ts_server.py status [--config ...] [--workdir DIR]
    python scripts/ts_server.py start|stop|status --engine kserve [...]   KServe's ModelServer (tskit.kserve_server)

--workdir: the server's own working dir (key_file.json, logs) and temp dir (DIR/tmp: its pid file and
worker sockets), for a second server beside `make serve`'s; the default is the repo root and the system's.
"""

import argparse
import os
import sys

from tskit.kserve_server import KServeEngine
from tskit.server import REPO, TorchServe


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["start", "stop", "status"])
    parser.add_argument("--config", default=os.path.join(REPO, "config.properties"))
    parser.add_argument("--workdir", help="the server's working dir; its temp dir is <workdir>/tmp")
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--engine", choices=["torchserve", "kserve"], default="torchserve")
    args = parser.parse_args(argv)
    if args.workdir:
        os.makedirs(os.path.join(args.workdir, "tmp"), exist_ok=True)
        server = TorchServe(args.config, workdir=args.workdir, tmpdir=os.path.join(args.workdir, "tmp"))
    else:
        server = TorchServe(args.config)
    models = server.expected_models()
    if args.engine == "kserve":  # the same archives and key file, the workdir's
        store = server.props.get("model_store", os.path.join(REPO, "model_store"))
        engine = KServeEngine(os.path.join(REPO, store), server.workdir,
                              max_request_size=int(server.props.get("max_request_size", 6553500)))
        return kserve(args.action, engine, models, args.timeout)

    if args.action == "stop":
        print("TorchServe stopped." if server.stop() else "TorchServe is not running.")
        return 0
    if args.action == "status":
        running = server.pid() is not None
        print(f"running (pid {server.pid()}), models ready: {server.ready(models)}" if running else "not running")
        return 0 if running else 1

    if server.pid() is not None:
        print(f"TorchServe is already running (pid {server.pid()}); waiting for {', '.join(models)}.")
    else:
        print(f"Starting TorchServe (logs in {server.log_dir}) ...")
        server.start()
    try:
        server.wait_ready(models, args.timeout)
    except (RuntimeError, TimeoutError) as err:
        print(f"make serve failed: {err}", file=sys.stderr)
        return 1
    print(f"Ready: {', '.join(models)} on {server.inference_url} "
          f"(management {server.management_url}, metrics {server.metrics_url}); "
          f"tokens in {server.key_file}")
    return 0


def kserve(action: str, engine: KServeEngine, models, timeout: float) -> int:
    if action == "stop":
        print("The KServe engine stopped." if engine.stop() else "The KServe engine is not running.")
        return 0
    if action == "status":
        print(f"running (pid {engine.pid()}), models ready: {engine.ready(models)}" if engine.pid() else "not running")
        return 0 if engine.pid() else 1
    if not engine.pid():
        engine.start(models)
    try:
        seconds = engine.wait_ready(models, timeout)
    except RuntimeError as err:
        print(f"make serve ENGINE=kserve failed: {err}", file=sys.stderr)
        return 1
    print(f"Ready (KServe engine, {seconds:.1f} s): {', '.join(models)} on {engine.url} (plain, v1, v2; gRPC v2 "
          f"{engine.grpc_address}); "
          f"tokens in {engine.key_file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
