"""The model tool behind the Makefile: `python -m tskit <command>` (PYTHONPATH=scripts:handlers).

    model   --name N --kind K --source S [--labels F] [--format F] [--precision P] [--force]
            declare models/N/model.yaml, build model_store/N.mar, update config.properties' models block
    build   NAME [--version V] [--archive-name A] [--store DIR]    one archive from its declaration
    config                                                         config.properties' models block
    list    [--served] [--kind K]                                  declared models, one per line
"""

import argparse
import dataclasses
import json
import os
import shutil
import sys
import warnings

from tskit import declaration as declarations
from tskit.declaration import DeclarationError
from tskit.sources import SourceError


def main(argv=None) -> int:
    warnings.filterwarnings("ignore", category=FutureWarning)  # torch.jit's deprecation notes, on every load
    parser = argparse.ArgumentParser(prog="python -m tskit", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    model = commands.add_parser("model", help="declare and build a model of your own")
    model.add_argument("--name", required=True)
    model.add_argument("--kind", required=True)
    model.add_argument("--source", required=True)
    model.add_argument("--labels")
    model.add_argument("--format")
    model.add_argument("--precision", default="fp32")
    model.add_argument("--force", action="store_true", help="overwrite an existing declaration")
    for command in (model,):
        command.add_argument("--models-dir", default=declarations.MODELS_DIR,
                             help="where declarations live (config.properties follows only the repo's models/)")
        command.add_argument("--store", help="where the .mar goes (default: model_store/)")
        command.add_argument("--build-root", help="scratch folder for the build (default: build/)")
    build = commands.add_parser("build", help="build one declared model's archive")
    build.add_argument("name")
    build.add_argument("--version")
    build.add_argument("--archive-name")
    build.add_argument("--store")
    build.add_argument("--models-dir", default=declarations.MODELS_DIR)
    build.add_argument("--build-root")
    build.add_argument("--format", help="serve this version in another format than the declaration's")
    build.add_argument("--precision", help="... or another precision (a candidate for `tsctl compare`)")
    commands.add_parser("config", help="write config.properties' models block")
    listing = commands.add_parser("list", help="declared models")
    listing.add_argument("--served", action="store_true")
    listing.add_argument("--kind")
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (DeclarationError, SourceError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def run_model(args) -> int:
    from tskit.declare import declare

    folder = os.path.join(args.models_dir, args.name)
    existed = os.path.exists(folder)
    path = declare(args.name, args.kind, args.source, args.labels, args.format, args.precision, args.force,
                   models_dir=args.models_dir)
    print(f"declared {args.name}: {path}")
    args.version = args.archive_name = None
    try:
        run_build(args)
    except BaseException:
        if not existed:  # a declaration that cannot build would stop every later `make archives` / `make serve`
            shutil.rmtree(folder, ignore_errors=True)
            print(f"{args.name} not built: its declaration was removed again", file=sys.stderr)
        raise
    if os.path.abspath(args.models_dir) != declarations.MODELS_DIR:
        print(f"{args.models_dir} is not the repo's models/: config.properties left as it is")
        return 0
    return run_config(args)


def run_build(args) -> int:
    from tskit.archive import STORE_DIR, build

    archive_name = args.archive_name or args.name
    build_dir = os.path.join(args.build_root, archive_name) if args.build_root else None
    declaration = declarations.load(args.name, args.models_dir)
    overrides = {k: v for k, v in (("format", args.format), ("precision", args.precision)) if v}
    if overrides:  # a candidate version of the same model, checked like a declaration
        declaration = dataclasses.replace(declaration, **overrides)
        declarations.check(declaration)
    report = build(declaration, store=args.store or STORE_DIR,
                   build_dir=build_dir, version=args.version, archive_name=archive_name)
    print(json.dumps(report))
    return 0


def run_config(args) -> int:
    from tskit.server_config import CONFIG, write_config

    if write_config(declarations.served()):
        print(f"{CONFIG}: models block updated")
    return 0


def run_list(args) -> int:
    chosen = declarations.served() if args.served else declarations.declared()
    for d in chosen:
        if not args.kind or d.kind == args.kind:
            print(f"{d.name}\t{d.kind}\t{d.format}\t{d.precision}\t{'served' if d.serve else 'not served'}")
    return 0


COMMANDS = {"model": run_model, "build": run_build, "config": run_config, "list": run_list}

if __name__ == "__main__":
    sys.exit(main())
