"""`tsctl` is a command of the venv (pyproject.toml's console script, installed editable by `make venv`) and
takes the same subcommands and options as `scripts/tsctl.py`, which keeps working (api-contract, third round).

Real subprocesses, the way a user types them; no server needed (help, usage errors, a missing key file).
"""
import argparse
import os
import re
import subprocess
import sys
import sysconfig
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata

import pytest

from tskit import cli

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, "scripts", "tsctl.py")
COMMAND = os.path.join(sysconfig.get_path("scripts"), "tsctl")  # .venv/bin/tsctl under `make test`
SUBPARSERS = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
SUBCOMMANDS = sorted(SUBPARSERS)
COLUMNS = "100"  # argparse wraps help at the terminal's width: the same for the subprocesses and this process


def run(argv, *args):
    # Another working directory than the repo's: the command must not depend on where it is typed.
    return subprocess.run([*argv, *args], capture_output=True, text=True, timeout=30, cwd=os.path.dirname(REPO),
                          env={**os.environ, "COLUMNS": COLUMNS,
                               "TS_KEY_FILE": os.path.join(REPO, "no-such-dir", "key_file.json")})


def as_command(*args):
    return run([COMMAND], *args)


def as_script(*args):
    return run([sys.executable, SCRIPT], *args)


def listed_subcommands(help_text: str):
    """The subcommands' `{a,b,...} ...` of the usage line argparse prints (an option's choices have no `...`)."""
    found = re.search(r"\{([a-z,-]+)\}\s+\.\.\.", help_text)
    assert found, help_text
    return sorted(found.group(1).split(","))


def test_the_command_is_the_installed_console_script_of_this_checkout():
    assert os.access(COMMAND, os.X_OK), f"{COMMAND} missing: `make venv` installs the package (pip install -e .)"
    (entry,) = [e for e in metadata.entry_points(group="console_scripts") if e.name == "tsctl"]
    assert entry.value == "tsctl:main"
    # editable: the command runs the checkout's scripts/tsctl.py, not a copy
    assert os.path.samefile(entry.load().__code__.co_filename, SCRIPT)


def test_help_lists_the_same_subcommands_as_the_script():
    command, script = as_command("--help"), as_script("--help")
    assert command.returncode == script.returncode == 0, command.stderr + script.stderr
    assert command.stdout == script.stdout
    assert listed_subcommands(command.stdout) == SUBCOMMANDS
    assert {"predict", "ping", "list", "describe", "register", "scale", "set-default", "unregister", "token",
            "compare", "rollout"} <= set(SUBCOMMANDS)


@pytest.fixture(scope="module")
def subcommand_help():
    """`tsctl <subcommand> --help` for every subcommand, run side by side (each is a ~0.2 s Python start)."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(zip(SUBCOMMANDS, pool.map(lambda name: as_command(name, "--help"), SUBCOMMANDS)))


@pytest.mark.parametrize("subcommand", SUBCOMMANDS)
def test_each_subcommand_takes_the_same_options(subcommand_help, subcommand, monkeypatch):
    """The command's help of each subcommand is the script's parser's (`scripts/tsctl.py <subcommand> --help`
    prints the same parser: tskit.cli's, whose `main` both run, checked above)."""
    command = subcommand_help[subcommand]
    monkeypatch.setenv("COLUMNS", COLUMNS)
    assert command.returncode == 0, command.stderr
    assert command.stdout == SUBPARSERS[subcommand].format_help()
    assert command.stdout.startswith(f"usage: tsctl {subcommand}")


def test_errors_exit_as_the_script_does():
    # a usage error: argparse's status 2 and message
    command, script = as_command("no-such-subcommand"), as_script("no-such-subcommand")
    assert command.returncode == script.returncode == 2
    assert command.stderr == script.stderr and "invalid choice" in command.stderr
    # main()'s own failure (no key file: no server here): status 1 and the same one-line message, no traceback
    command, script = as_command("ping"), as_script("ping")
    assert command.returncode == script.returncode == 1
    assert command.stderr == script.stderr
    assert command.stderr.startswith("error: no key file at ") and "Traceback" not in command.stderr
