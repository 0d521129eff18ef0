"""A rollout on the KServe engine: a model's next archive loaded beside the serving one, swapped in, the old one
drained and dropped, with no request failed (the engine's answer to TorchServe's register / set-default /
unregister, which `tsctl rollout` makes over TorchServe's management API).

    POST /v2/repository/models/<model>/load   (KServe's repository route; here with the management key)
         {"archive": "<file in the engine's store>"}   default: <model>.mar as it is now in the store

The new archive is unpacked and its handlers started (warm-up included) while the old ones serve; if that fails,
the old version keeps serving and the call answers 500 with why. Otherwise new requests go to the new handlers
at once (HTTP and gRPC), the requests already admitted finish on the old ones, and once the old queue is empty
its handlers are stopped and their folder removed. The model's counters carry over (its metrics stay monotonic).
"""

import asyncio
import itertools
import logging
import os
import shutil
from typing import Callable, Dict

from handlers.request_errors import RequestError

logger = logging.getLogger("handlers.rollout")  # the engine writes the handlers' loggers to its output
DRAIN_TIMEOUT_S = 300.0


class RolloutRefused(RequestError):
    """The archive named is not one this engine may load (a path, not a .mar, not in its store)."""

    status = 400


class RolloutFailed(RequestError):
    """The new archive did not start: the serving version is unchanged."""

    status = 500


class Rollouts:
    """One rollout at a time. `make_model(name, mar, folder)` is the engine's: a loaded kserve.Model with a
    `batcher`; `registry` is KServe's model repository (its gRPC servicer finds models there)."""

    def __init__(self, store: str, unpack_dir: str, batchers: Dict[str, object], registry,
                 make_model: Callable[[str, str, str], object]):
        self.store, self.unpack_dir, self.batchers = store, unpack_dir, batchers
        self.registry, self.make_model = registry, make_model
        self.lock = asyncio.Lock()
        self.loads = itertools.count(1)

    def archive_path(self, model: str, archive: str) -> str:
        archive = archive or f"{model}.mar"
        if os.path.basename(archive) != archive or not archive.endswith(".mar"):
            raise RolloutRefused(f"archive {archive!r}: give the file name of a .mar in the engine's store")
        path = os.path.join(self.store, archive)
        if not os.path.isfile(path):
            raise RolloutRefused(f"no archive {archive!r} in the engine's store ({self.store})")
        return path

    async def load(self, model: str, archive: str) -> dict:
        """Load `archive` for `model`, swap it in, drain the old version; what changed (as `tsctl rollout`
        reports it on TorchServe: the new default, the previous version, what was removed)."""
        path = self.archive_path(model, archive)
        async with self.lock:
            old = self.batchers[model]
            folder = os.path.join(self.unpack_dir, f"{model}-{next(self.loads)}")
            try:
                new = await asyncio.to_thread(self.make_model, model, path, folder)
            except Exception as err:
                logger.exception("rollout of %s from %s failed", model, archive)
                shutil.rmtree(folder, ignore_errors=True)
                raise RolloutFailed(f"{os.path.basename(path)} did not start ({type(err).__name__}: "
                                    f"{str(err)[:300]}); version {version(old)} still serves {model}") from None
            new.batcher.counters = old.counters
            self.batchers[model] = new.batcher
            self.registry.update(new, model)
            logger.info("rollout: %s %s serves; draining %s", model, version(new.batcher), version(old))
            await old.drained(DRAIN_TIMEOUT_S)
            old.stop()
            return {"model": model, "archive": os.path.basename(path), "default": version(new.batcher),
                    "previous": version(old), "unregistered": [version(old)]}


def version(batcher) -> str:
    return str(batcher.unpacked.manifest.get("model", {}).get("modelVersion", "1.0"))
