"""make kserve: the storage layout KServe's TorchServe runtime mounts, from this repo's archives.

A door over tskit.deploy (the config the runtime needs, the files it names, the archives, and the
manifests' containerConcurrency; its docstring says what changes and why):

    .venv/bin/python scripts/kserve_layout.py [--out build/kserve] [--variants cpu gpu]

--root, --bind, --metrics-bind and --ports exist for the test that starts TorchServe from this layout
on free loopback ports.
"""

import argparse
import os

from tskit import deploy


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(deploy.REPO, "build", "kserve"))
    parser.add_argument("--root", default="/mnt/models", help="where KServe mounts the storage in the pod")
    parser.add_argument("--bind", default="127.0.0.1", help="TorchServe's inference, management and gRPC listeners")
    parser.add_argument("--metrics-bind", default="0.0.0.0", help="the metrics listener (Prometheus scrapes the pod IP)")
    parser.add_argument("--ports", default="8085,8085,8082,7070,7071", help=",".join(deploy.PORT_KEYS))
    parser.add_argument("--variants", nargs="+", default=["cpu", "gpu"], choices=["cpu", "gpu"])
    args = parser.parse_args(argv)
    deploy.kserve(args.out, args.root, args.bind, args.metrics_bind, deploy.parse_ports(args.ports), args.variants)


if __name__ == "__main__":
    main()
