#!/usr/bin/env python3
"""tsctl: a small command line for TorchServe's inference and management APIs (token auth aware).

A door over tskit.cli (the subcommands, their options, what each prints); the `tsctl` command of the
venv runs the same `main`:

    .venv/bin/python scripts/tsctl.py --help
"""

import sys

from tskit import cli


def main(argv=None) -> int:
    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(main())
