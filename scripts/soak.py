#!/usr/bin/env python3
"""make soak: a bounded load and soak run over the three models, with every answer checked.

A door over benchkit.soak (the run, the worker memory and restart checks, the report; its docstring says
what fails a run):

    python scripts/soak.py [--requests 5000] [--concurrency 16] [--warmup 400] [--json out.json]
    python scripts/soak.py --inference-url http://127.0.0.1:8080 --management-url http://127.0.0.1:8081 \\
        --key-file key_file.json     # against a running server (make serve) instead of a server of its own

Without --inference-url it starts a TorchServe of its own (config.properties with free loopback
ports, its own working dir and TMPDIR, archives from model_store/) and stops it at the end.
"""

import argparse
import json
import os
import sys

from benchkit import soak
from tskit import addresses
from tskit.checked_load import MODELS
from tskit.server import REPO


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=400)
    parser.add_argument("--max-growth", type=float, default=0.10, help="largest worker RSS growth allowed (0.10 = 10%%)")
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--overload-factor", type=int, default=4,
                        help="a last phase at this many times the concurrency (0: none)")
    parser.add_argument("--inference-url")
    parser.add_argument("--management-url", default=addresses.served().management)
    parser.add_argument("--key-file", default=os.path.join(REPO, "key_file.json"))
    parser.add_argument("--json", help="also write the report here")
    args = parser.parse_args(argv)

    def say(line: str) -> None:
        print(f"[soak] {line}", file=sys.stderr, flush=True)

    report = soak.run(args, say)
    text = json.dumps(report.as_dict(), indent=2)
    print(text)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    say(soak.verdict(report))
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
