"""make profile MODEL=<name>: torch.profiler over a served model under load, its top operators printed.

A door over benchkit.profiling (the copy with handler.profileBatches, the private server, the load until
every worker wrote its profile):

    .venv/bin/python scripts/profile_model.py mobilenet_v2 [--batches 20] [--work build/profile/mobilenet_v2]
"""

import argparse
import os
import sys

from benchkit.profiling import profile
from tskit.declaration import REPO


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--work", help="default: build/profile/<model>")
    parser.add_argument("--store", default=os.path.join(REPO, "model_store"))
    args = parser.parse_args(argv)
    work = args.work or os.path.join(REPO, "build", "profile", args.model)
    tables = profile(args.model, args.batches, work, args.store, args.concurrency)
    for table in tables:
        print(f"== {table} (trace: {table[:-len('.top.txt')]}.trace.json)")
        with open(table, encoding="utf-8") as f:
            print(f.read())
    return 0


if __name__ == "__main__":
    sys.exit(main())
