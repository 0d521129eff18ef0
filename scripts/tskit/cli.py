"""tsctl: a small command line for TorchServe's inference and management APIs (token auth aware).

    tsctl.py predict mobilenet_v2 cat.jpg [--topk 3]
    tsctl.py predict minilm_topics --text "The striker scored twice in the final"
    tsctl.py predict minilm_embedding notes.txt
    tsctl.py generate smollm2_chat "Write a haiku about the sea" [--stream] [--max-tokens 64] [--temperature 0]
    tsctl.py ping
    tsctl.py list
    tsctl.py describe mobilenet_v2 [VERSION]
    tsctl.py register mobilenet_v2.mar [--workers 1] [--batch-size 8] [--max-batch-delay 10]
    tsctl.py scale mobilenet_v2 --min 2 [--max 2] [--version 1.0]
    tsctl.py set-default mobilenet_v2 2.0
    tsctl.py unregister mobilenet_v2 [VERSION]
    tsctl.py token inference|management        renew a key now (it rotates for every client)
    tsctl.py compare minilm_topics minilm_topics_int8 --inputs DIR [--concurrency 4]   A/B report (md + PNG)
    tsctl.py rollout mobilenet_v2 mobilenet_v2_v2.0.mar [--probe cat.jpg] [--workers N] [--keep-old]
    tsctl.py --grpc predict|ping|list|describe|scale ...   the same over TorchServe's gRPC APIs (7070/7071)
    tsctl.py --engine kserve --inference-url URL --management-url URL rollout mobilenet_v2 mobilenet_v2_v2.0.mar
                                              the same rollout on the KServe engine (docs/engines.md)

`rollout` replaces the serving version with zero failed requests: it registers the new archive
beside the old version (workers READY before anything else changes), optionally checks it with
a probe request, makes it the default, waits until the old version's queue has drained, then
unregisters the old version(s). If the new version fails to start or to answer the probe, it is
removed again and the old one keeps serving.

Tokens come from key_file.json (written by TorchServe where it was started; --key-file or
$TS_KEY_FILE). A key is renewed (the management API's /token, with the API key; TorchServe writes
the new key to its key file) only once its expiration time has passed, or on request:

    tsctl.py token inference|management

since renewing rotates the key under every other client of the server. `register` and `rollout`
take only a bare archive file name of the model store.
"""

import argparse
import json
import logging
import os
import sys
from typing import Tuple

from tskit import addresses
from tskit.client import ClientError, TorchServeClient, file_body
from tskit.rollout import rollout

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_KEY_FILE = os.environ.get("TS_KEY_FILE", os.path.join(REPO, "key_file.json"))
DEFAULT_INFERENCE = os.environ.get("TS_INFERENCE_URL", addresses.served().inference)
DEFAULT_MANAGEMENT = os.environ.get("TS_MANAGEMENT_URL", addresses.served().management)


CliError = ClientError  # what `main` prints without a traceback


def request_body(args: argparse.Namespace) -> Tuple[bytes, str]:
    """predict's body: the text, or the file as `file_body` sends it."""
    if (args.file is None) == (args.text is None):
        raise CliError("predict needs either a file or --text")
    if args.text is not None:
        return args.text.encode("utf-8"), "text/plain; charset=utf-8"
    return file_body(args.file, args.topk)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tsctl", description=__doc__.splitlines()[0])
    parser.add_argument("--inference-url", default=DEFAULT_INFERENCE)
    parser.add_argument("--management-url", default=DEFAULT_MANAGEMENT)
    parser.add_argument("--key-file", default=DEFAULT_KEY_FILE)
    parser.add_argument("--timeout", type=float, default=60)
    parser.add_argument("--grpc", action="store_true",
                        help="use TorchServe's gRPC APIs (predict, ping, list, describe, scale)")
    parser.add_argument("--engine", choices=["torchserve", "kserve"], default="torchserve",
                        help="kserve: the KServe engine (make serve ENGINE=kserve): pass its URL as --inference-url "
                             "and --management-url; `rollout` is then its load route")
    parser.add_argument("--grpc-inference", default=os.environ.get("TS_GRPC_INFERENCE", addresses.served().grpc_inference))
    parser.add_argument("--grpc-management",
                        default=os.environ.get("TS_GRPC_MANAGEMENT", addresses.served().grpc_management))
    sub = parser.add_subparsers(dest="command", required=True)
    add_api_commands(sub)
    add_tool_commands(sub)
    return parser


def add_api_commands(sub) -> None:
    """The subcommands that are one call of TorchServe's inference or management API each."""
    p = sub.add_parser("predict", help="send an image file, a .txt file or --text to a model")
    p.add_argument("model")
    p.add_argument("file", nargs="?", help="image (sent raw with its type) or .txt (sent as text/plain)")
    p.add_argument("--text", help="text to send as text/plain instead of a file")
    p.add_argument("--topk", type=int, help="image models: predictions to return (sent as JSON with base64)")

    p = sub.add_parser("generate", help="a text generator's answer to a prompt, printed as it arrives")
    p.add_argument("model")
    p.add_argument("prompt")
    p.add_argument("--stream", action="store_true", help="print each piece as it is generated")
    p.add_argument("--max-tokens", type=int)
    p.add_argument("--temperature", type=float)

    sub.add_parser("ping", help="server health (needs the inference key)")
    sub.add_parser("list", help="registered models")

    p = sub.add_parser("describe", help="a model's settings and workers")
    p.add_argument("model")
    p.add_argument("version", nargs="?")

    p = sub.add_parser("register", help="register a .mar from the model store")
    p.add_argument("url", help="archive file name in the model store, e.g. mobilenet_v2.mar")
    p.add_argument("--model-name")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--max-batch-delay", type=int, help="ms")

    p = sub.add_parser("scale", help="set a model's worker count")
    p.add_argument("model")
    p.add_argument("--min", type=int, required=True, dest="min_workers")
    p.add_argument("--max", type=int, dest="max_workers")
    p.add_argument("--version")

    p = sub.add_parser("set-default", help="make a version the default")
    p.add_argument("model")
    p.add_argument("version")

    p = sub.add_parser("unregister", help="remove a model (or one version)")
    p.add_argument("model")
    p.add_argument("version", nargs="?")


def add_tool_commands(sub) -> None:
    """compare, token and rollout: the subcommands that are more than one call."""
    p = sub.add_parser("compare", help="A/B: send every input to two models (or model/version) and report "
                                        "agreement and speed")
    p.add_argument("a", help="model or model/version")
    p.add_argument("b", help="model or model/version")
    p.add_argument("--inputs", required=True, help="folder of images or .txt files (one text each)")
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--requests", type=int, default=0, help="requests per side and round (default: 4 x concurrency, "
                                                           "at least 2 x inputs)")
    p.add_argument("--out", help="folder for compare.md, compare.png, compare.json (default: results/compare-A-B)")

    p = sub.add_parser("token", help="renew the inference or management key now (rotates it for every client)")
    p.add_argument("kind", choices=["inference", "management"])

    p = sub.add_parser("rollout", help="serve a new archive version instead of the current one, with zero failed requests")
    p.add_argument("model")
    p.add_argument("url", help="archive file name in the model store, e.g. mobilenet_v2_v2.0.mar")
    p.add_argument("--workers", type=int, help="workers of the new version (default: as many as the current one)")
    p.add_argument("--probe", help="file sent to the new version (as `predict` sends it) before it becomes the default")
    p.add_argument("--drain-grace", type=float, default=3.0,
                   help="s the old version's queue must stay empty before it is unregistered (default 3)")
    p.add_argument("--drain-timeout", type=float, default=300)
    p.add_argument("--keep-old", action="store_true", help="keep the old version registered (not the default)")


GRPC_COMMANDS = ("predict", "generate", "ping", "list", "describe", "scale")


def generation_request(args: argparse.Namespace) -> dict:
    document = {"prompt": args.prompt, "stream": bool(args.stream)}
    if args.max_tokens is not None:
        document["max_tokens"] = args.max_tokens
    if args.temperature is not None:
        document["temperature"] = args.temperature
    return document


def print_generation(answers) -> None:
    """The text on stdout as it arrives; the finish reason and usage on stderr."""
    last = {}
    for answer in answers:
        print(answer.get("text", ""), end="", flush=True)
        last = answer
    print()
    print(json.dumps({k: last[k] for k in ("finish_reason", "usage") if k in last}), file=sys.stderr)


def run_grpc(args: argparse.Namespace, client: TorchServeClient) -> object:
    """The gRPC form of a command: the same request body and the same printed answer as over HTTP."""
    from tskit.grpc_client import GrpcError

    if args.command not in GRPC_COMMANDS:
        raise CliError(f"--grpc supports {', '.join(GRPC_COMMANDS)}, not {args.command}")
    try:
        grpc = client.grpc(args.grpc_inference, args.grpc_management)
        if args.command == "predict":
            return grpc.predict(args.model, request_body(args)[0])
        if args.command == "generate":  # a whole answer: TorchServe 0.12 cannot stream a generator over gRPC
            return print_generation([grpc.predict(args.model, json.dumps(generation_request(args)).encode())])
        if args.command == "ping":
            return grpc.ping()
        if args.command == "list":
            return grpc.list_models()
        if args.command == "describe":
            return grpc.describe(args.model, args.version)
        return grpc.scale(args.model, args.min_workers, args.max_workers, args.version)
    except GrpcError as err:
        raise CliError(str(err)) from None


def run_rollout(args: argparse.Namespace, client: TorchServeClient) -> dict:
    if args.engine == "kserve":  # one call: the engine loads, swaps and drains (tskit.kserve_rollout)
        if args.probe or args.workers or args.keep_old:
            raise ClientError("--probe, --workers and --keep-old are TorchServe's: the KServe engine starts the "
                              "archive's declared workers and swaps once they are up")
        return client.engine_load(args.model, args.url)
    probe = None
    if args.probe:
        probe = lambda version: client.predict_file(args.model, args.probe, version=version)  # noqa: E731
    return rollout(client, args.model, args.url, args.workers, probe, args.drain_grace, args.drain_timeout,
                   args.keep_old, log=lambda line: print(line, file=sys.stderr, flush=True))


def run_compare(args: argparse.Namespace, client: TorchServeClient) -> dict:
    from tskit import compare

    result = compare.compare(client, args.a, args.b, args.inputs, args.concurrency, args.requests)
    name = f"compare-{args.a}-{args.b}".replace("/", "_")
    paths = compare.write_report(result, args.out or os.path.join(REPO, "results", name))
    print(compare.report_markdown(result), file=sys.stderr)
    return paths


def run(args: argparse.Namespace) -> object:
    client = TorchServeClient(args.inference_url, args.management_url, args.key_file, args.timeout)
    if args.grpc:
        return run_grpc(args, client)
    commands = {
        "predict": lambda: client.predict(args.model, *request_body(args)),
        "generate": lambda: print_generation(client.generate(args.model, generation_request(args))),
        "ping": client.ping,
        "list": client.list_models,
        "describe": lambda: client.describe(args.model, args.version),
        "register": lambda: client.register(args.url, args.model_name, args.workers, args.batch_size,
                                            args.max_batch_delay),
        "scale": lambda: client.scale(args.model, args.min_workers, args.max_workers, args.version),
        "set-default": lambda: client.set_default(args.model, args.version),
        "unregister": lambda: client.unregister(args.model, args.version),
        "token": lambda: {"renewed": args.kind, "key_file": client.key_file, "key": client.renew_key(args.kind)},
        "rollout": lambda: run_rollout(args, client),
        "compare": lambda: run_compare(args, client),
    }
    return commands[args.command]()


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    try:
        result = run(args)
    except CliError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if result is not None:  # generate printed its text as it came
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
