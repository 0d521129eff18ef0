"""The TorchServe glue shared by every model: per-request decode, one batched forward, per-request answers.

TorchServe calls `handle(data, context)` with N requests; this class answers N responses in the
same order. A request whose content is bad gets its own 4xx JSON error through
`context.set_response_status(code, message, idx)`; the others of the batch are answered normally.

Subclasses fill four small hooks (the shape of LitServe's LitAPI):
    setup(config)                 read the `handler:` settings of model-config.yaml once
    decode(body, content_type)    one request's body -> one model item (raise RequestError if bad)
    collate(items)                decoded items -> the model's batched input, on self.device
    postprocess(outputs, batch)   model output -> one JSON-ready result per item
"""

import json
import logging
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import torch
from ts.torch_handler.base_handler import BaseHandler

from request_errors import InternalError, RequestError
from request_payload import request_body

logger = logging.getLogger(__name__)

JSON = "application/json"


@dataclass
class PreparedBatch:
    """The decodable requests of one TorchServe batch, and the errors of the others."""

    positions: List[int] = field(default_factory=list)  # request index of each item
    items: List[Any] = field(default_factory=list)
    errors: Dict[int, RequestError] = field(default_factory=dict)


def select_device(gpu_id: Optional[int]) -> torch.device:
    """cuda:<gpu_id> when TorchServe assigned a GPU and CUDA is there, else the CPU."""
    if gpu_id is not None and torch.cuda.is_available():
        return torch.device(f"cuda:{gpu_id}")
    return torch.device("cpu")


def load_torchscript(path: str, device: torch.device, optimize: bool) -> torch.jit.ScriptModule:
    """Load for inference; `optimize` freezes and applies the device's inference passes
    (conv-bn folding, oneDNN layouts on CPU) here at load time, so the archive stays device-neutral."""
    model = torch.jit.load(path, map_location=device).eval()
    if optimize:
        model = torch.jit.optimize_for_inference(torch.jit.freeze(model))
    return model


def reason_phrase(message: str) -> str:
    """An HTTP reason phrase: one printable ASCII line (the JSON body has the full message)."""
    return re.sub(r"[^\x20-\x7e]+", " ", message)[:200]


class BatchHandler(BaseHandler):
    def initialize(self, context):
        started = time.perf_counter()
        self.context = context
        self.manifest = context.manifest
        properties = context.system_properties
        self.model_dir = properties["model_dir"]
        self.config = dict((context.model_yaml_config or {}).get("handler") or {})
        threads = self.config.get("intraOpThreads")
        if threads:
            torch.set_num_threads(int(threads))
        self.device = select_device(properties.get("gpu_id"))
        model_file = os.path.join(self.model_dir, self.manifest["model"]["serializedFile"])
        self.model = load_torchscript(
            model_file, self.device, optimize=bool(self.config.get("optimizeForInference", True))
        )
        self.setup(self.config)
        self.warm_up(int(self.config.get("warmUpRuns", 2)))
        self.initialized = True
        logger.info(
            "%s ready on %s with %d intra-op threads in %.1f s",
            context.model_name, self.device, torch.get_num_threads(), time.perf_counter() - started,
        )

    # ---- hooks for subclasses ------------------------------------------------------------
    def setup(self, config: dict) -> None:
        """Read the handler settings; called once, after the model is loaded."""

    def decode(self, body: Any, content_type: Optional[str]) -> Any:
        raise NotImplementedError

    def collate(self, items: List[Any]) -> Any:
        raise NotImplementedError

    def postprocess(self, outputs: Any, batch: PreparedBatch) -> List[Any]:
        raise NotImplementedError

    def warm_up_items(self) -> List[Any]:
        """Decoded items for the load-time warm-up runs (TorchScript optimises on its first calls)."""
        return []

    # ---- the pipeline ------------------------------------------------------------------
    def warm_up(self, runs: int) -> None:
        items = self.warm_up_items()
        for _ in range(runs if items else 0):
            self.inference(self.collate(items))

    def preprocess(self, data: List[dict]) -> PreparedBatch:
        """Decode each request on its own: a bad one is recorded, never raised."""
        batch = PreparedBatch()
        for idx, row in enumerate(data):
            try:
                key, body = request_body(row)
                item = self.decode(body, self.content_type(idx, key))
            except RequestError as err:
                batch.errors[idx] = err
            except Exception:  # a decoder bug must not fail the batch or the worker
                logger.exception("decoding request %d failed", idx)
                batch.errors[idx] = InternalError("the server failed to read this request")
            else:
                batch.positions.append(idx)
                batch.items.append(item)
        return batch

    def inference(self, inputs: Any) -> Any:
        with torch.inference_mode():
            return self.model(inputs)

    def handle(self, data: List[dict], context) -> List[bytes]:
        self.context = context
        batch = self.preprocess(data)
        results: Dict[int, Any] = dict(batch.errors)
        if batch.items:
            try:
                outputs = self.inference(self.collate(batch.items))
                results.update(zip(batch.positions, self.postprocess(outputs, batch)))
            except Exception:
                logger.exception("inference failed for a batch of %d", len(batch.items))
                failure = InternalError("inference failed on the server; see the model log")
                results.update((idx, failure) for idx in batch.positions)
        logger.info("handled batch size=%d invalid=%d", len(data), len(batch.errors))
        return [self.encode(idx, results[idx]) for idx in range(len(data))]

    # ---- TorchServe request/response plumbing -------------------------------------------------
    def content_type(self, idx: int, key: str) -> Optional[str]:
        """The content type of the request part `key` (TorchServe keeps one per part)."""
        part = self.context.get_request_header(idx, key)
        if isinstance(part, dict):
            return part.get("content-type")
        return self.context.get_request_header(idx, "Content-Type")

    def encode(self, idx: int, result: Any) -> bytes:
        self.context.set_response_content_type(idx, JSON)
        if isinstance(result, RequestError):
            self.context.set_response_status(result.status, reason_phrase(result.message), idx)
            result = result.to_dict()
        return json.dumps(result).encode("utf-8")
