"""The model tool behind the Makefile: `python -m tskit <command>` (PYTHONPATH=scripts:handlers).

    model   --name N --kind K --source S [--labels F] [--format F] [--precision P] [--force]
            declare models/N/model.yaml, build model_store/N.mar, update config.properties' models block
            (checked before the build: a model the server cannot hold leaves nothing changed)
    build   NAME [--version V] [--archive-name A] [--store DIR]    one archive from its declaration
    config  [--models-dir D --store S --config C]                  config.properties' models block and
                                                                   each served archive's queue
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
from tskit.admission import admissions, shared_note
from tskit.properties import read_properties
from tskit.server_config import CONFIG, STORE, check_config, write_config
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
    config = commands.add_parser("config", help="write config.properties' models block, stamp the archives' queues")
    for command in (model, config):
        command.add_argument("--models-dir", default=declarations.MODELS_DIR, help="where declarations live")
        command.add_argument("--store", help="where the archives are (default: model_store/)")
        command.add_argument("--config", help="the config.properties that follows these models (default: the "
                                              "repo's for the repo's models/, none for another folder)")
    model.add_argument("--build-root", help="scratch folder for the build (default: build/)")
    build = commands.add_parser("build", help="build one declared model's archive")
    build.add_argument("name")
    build.add_argument("--version")
    build.add_argument("--archive-name")
    build.add_argument("--store")
    build.add_argument("--models-dir", default=declarations.MODELS_DIR)
    build.add_argument("--build-root")
    build.add_argument("--format", help="serve this version in another format than the declaration's")
    build.add_argument("--precision", help="... or another precision (a candidate for `tsctl compare`)")
    listing = commands.add_parser("list", help="declared models")
    listing.add_argument("--served", action="store_true")
    listing.add_argument("--kind")
    commands.add_parser("kinds", help="the kinds `make model KIND=...` takes: what each model takes and answers")
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (DeclarationError, SourceError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def config_path(args):
    """The config.properties that follows args.models_dir: --config, else the repo's for the repo's models/."""
    if args.config:
        return os.path.abspath(args.config)
    return CONFIG if os.path.abspath(args.models_dir) == declarations.MODELS_DIR else None


def run_model(args) -> int:
    from tskit.declare import declare

    folder = os.path.join(args.models_dir, args.name)
    before = snapshot(folder)
    mar = os.path.join(args.store or STORE, f"{args.name}.mar")
    had_archive = os.path.exists(mar)
    try:
        path = declare(args.name, args.kind, args.source, args.labels, args.format, args.precision, args.force,
                       models_dir=args.models_dir)
        config = config_path(args)
        if config:  # the server must hold it beside the others: refused now, before anything is built
            with open(config, encoding="utf-8") as f:
                check_config(f.read(), declarations.served(args.models_dir))
        print(f"declared {args.name}: {path}")
        args.version = args.archive_name = None
        run_build(args)
        if not config:
            print(f"{args.models_dir} is not the repo's models/ and no --config: no config.properties updated")
            return 0
        return run_config(args)
    except BaseException:
        # a declaration that cannot build or be served would stop every later `make archives` / `make serve`
        restore(folder, before)
        if not had_archive and os.path.exists(mar):
            os.unlink(mar)
        print(f"{args.name} not added: {args.models_dir} and the archives are as they were", file=sys.stderr)
        raise


def snapshot(folder: str):
    """The files of a model's folder (a declaration FORCE may overwrite), None when it does not exist."""
    if not os.path.isdir(folder):
        return None
    files = {}
    for name in os.listdir(folder):
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            with open(path, "rb") as f:
                files[name] = f.read()
    return files


def restore(folder: str, files) -> None:
    """The folder as `snapshot` found it: removed when it did not exist, its files written back otherwise."""
    if files is None:
        shutil.rmtree(folder, ignore_errors=True)
        return
    for name, data in files.items():
        with open(os.path.join(folder, name), "wb") as f:
            f.write(data)


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
    config = config_path(args)
    if not config:
        print(f"{args.models_dir} is not the repo's models/ and no --config: no config.properties updated")
        return 0
    served = declarations.served(args.models_dir)
    changed = write_config(served, config, args.store or STORE)
    queues = ", ".join(f"{q.name} {q.queue}" for q in admissions(read_properties(config), served))
    print(f"{config}: {'models block updated' if changed else 'unchanged'}; queues {queues}")
    print(f"  {shared_note(read_properties(config), served)}")
    return 0


def run_list(args) -> int:
    chosen = declarations.served() if args.served else declarations.declared()
    for d in chosen:
        if not args.kind or d.kind == args.kind:
            print(f"{d.name}\t{d.kind}\t{d.format}\t{d.precision}\t{'served' if d.serve else 'not served'}")
    return 0


def run_kinds(args) -> int:
    from tskit import kinds

    for k in kinds.KINDS.values():
        video = ", videos too" if k.takes_video else ""
        print(f"{k.name:17} source: {k.model_input.sources}; answers: {k.answer.name}{video}")
    return 0


COMMANDS = {"model": run_model, "build": run_build, "config": run_config, "list": run_list, "kinds": run_kinds}

if __name__ == "__main__":
    sys.exit(main())
