"""The one client of TorchServe's APIs: tokens, renewal on expiry, bounded retries, HTTP and gRPC.

tsctl (tskit.cli), tskit.server, benchkit (bench, tune, soak, optimize, profile) and the tests all talk to a
server through `TorchServeClient`:

    client = TorchServeClient("http://127.0.0.1:8080", "http://127.0.0.1:8081", "key_file.json")
    client.predict("mobilenet_v2", jpeg_bytes, "image/jpeg")
    client.grpc().predict("minilm_topics", b"The striker scored twice")

Tokens. TorchServe 0.12 writes key_file.json where it was started: an `inference` and a `management`
key, each with an expiration time, and the `API` key that asks `/token` for new ones. Renewing a key
rotates it for every client of that server, so this client renews only a key that has expired (or when
asked: `renew_key`). A key that is rejected before its expiry means the key file is stale (another
server wrote it, or the server restarted): that is an error naming the file, not a reason to rotate.

Retries. TorchServe's frontend fails some management calls transiently (a 500
ConcurrentModificationException while workers start or stop, a 503 while a model is still scaling).
Those are retried with backoff, a bounded number of times, each retry logged; register calls (POST) are
not retried, since a half-done registration is not safe to repeat.
"""

import base64
import datetime
import json
import logging
import mimetypes
import os
import time
from typing import Dict, Iterator, Optional, Tuple

import requests

from tskit import addresses

log = logging.getLogger("tskit.client")

KINDS = ("inference", "management")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"}
RETRIED_METHODS = ("GET", "PUT", "DELETE")
RETRY_DELAYS_S = (0.5, 1.0, 2.0, 4.0)


class ClientError(Exception):
    """A failed call, in words for the user (no traceback needed)."""


class KeyFile:
    """TorchServe's key_file.json, read on every use: the server rewrites it when a key is renewed."""

    def __init__(self, path: str):
        self.path = path

    def read(self) -> dict:
        try:
            with open(self.path, encoding="utf-8") as f:
                return json.load(f)
        except FileNotFoundError:
            raise ClientError(f"no key file at {self.path}: is TorchServe running (make serve)? "
                              "It writes key_file.json where it was started; pass --key-file otherwise") from None
        except json.JSONDecodeError as err:
            raise ClientError(f"{self.path} is not valid JSON ({err})") from None

    def key(self, kind: str) -> str:
        """The `inference`, `management` or `API` key."""
        try:
            return self.read()[kind]["key"]
        except (KeyError, TypeError):
            raise ClientError(f"{self.path} has no '{kind}' key") from None

    def keys(self) -> Dict[str, str]:
        return {kind: self.key(kind) for kind in (*KINDS, "API")}

    def expired(self, kind: str, now: Optional[datetime.datetime] = None) -> bool:
        """True once the key's `expiration time` has passed (a key without one never expires)."""
        stamp = (self.read().get(kind) or {}).get("expiration time")
        if not stamp:
            return False
        now = now or datetime.datetime.now(datetime.timezone.utc)
        return parse_expiration(stamp) <= now


def parse_expiration(stamp: str) -> datetime.datetime:
    """TorchServe writes nanoseconds (2026-11-27T18:46:06.756847359Z); datetime takes microseconds."""
    head, _, fraction = stamp.rstrip("Z").partition(".")
    value = datetime.datetime.fromisoformat(head + (f".{fraction[:6]}" if fraction else ""))
    return value.replace(tzinfo=datetime.timezone.utc)


def file_body(path: str, topk: Optional[int] = None) -> Tuple[bytes, str]:
    """A file as a plain-form request: (body, Content-Type). An image goes raw with its type, a .txt as
    UTF-8 text/plain; with `topk`, JSON with the base64 image (the plain form's parameters ride in JSON)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as err:
        raise ClientError(f"cannot read {path}: {err.strerror}") from None
    suffix = os.path.splitext(path)[1].lower()
    if topk is not None:
        return json.dumps({"image": base64.b64encode(data).decode("ascii"), "topk": topk}).encode(), "application/json"
    if suffix == ".txt":
        return data, "text/plain; charset=utf-8"
    content_type = mimetypes.guess_type(path)[0] if suffix in IMAGE_SUFFIXES else None
    return data, content_type or "application/octet-stream"


def token_rejected(response: requests.Response) -> bool:
    # TorchServe 0.12 answers a missing, wrong or expired token with 400 (or 401) InvalidKeyException.
    return response.status_code in (400, 401) and "InvalidKeyException" in response.text


def transient(response: requests.Response) -> bool:
    """A management failure that the same call can get past a moment later."""
    return ((response.status_code == 500 and "ConcurrentModificationException" in response.text)
            or response.status_code == 503)


def describe_error(response: requests.Response) -> str:
    try:
        body = response.json()
        if isinstance(body, dict) and "message" in body:
            return f"{response.status_code} {body.get('type', '')}: {body['message']}"
    except ValueError:
        pass
    return f"{response.status_code} {response.reason}: {response.text.strip()[:300]}"


def json_or_raise(response: requests.Response):
    if response.status_code == 404:
        raise ClientError(f"not found: {describe_error(response)}")
    if response.status_code >= 400:
        raise ClientError(describe_error(response))
    try:
        return response.json()
    except ValueError:
        return {"status": response.text.strip()}


class TorchServeClient:
    """HTTP calls with the right token; `key_file=None` for a server without token auth."""

    def __init__(self, inference_url: Optional[str] = None, management_url: Optional[str] = None,
                 key_file: Optional[str] = None, timeout: float = 60, session: Optional[requests.Session] = None,
                 metrics_url: Optional[str] = None):
        # default: the repo's config.properties (tskit.addresses), the server `make serve` starts
        self.inference_url = (inference_url or addresses.served().inference).rstrip("/")
        self.management_url = (management_url or addresses.served().management).rstrip("/")
        self.metrics_url = metrics_url.rstrip("/") if metrics_url else None
        self.keys = KeyFile(key_file) if key_file else None
        self.timeout = timeout
        self.session = session or requests.Session()

    def with_session(self) -> "TorchServeClient":
        """The same server, keys and timeout over an HTTP session of its own (one per thread)."""
        return TorchServeClient(self.inference_url, self.management_url, self.key_file, self.timeout,
                                metrics_url=self.metrics_url)

    @property
    def key_file(self) -> Optional[str]:
        return self.keys.path if self.keys else None

    # -- tokens -------------------------------------------------------------------------------
    def key(self, kind: str) -> Optional[str]:
        """The current key of `kind` (None without token auth); the gRPC client sends it as metadata."""
        return self.keys.key(kind) if self.keys else None

    def auth_headers(self, kind: str) -> Dict[str, str]:
        return {"Authorization": f"Bearer {self.keys.key(kind)}"} if self.keys else {}

    def renew_key(self, kind: str) -> str:
        """Ask `/token` (with the API key) for a new `inference` or `management` key. TorchServe writes
        it to its key file; every client of the server then needs the new one."""
        response = self._send("GET", f"{self.management_url}/token", params={"type": kind},
                              headers={"Authorization": f"Bearer {self.keys.key('API')}"})
        if response.status_code != 200:
            raise ClientError(f"the server refused to renew the {kind} key: {describe_error(response)}")
        log.info("renewed the %s key in %s", kind, self.keys.path)
        return self.keys.key(kind)

    def after_rejection(self, kind: str, sent: str) -> None:
        """Make a retry worth it, or raise: take a key renewed meanwhile, renew an expired one."""
        if self.keys.key(kind) != sent:
            return  # someone renewed it since we read the file
        if self.keys.expired(kind):
            self.renew_key(kind)
            return
        raise ClientError(f"the server rejected the {kind} key from {self.keys.path}, which has not expired: "
                          "that key file is not this server's (pass --key-file), or renew it on purpose "
                          f"(tsctl.py token {kind})")

    # -- HTTP ---------------------------------------------------------------------------------
    def _send(self, method: str, url: str, **kwargs) -> requests.Response:
        try:
            return self.session.request(method, url, timeout=kwargs.pop("timeout", self.timeout), **kwargs)
        except requests.ConnectionError:
            raise ClientError(f"cannot connect to {url}: is TorchServe running? (make serve)") from None
        except requests.Timeout:
            raise ClientError(f"{url} did not answer within {self.timeout:g} s") from None

    def request(self, api: str, method: str, path: str, auth: bool = True, **kwargs) -> requests.Response:
        """One call to the `inference` or `management` API; the response whatever its status.
        An expired key is renewed once; transient management failures are retried (bounded)."""
        base = self.inference_url if api == "inference" else self.management_url
        retries = RETRY_DELAYS_S if api == "management" and method.upper() in RETRIED_METHODS else ()
        headers = dict(kwargs.pop("headers", None) or {})
        renewed = False
        attempt = 0
        while True:
            sent = self.key(api) if auth and self.keys else None
            if sent is not None:
                headers["Authorization"] = f"Bearer {sent}"
            response = self._send(method, f"{base}{path}", headers=headers, **kwargs)
            if sent is not None and not renewed and token_rejected(response):
                self.after_rejection(api, sent)
                renewed = True
                continue
            if attempt < len(retries) and transient(response):
                log.warning("%s %s: %s; retry %d of %d in %.1f s", method, path, describe_error(response),
                            attempt + 1, len(retries), retries[attempt])
                time.sleep(retries[attempt])
                attempt += 1
                continue
            return response

    def call(self, api: str, method: str, path: str, **kwargs):
        """`request`, then its JSON answer, or ClientError for a 4xx/5xx."""
        response = self.request(api, method, path, **kwargs)
        if self.keys is not None and token_rejected(response):
            raise ClientError(f"the server rejected the {api} token from {self.keys.path}: {describe_error(response)}")
        return json_or_raise(response)

    # -- inference ----------------------------------------------------------------------------
    def ping(self) -> dict:
        return self.call("inference", "GET", "/ping")

    def predict(self, model: str, body: bytes, content_type: str, version: Optional[str] = None) -> dict:
        return self.call("inference", "POST", prediction_path(model, version), data=body,
                         headers={"Content-Type": content_type})

    def infer(self, model: str, body: bytes, content_type: str, version: Optional[str] = None,
              **kwargs) -> requests.Response:
        """One prediction, the response whatever its status (for checks that judge the answer themselves)."""
        return self.request("inference", "POST", prediction_path(model, version), data=body,
                            headers={"Content-Type": content_type}, **kwargs)

    def prediction_url(self, model: str, version: Optional[str] = None) -> str:
        """The prediction URL of a model, for a load generator that sends it requests on its own sessions
        (with `key("inference")` as its token)."""
        return self.inference_url + prediction_path(model, version)

    def generate(self, model: str, document: dict, version: Optional[str] = None) -> Iterator[dict]:
        """A text generator's answer (api-contract "smollm2_chat"): with `"stream": true` each NDJSON line as it
        arrives, else the whole answer once. A 4xx/5xx is a ClientError."""
        stream = bool(document.get("stream"))
        response = self.request("inference", "POST", prediction_path(model, version), json=document, stream=stream)
        if response.status_code >= 400:
            raise ClientError(describe_error(response))
        if not stream:
            yield response.json()
            return
        with response:
            for line in response.iter_lines():
                if line:
                    yield json.loads(line)

    def predict_file(self, model: str, path: str, topk: Optional[int] = None, version: Optional[str] = None) -> dict:
        return self.predict(model, *file_body(path, topk), version=version)

    # -- management ---------------------------------------------------------------------------
    def list_models(self) -> dict:
        return self.call("management", "GET", "/models")

    def describe(self, model: str, version: Optional[str] = None) -> list:
        return self.call("management", "GET", f"/models/{model}" + (f"/{version}" if version else ""))

    def register(self, archive: str, model_name: Optional[str] = None, initial_workers: int = 1,
                 batch_size: Optional[int] = None, max_batch_delay: Optional[int] = None,
                 response_timeout: Optional[int] = None) -> dict:
        """Register an archive of the model store by its bare file name (see `store_archive`)."""
        params = {"url": store_archive(archive), "initial_workers": initial_workers, "synchronous": "true"}
        optional = {"model_name": model_name, "batch_size": batch_size, "max_batch_delay": max_batch_delay,
                    "response_timeout": response_timeout}
        params.update({k: v for k, v in optional.items() if v is not None and v != ""})
        return self.call("management", "POST", "/models", params=params)

    def scale(self, model: str, min_workers: int, max_workers: Optional[int] = None,
              version: Optional[str] = None) -> dict:
        path = f"/models/{model}" + (f"/{version}" if version else "")
        params = {"min_worker": min_workers, "max_worker": max_workers or min_workers, "synchronous": "true"}
        return self.call("management", "PUT", path, params=params)

    def engine_load(self, model: str, archive: str) -> dict:
        """The KServe engine's rollout (tskit.kserve_rollout): `archive`, a file of its store, replaces `model`'s
        serving version; the answer once the old one has drained. Its management route is on its one port."""
        return self.call("management", "POST", f"/v2/repository/models/{model}/load",
                         json={"archive": store_archive(archive)}, timeout=max(self.timeout, 600))

    def set_default(self, model: str, version: str) -> dict:
        return self.call("management", "PUT", f"/models/{model}/{version}/set-default")

    def unregister(self, model: str, version: Optional[str] = None) -> dict:
        return self.call("management", "DELETE", f"/models/{model}" + (f"/{version}" if version else ""))

    def unregister_and_wait(self, model: str, timeout: float = 120) -> None:
        """Unregister every version and wait until the model is gone, so that the next registration of the
        name cannot collide (a 404: already gone, e.g. a retried DELETE whose first try did it)."""
        response = self.request("management", "DELETE", f"/models/{model}")
        if response.status_code != 404:
            json_or_raise(response)
        deadline = time.monotonic() + timeout
        while self.versions(model):
            if time.monotonic() > deadline:
                raise ClientError(f"{model} still registered {timeout:.0f} s after DELETE")
            time.sleep(0.5)  # polling the management API: TorchServe has no wait-for-unregister call

    def versions(self, model: str) -> list:
        """Every registered version of a model ([] when the model is not registered)."""
        response = self.request("management", "GET", f"/models/{model}/all")
        if response.status_code == 404:
            return []
        return [entry["modelVersion"] for entry in json_or_raise(response)]

    def workers(self, model: str, version: Optional[str] = None) -> list:
        return self.describe(model, version)[0].get("workers", [])

    # -- metrics ------------------------------------------------------------------------------
    def metrics(self) -> str:
        """The metrics port's /metrics (Prometheus text; no token: TorchServe's metrics API takes none)."""
        if not self.metrics_url:
            raise ClientError("this client was given no metrics address")
        response = self._send("GET", f"{self.metrics_url}/metrics")
        if response.status_code != 200:
            raise ClientError(f"{self.metrics_url}/metrics: {describe_error(response)}")
        return response.text

    # -- gRPC ---------------------------------------------------------------------------------
    def grpc(self, inference_address: Optional[str] = None, management_address: Optional[str] = None):
        """The same server over TorchServe's gRPC APIs, with this client's keys (as metadata); default
        addresses: the repo's config.properties."""
        from tskit.grpc_client import GrpcClient

        return GrpcClient(self, inference_address or addresses.served().grpc_inference,
                          management_address or addresses.served().grpc_management, self.timeout)


def prediction_path(model: str, version: Optional[str] = None) -> str:
    return f"/predictions/{model}" + (f"/{version}" if version else "")


def store_archive(name: str) -> str:
    """Only a bare `*.mar` file name of the model store. TorchServe 0.12 also loads an absolute path to an
    unpacked archive directory anywhere on disk (allowed_urls does not stop it) and URLs where allowed_urls
    permits; this package's own paths refuse both."""
    if not name.endswith(".mar") or "/" in name or "\\" in name or name.startswith(".") or ":" in name:
        raise ClientError(f"register takes an archive file name of the model store (like mobilenet_v2.mar), "
                          f"not {name!r}: paths, directories and URLs are refused")
    return name
