#!/usr/bin/env python3
"""tsctl: a small command line for TorchServe's inference and management APIs (token auth aware).

    tsctl.py predict mobilenet_v2 cat.jpg [--topk 3]
    tsctl.py predict minilm_topics --text "The striker scored twice in the final"
    tsctl.py predict minilm_embedding notes.txt
    tsctl.py ping
    tsctl.py list
    tsctl.py describe mobilenet_v2 [VERSION]
    tsctl.py register mobilenet_v2.mar [--workers 1] [--batch-size 8] [--max-batch-delay 10]
    tsctl.py scale mobilenet_v2 --min 2 [--max 2] [--version 1.0]
    tsctl.py set-default mobilenet_v2 2.0
    tsctl.py unregister mobilenet_v2 [VERSION]
    tsctl.py rollout mobilenet_v2 mobilenet_v2_v2.0.mar [--probe cat.jpg] [--workers N] [--keep-old]
    tsctl.py --grpc predict|ping|list|describe|scale ...   the same over TorchServe's gRPC APIs (7070/7071)

`rollout` replaces the serving version with zero failed requests: it registers the new archive
beside the old version (workers READY before anything else changes), optionally checks it with
a probe request, makes it the default, waits until the old version's queue has drained, then
unregisters the old version(s). If the new version fails to start or to answer the probe, it is
removed again and the old one keeps serving.

Tokens come from key_file.json (written by TorchServe where it was started; --key-file or
$TS_KEY_FILE). When the server rejects an expired key, the CLI asks the management API's
/token endpoint (with the API key) for a new one, which TorchServe also writes to the key file,
and retries once.
"""

import argparse
import json
import mimetypes
import os
import sys
import time
from typing import Callable, List, Optional

import requests

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_KEY_FILE = os.environ.get("TS_KEY_FILE", os.path.join(REPO, "key_file.json"))
DEFAULT_INFERENCE = os.environ.get("TS_INFERENCE_URL", "http://127.0.0.1:8080")
DEFAULT_MANAGEMENT = os.environ.get("TS_MANAGEMENT_URL", "http://127.0.0.1:8081")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"}


class CliError(Exception):
    """An error to print for the user, without a traceback."""


class TorchServeClient:
    def __init__(self, inference_url: str = DEFAULT_INFERENCE,
                 management_url: str = DEFAULT_MANAGEMENT,
                 key_file: str = DEFAULT_KEY_FILE, timeout: float = 60):
        self.inference_url = inference_url.rstrip("/")
        self.management_url = management_url.rstrip("/")
        self.key_file = key_file
        self.timeout = timeout

    # -- tokens -------------------------------------------------------------------------------
    def _keys(self) -> dict:
        try:
            with open(self.key_file, encoding="utf-8") as f:
                return json.load(f)
        except FileNotFoundError:
            raise CliError(
                f"no key file at {self.key_file}: is TorchServe running (make serve)? "
                "It writes key_file.json where it was started; pass --key-file otherwise"
            ) from None
        except json.JSONDecodeError as err:
            raise CliError(f"{self.key_file} is not valid JSON ({err})") from None

    def key(self, kind: str) -> str:
        """The current `inference` or `management` key (the gRPC client sends it as metadata)."""
        return self._key(kind)

    def _key(self, kind: str) -> str:
        try:
            return self._keys()[kind]["key"]
        except (KeyError, TypeError):
            raise CliError(f"{self.key_file} has no '{kind}' key") from None

    def renew_key(self, kind: str) -> str:
        """Ask the management API for a fresh `inference` or `management` key."""
        api_key = self._keys().get("API", {}).get("key")
        response = self._send("GET", f"{self.management_url}/token", params={"type": kind},
                              headers={"Authorization": f"Bearer {api_key}"})
        if response.status_code != 200:
            raise CliError(f"the server refused to renew the {kind} key: {_describe(response)}")
        return self._key(kind)

    # -- HTTP ---------------------------------------------------------------------------------
    def _send(self, method: str, url: str, **kwargs) -> requests.Response:
        try:
            return requests.request(method, url, timeout=self.timeout, **kwargs)
        except requests.ConnectionError:
            raise CliError(f"cannot connect to {url}: is TorchServe running? (make serve)") from None
        except requests.Timeout:
            raise CliError(f"{url} did not answer within {self.timeout:g} s") from None

    def request(self, api: str, method: str, path: str, **kwargs) -> requests.Response:
        """A call with the right token; an expired token is renewed once."""
        kind, base = ("inference", self.inference_url) if api == "inference" else ("management", self.management_url)
        headers = dict(kwargs.pop("headers", {}) or {})
        for attempt in range(2):
            headers["Authorization"] = f"Bearer {self._key(kind)}"
            response = self._send(method, f"{base}{path}", headers=headers, **kwargs)
            if not _token_rejected(response) or attempt == 1:
                break
            self.renew_key(kind)
        if _token_rejected(response):
            raise CliError(f"the server rejected the {kind} token from {self.key_file}: {_describe(response)}")
        return response

    # -- API ----------------------------------------------------------------------------------
    def ping(self) -> dict:
        return _json_or_raise(self.request("inference", "GET", "/ping"))

    def predict_text(self, model: str, text: str) -> dict:
        return self.predict(model, text.encode("utf-8"), "text/plain; charset=utf-8")

    def predict_file(self, model: str, path: str, topk: Optional[int] = None,
                     version: Optional[str] = None) -> dict:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as err:
            raise CliError(f"cannot read {path}: {err.strerror}") from None
        suffix = os.path.splitext(path)[1].lower()
        if topk is not None:
            import base64
            body = json.dumps({"image": base64.b64encode(data).decode("ascii"), "topk": topk})
            return self.predict(model, body.encode(), "application/json", version)
        if suffix == ".txt":
            return self.predict(model, data, "text/plain; charset=utf-8", version)
        content_type = mimetypes.guess_type(path)[0] if suffix in IMAGE_SUFFIXES else None
        return self.predict(model, data, content_type or "application/octet-stream", version)

    def predict(self, model: str, body: bytes, content_type: str, version: Optional[str] = None) -> dict:
        path = f"/predictions/{model}" + (f"/{version}" if version else "")
        response = self.request("inference", "POST", path, data=body,
                                headers={"Content-Type": content_type})
        return _json_or_raise(response)

    def list_models(self) -> dict:
        return _json_or_raise(self.request("management", "GET", "/models"))

    def describe(self, model: str, version: Optional[str] = None) -> list:
        path = f"/models/{model}" + (f"/{version}" if version else "")
        return _json_or_raise(self.request("management", "GET", path))

    def register(self, url: str, model_name: Optional[str] = None, initial_workers: int = 1,
                 batch_size: Optional[int] = None, max_batch_delay: Optional[int] = None) -> dict:
        params = {"url": url, "initial_workers": initial_workers, "synchronous": "true"}
        if model_name:
            params["model_name"] = model_name
        if batch_size is not None:
            params["batch_size"] = batch_size
        if max_batch_delay is not None:
            params["max_batch_delay"] = max_batch_delay
        return _json_or_raise(self.request("management", "POST", "/models", params=params))

    def scale(self, model: str, min_workers: int, max_workers: Optional[int] = None,
              version: Optional[str] = None) -> dict:
        path = f"/models/{model}" + (f"/{version}" if version else "")
        params = {"min_worker": min_workers, "max_worker": max_workers or min_workers,
                  "synchronous": "true"}
        return _json_or_raise(self.request("management", "PUT", path, params=params))

    def set_default(self, model: str, version: str) -> dict:
        return _json_or_raise(self.request("management", "PUT", f"/models/{model}/{version}/set-default"))

    def unregister(self, model: str, version: Optional[str] = None) -> dict:
        path = f"/models/{model}" + (f"/{version}" if version else "")
        return _json_or_raise(self.request("management", "DELETE", path))

    # -- rollout ------------------------------------------------------------------------------
    def versions(self, model: str) -> List[str]:
        """Every registered version of a model ([] when the model is not registered)."""
        response = self.request("management", "GET", f"/models/{model}/all")
        if response.status_code == 404:
            return []
        return [entry["modelVersion"] for entry in _json_or_raise(response)]

    def wait_ready(self, model: str, version: str, workers: int, timeout: float) -> int:
        """READY workers of `version`, once there are `workers` of them or `timeout` has passed."""
        deadline = time.monotonic() + timeout
        while True:
            ready = sum(1 for w in self.describe(model, version)[0].get("workers", []) if w.get("status") == "READY")
            if ready >= workers or time.monotonic() > deadline:
                return ready
            time.sleep(0.2)

    def wait_drained(self, model: str, version: str, grace: float, timeout: float) -> None:
        """Wait until `version` has had no queued request for `grace` seconds: once it is no longer
        the default, nothing new joins its queue, and `grace` covers the batch still running."""
        deadline = time.monotonic() + timeout
        quiet_since = None
        while True:
            status = self.describe(model, version)[0].get("jobQueueStatus", {})
            now = time.monotonic()
            if status.get("pendingRequests", 0) == 0:
                quiet_since = quiet_since if quiet_since is not None else now
                if now - quiet_since >= grace:
                    return
            else:
                quiet_since = None
            if now > deadline:
                raise CliError(f"{model} {version} still has queued requests after {timeout:g} s")
            time.sleep(0.1)

    def rollout(self, model: str, url: str, workers: Optional[int] = None,
                probe: Optional[Callable[[str], None]] = None, drain_grace: float = 3.0,
                drain_timeout: float = 300, keep_old: bool = False,
                log: Callable[[str], None] = lambda line: None) -> dict:
        """Serve the archive `url` as the new default version of `model` without a failed request."""
        started = time.monotonic()
        old_versions = self.versions(model)
        if not old_versions:
            raise CliError(f"{model} is not registered: use `register` for a first version")
        default = self.describe(model)[0]
        workers = workers or max(1, int(default.get("minWorkers", 1)))
        log(f"{model}: serving {default['modelVersion']}; registering {url} with {workers} worker(s)")
        try:
            self.register(url, model_name=model, initial_workers=workers)
        except CliError as err:
            # TorchServe 0.12 keeps a version whose workers failed to start: take it out again
            for version in set(self.versions(model)) - set(old_versions):
                self.unregister(model, version)
            raise CliError(f"registering {url} failed, {model} {default['modelVersion']} "
                           f"keeps serving: {err}") from None
        new_versions = sorted(set(self.versions(model)) - set(old_versions))
        if len(new_versions) != 1:
            raise CliError(f"expected one new version of {model} after registering {url}, found {new_versions}")
        new = new_versions[0]
        ready = self.wait_ready(model, new, workers, timeout=drain_timeout)
        if ready < workers:
            self.unregister(model, new)
            raise CliError(f"{model} {new} has {ready} of {workers} workers READY after {drain_timeout:g} s and was "
                           f"unregistered; {default['modelVersion']} keeps serving")
        log(f"{model} {new}: {ready} worker(s) READY")
        if probe is not None:
            try:
                probe(new)
            except CliError as err:
                self.unregister(model, new)
                raise CliError(f"{model} {new} failed the probe and was unregistered; "
                               f"{default['modelVersion']} keeps serving: {err}") from None
            log(f"{model} {new}: probe answered")
        self.set_default(model, new)
        log(f"{model}: default is now {new}")
        removed = []
        for version in ([] if keep_old else old_versions):
            self.wait_drained(model, version, drain_grace, drain_timeout)
            self.unregister(model, version)
            removed.append(version)
            log(f"{model} {version}: drained and unregistered")
        return {"model": model, "default": new, "previous": default["modelVersion"], "unregistered": removed,
                "kept": [v for v in old_versions if v not in removed], "workers": workers,
                "seconds": round(time.monotonic() - started, 1)}


def _token_rejected(response: requests.Response) -> bool:
    # TorchServe 0.12 answers a missing, wrong or expired token with 400 InvalidKeyException.
    return response.status_code in (400, 401) and "InvalidKeyException" in response.text


def _describe(response: requests.Response) -> str:
    try:
        body = response.json()
        if isinstance(body, dict) and "message" in body:
            return f"{response.status_code} {body.get('type', '')}: {body['message']}"
    except ValueError:
        pass
    return f"{response.status_code} {response.reason}: {response.text.strip()[:300]}"


def _json_or_raise(response: requests.Response):
    if response.status_code == 404:
        raise CliError(f"not found: {_describe(response)}")
    if response.status_code >= 400:
        raise CliError(_describe(response))
    try:
        return response.json()
    except ValueError:
        return {"status": response.text.strip()}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tsctl", description=__doc__.splitlines()[0])
    parser.add_argument("--inference-url", default=DEFAULT_INFERENCE)
    parser.add_argument("--management-url", default=DEFAULT_MANAGEMENT)
    parser.add_argument("--key-file", default=DEFAULT_KEY_FILE)
    parser.add_argument("--timeout", type=float, default=60)
    parser.add_argument("--grpc", action="store_true",
                        help="use TorchServe's gRPC APIs (predict, ping, list, describe, scale)")
    parser.add_argument("--grpc-inference", default=os.environ.get("TS_GRPC_INFERENCE", "127.0.0.1:7070"))
    parser.add_argument("--grpc-management", default=os.environ.get("TS_GRPC_MANAGEMENT", "127.0.0.1:7071"))
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("predict", help="send an image file, a .txt file or --text to a model")
    p.add_argument("model")
    p.add_argument("file", nargs="?", help="image (sent raw with its type) or .txt (sent as text/plain)")
    p.add_argument("--text", help="text to send as text/plain instead of a file")
    p.add_argument("--topk", type=int, help="image models: predictions to return (sent as JSON with base64)")

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

    p = sub.add_parser("rollout", help="serve a new archive version instead of the current one, with zero failed requests")
    p.add_argument("model")
    p.add_argument("url", help="archive file name in the model store, e.g. mobilenet_v2_v2.0.mar")
    p.add_argument("--workers", type=int, help="workers of the new version (default: as many as the current one)")
    p.add_argument("--probe", help="file sent to the new version (as `predict` sends it) before it becomes the default")
    p.add_argument("--drain-grace", type=float, default=3.0,
                   help="s the old version's queue must stay empty before it is unregistered (default 3)")
    p.add_argument("--drain-timeout", type=float, default=300)
    p.add_argument("--keep-old", action="store_true", help="keep the old version registered (not the default)")
    return parser


GRPC_COMMANDS = ("predict", "ping", "list", "describe", "scale")


def run_grpc(args: argparse.Namespace, client: TorchServeClient) -> object:
    """The gRPC form of a command: the same request body and the same printed answer as over HTTP."""
    from tskit.grpc_client import GrpcClient, GrpcError

    if args.command not in GRPC_COMMANDS:
        raise CliError(f"--grpc supports {', '.join(GRPC_COMMANDS)}, not {args.command}")
    try:
        grpc = GrpcClient(client, args.grpc_inference, args.grpc_management, args.timeout)
        if args.command == "predict":
            return grpc.predict(args.model, request_body(args))
        if args.command == "ping":
            return grpc.ping()
        if args.command == "list":
            return grpc.list_models()
        if args.command == "describe":
            return grpc.describe(args.model, args.version)
        return grpc.scale(args.model, args.min_workers, args.max_workers, args.version)
    except GrpcError as err:
        raise CliError(str(err)) from None


def request_body(args: argparse.Namespace) -> bytes:
    """predict's body over gRPC: the text, the file's bytes, or with --topk JSON with the base64 image."""
    if (args.file is None) == (args.text is None):
        raise CliError("predict needs either a file or --text")
    if args.text is not None:
        return args.text.encode("utf-8")
    try:
        with open(args.file, "rb") as f:
            data = f.read()
    except OSError as err:
        raise CliError(f"cannot read {args.file}: {err.strerror}") from None
    if args.topk is None:
        return data
    import base64
    return json.dumps({"image": base64.b64encode(data).decode("ascii"), "topk": args.topk}).encode()


def run(args: argparse.Namespace) -> object:
    client = TorchServeClient(args.inference_url, args.management_url, args.key_file, args.timeout)
    if args.grpc:
        return run_grpc(args, client)
    if args.command == "predict":
        if (args.file is None) == (args.text is None):
            raise CliError("predict needs either a file or --text")
        if args.text is not None:
            return client.predict_text(args.model, args.text)
        return client.predict_file(args.model, args.file, args.topk)
    if args.command == "ping":
        return client.ping()
    if args.command == "list":
        return client.list_models()
    if args.command == "describe":
        return client.describe(args.model, args.version)
    if args.command == "register":
        return client.register(args.url, args.model_name, args.workers, args.batch_size, args.max_batch_delay)
    if args.command == "scale":
        return client.scale(args.model, args.min_workers, args.max_workers, args.version)
    if args.command == "set-default":
        return client.set_default(args.model, args.version)
    if args.command == "unregister":
        return client.unregister(args.model, args.version)
    if args.command == "rollout":
        probe = None
        if args.probe:
            probe = lambda version: client.predict_file(args.model, args.probe, version=version)  # noqa: E731
        return client.rollout(args.model, args.url, args.workers, probe, args.drain_grace, args.drain_timeout,
                              args.keep_old, log=lambda line: print(line, file=sys.stderr, flush=True))
    raise CliError(f"unknown command {args.command}")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = run(args)
    except CliError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
