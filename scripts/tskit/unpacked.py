"""A built .mar, unpacked, and its own handler run in process: what the bench's in-process jobs, the LitServe
peer and the KServe engine serve.

`unpack` gives the model file, its format and the handler's typed settings (the archive's model-config.yaml);
`in_process_handler` initialises the archive's handler class with TorchServe's own Context from the unpacked
folder, so the kind's own steps (read_input, decode, collate, forward, postprocess) run without TorchServe.
"""

import atexit
import importlib
import json
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from typing import Any, List, Optional

import yaml

from tskit import kinds


@dataclass
class Unpacked:
    folder: str
    model_name: str
    kind: str
    model_file: str
    config: dict  # model-config.yaml: TorchServe's keys at the top, `handler:` below
    manifest: dict  # MAR-INF/MANIFEST.json, read once

    def context(self, config: Optional[dict] = None):
        """A TorchServe Context for this archive, as its worker builds one (`config`: another model-config)."""
        from ts.context import Context

        return Context(self.model_name, self.folder, self.manifest, self.batch_size, None, "0.12.0",
                       model_yaml_config=self.config if config is None else config)

    @property
    def settings(self):
        return kinds.parse_settings(self.kind, self.config.get("handler"))

    @property
    def batch_size(self) -> int:
        return int(self.config.get("batchSize", 1))

    @property
    def max_batch_delay_ms(self) -> int:
        return int(self.config.get("maxBatchDelay", 100))

    @property
    def job_queue_size(self) -> int:
        """The requests that may wait for the model (TorchServe's per-model jobQueueSize; its default 100)."""
        return int(self.config.get("jobQueueSize", 100))

    @property
    def workers(self) -> int:
        return int(self.config.get("minWorkers", 1))

    def file(self, name: str) -> str:
        return os.path.join(self.folder, name)

    def cleanup(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def unpack(mar: str, folder: str = None) -> Unpacked:
    """`mar` extracted into `folder`; with no folder, into a temporary one removed when this process exits (a
    long-lived server passes a folder its starter removes: a SIGTERM skips atexit)."""
    if folder is None:
        folder = tempfile.mkdtemp(prefix="bench-mar-")
        atexit.register(shutil.rmtree, folder, True)
    with zipfile.ZipFile(mar) as archive:
        archive.extractall(folder)
        return _described(archive, folder)


def peek(mar: str) -> Unpacked:
    """The archive's name, kind and config read from the zip, nothing extracted (its `folder` is empty)."""
    with zipfile.ZipFile(mar) as archive:
        return _described(archive, "")


def _described(archive: zipfile.ZipFile, folder: str) -> Unpacked:
    whole = json.loads(archive.read("MAR-INF/MANIFEST.json"))
    manifest = whole["model"]
    config = (yaml.safe_load(archive.read(manifest["configFile"])) or {}) if manifest.get("configFile") else {}
    kind = kinds.of_handler(os.path.basename(manifest["handler"])).name
    return Unpacked(folder, manifest["modelName"], kind, os.path.join(folder, manifest["serializedFile"]), config,
                    whole)


def in_process_handler(unpacked: Unpacked, threads: int):
    """The archive's handler class, initialised from the unpacked archive with TorchServe's own Context and
    `threads` intra-op threads; (handler, context)."""
    module = importlib.import_module(kinds.kind(unpacked.kind).handler_module)
    [cls] = [c for c in vars(module).values() if isinstance(c, type) and c.__module__ == module.__name__]
    config = dict(unpacked.config, handler=dict(unpacked.config.get("handler") or {}, intraOpThreads=threads))
    context = unpacked.context(config)
    handler = cls()
    handler.initialize(context)
    return handler, context


def decode_body(handler, body: Any, content_type: Optional[str] = None) -> Any:
    """One request body (raw bytes, or a parsed JSON document) to its model-ready item, by the kind's own steps."""
    return handler.decode(handler.read_input(body, content_type))


def answer_items(handler, items: List[Any]) -> List[Any]:
    """Decoded items to their answers as one batch: the kind's collate, forward pass and postprocess."""
    from handlers.batch_handler import PreparedBatch

    batch = PreparedBatch(items=list(items), owners=list(range(len(items))), topks=[None] * len(items))
    return handler.postprocess(handler.inference(handler.collate(batch.items)), batch)
