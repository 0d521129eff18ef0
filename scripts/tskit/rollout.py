"""Zero-failed-request rollout of a new archive version, over the one TorchServe client.

It registers the new archive beside the serving version (workers READY before anything else changes),
optionally probes it, makes it the default, waits until the old version's queue has drained, then
unregisters the old version(s). If the new version fails to start or to answer the probe, it is removed
again and the old one keeps serving.
"""

import time
from typing import Callable, Optional

from tskit.client import ClientError, TorchServeClient


def wait_ready(client: TorchServeClient, model: str, version: str, workers: int, timeout: float) -> int:
    """READY workers of `version`, once there are `workers` of them or `timeout` has passed."""
    deadline = time.monotonic() + timeout
    while True:
        ready = sum(1 for w in client.workers(model, version) if w.get("status") == "READY")
        if ready >= workers or time.monotonic() > deadline:
            return ready
        time.sleep(0.2)


def wait_drained(client: TorchServeClient, model: str, version: str, grace: float, timeout: float) -> None:
    """Wait until `version` has had no queued request for `grace` seconds: once it is no longer the
    default, nothing new joins its queue, and `grace` covers the batch still running."""
    deadline = time.monotonic() + timeout
    quiet_since = None
    while True:
        status = client.describe(model, version)[0].get("jobQueueStatus", {})
        now = time.monotonic()
        if status.get("pendingRequests", 0) == 0:
            quiet_since = quiet_since if quiet_since is not None else now
            if now - quiet_since >= grace:
                return
        else:
            quiet_since = None
        if now > deadline:
            raise ClientError(f"{model} {version} still has queued requests after {timeout:g} s")
        time.sleep(0.1)


def _register_new(client: TorchServeClient, model: str, archive: str, workers: int, old: list, serving: str) -> str:
    try:
        client.register(archive, model_name=model, initial_workers=workers)
    except ClientError as err:
        # TorchServe 0.12 keeps a version whose workers failed to start: take it out again
        for version in set(client.versions(model)) - set(old):
            client.unregister(model, version)
        raise ClientError(f"registering {archive} failed, {model} {serving} keeps serving: {err}") from None
    new = sorted(set(client.versions(model)) - set(old))
    if len(new) != 1:
        raise ClientError(f"expected one new version of {model} after registering {archive}, found {new}")
    return new[0]


def rollout(client: TorchServeClient, model: str, archive: str, workers: Optional[int] = None,
            probe: Optional[Callable[[str], None]] = None, drain_grace: float = 3.0, drain_timeout: float = 300,
            keep_old: bool = False, log: Callable[[str], None] = lambda line: None) -> dict:
    """Serve `archive` (a file name of the model store) as the new default version of `model`."""
    started = time.monotonic()
    old_versions = client.versions(model)
    if not old_versions:
        raise ClientError(f"{model} is not registered: use `register` for a first version")
    default = client.describe(model)[0]
    serving = default["modelVersion"]
    workers = workers or max(1, int(default.get("minWorkers", 1)))
    log(f"{model}: serving {serving}; registering {archive} with {workers} worker(s)")
    new = _register_new(client, model, archive, workers, old_versions, serving)
    ready = wait_ready(client, model, new, workers, timeout=drain_timeout)
    if ready < workers:
        client.unregister(model, new)
        raise ClientError(f"{model} {new} has {ready} of {workers} workers READY after {drain_timeout:g} s and was "
                          f"unregistered; {serving} keeps serving")
    log(f"{model} {new}: {ready} worker(s) READY")
    if probe is not None:
        try:
            probe(new)
        except ClientError as err:
            client.unregister(model, new)
            raise ClientError(f"{model} {new} failed the probe and was unregistered; {serving} keeps serving: "
                              f"{err}") from None
        log(f"{model} {new}: probe answered")
    client.set_default(model, new)
    log(f"{model}: default is now {new}")
    removed = []
    for version in ([] if keep_old else old_versions):
        wait_drained(client, model, version, drain_grace, drain_timeout)
        client.unregister(model, version)
        removed.append(version)
        log(f"{model} {version}: drained and unregistered")
    return {"model": model, "default": new, "previous": serving, "unregistered": removed,
            "kept": [v for v in old_versions if v not in removed], "workers": workers,
            "seconds": round(time.monotonic() - started, 1)}
