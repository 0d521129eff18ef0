"""make account MODEL=<name>: where a request's CPU goes, in the Java frontend and in the workers by category.

A door over benchkit.account (a private server with the one model, the package's load generator with the
kind's bench input, process CPU and py-spy over a window inside the load):

    .venv/bin/python scripts/account.py mobilenet_v2 [--seconds 15] [--concurrency 16] [--out report.json]
        [--set number_of_netty_threads=1 ...]   (config.properties keys replaced for this run: what a setting buys;
                                                 --set model_store=<folder>: another build of the model's archive)
        [--input text_short]                    (one of the bench's inputs instead of the kind's default)
"""

import argparse
import json
import os
import sys

from benchkit.account import account, table
from tskit.declaration import REPO


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--seconds", type=int, default=15, help="the measured window (default 15)")
    parser.add_argument("--warmup", type=float, default=30, help="seconds of load before the window (default 30)")
    parser.add_argument("--concurrency", type=int, default=16, help="connections of the load (default 16)")
    parser.add_argument("--work", help="server, inputs and py-spy's stacks (default: build/account/<model>)")
    parser.add_argument("--out", help="the report as JSON")
    parser.add_argument("--input", help="one of the bench's inputs (default: the kind's, e.g. text_medium)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config.properties key of the server replaced for this run (repeatable)")
    args = parser.parse_args(argv)
    bad = [s for s in args.set if "=" not in s]
    if bad:
        parser.error(f"--set takes KEY=VALUE, not {bad[0]!r}")
    settings = dict(s.split("=", 1) for s in args.set)
    work = args.work or os.path.join(REPO, "build", "account", args.model)
    result = account(args.model, args.seconds, args.concurrency, work, settings, args.warmup, args.input)
    print(table(result))
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
