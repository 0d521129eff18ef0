"""The TorchServe glue shared by every model: per-request decode, one batched forward, per-request answers.

TorchServe calls `handle(data, context)` with N requests; this class answers N responses in the
same order. A request whose content is bad gets its own 4xx JSON error through
`context.set_response_status(code, message, idx)`; the others of the batch are answered normally.
A request is the contract's plain form (one item) or a KServe form of one or more items, recognised by
its content and answered in the same protocol (protocols.py): Open Inference Protocol v2
(`/v2/models/<m>/infer`, JSON or binary tensors) or KServe v1 (`/v1/models/<m>:predict`).

Subclasses name their `kind` (its typed settings are in model_settings; a bad `handler:` section of
model-config.yaml fails the worker's load with a message naming the key) and fill small hooks
(the shape of LitServe's LitAPI):
    setup(settings)               the typed settings, once, after the model is loaded
    answer_item_bytes(topk)       an upper bound of one item's JSON answer (the answer-size budget)
    read_input(body, content_type) one input's body -> the kind's payload (image bytes and header, a text),
                                  read once: the budgets and decode take it (raise RequestError if bad)
    check_inputs(payloads)        the kind's budgets over a request's read inputs (e.g. declared pixels)
    decode(payload)               one payload -> one model item (raise RequestError if bad)
    collate(items)                decoded items -> the model's batched input, on self.device
    postprocess(outputs, batch)   model output -> one JSON-ready result per item
    check_outputs(outputs)        the warm-up's output against the settings (e.g. labels vs classes)
A model's declaration can turn on a response cache per worker (response_cache: cacheEntries,
cacheBytes; hits skip the model) and torch.profiler for its next N batches (batch_profiler:
profileBatches); both are off by default and then cost one test per batch.
A request stamped `X-Request-Start` that waited past its patience (X-Request-Timeout-Ms, or the model's
maxQueueMs) is answered 503 before anything of it is read (request_deadline).
Every request passes its budgets (model_settings: maxItemsPerRequest, maxResponseBytes and the kind's)
before any of its items is decoded; an over-budget request alone is answered 413 (request_budget).
Subclasses also declare `outputs` (their v2 output tensors), `v2_field` (the plain JSON field a JSON v2/v1 element
stands for: "image" or "text") and `raw_element_type` (the content type a binary v2 element is read as).
"""

import json
import logging
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple, Type

import torch
from ts.torch_handler.base_handler import BaseHandler

from handlers.batch_profiler import BatchProfiler
from handlers.cpu_requirements import check_cpu, read_cpuinfo
from handlers.handler_metrics import HandlerMetrics
from handlers.model_formats import load_model
from handlers.model_settings import CommonSettings, read_settings
from handlers.protocols import HEADER_LENGTH, Answer, ModelInfo, Output, Request, parse_request
from handlers.request_budget import check_answer_bytes, check_items, envelope_bytes
from handlers.request_deadline import check_deadline
from handlers.request_errors import AnswerTooLarge, InternalError, InvalidField, RequestError
from handlers.request_payload import count_error, is_count, request_body
from handlers.response_cache import ResponseCache
from handlers.worker_log import drop_per_batch_noise

logger = logging.getLogger(__name__)

JSON = "application/json"
INFERENCE_FAILED = "inference failed on the server; see the model log"  # a batch's forward pass raised


@dataclass
class DecodedRequest:
    items: List[Any]
    request: Request              # its protocol object: it writes the answer
    topk: Optional[int] = None    # a KServe request's parameters.topk, for every item of it
    video: Any = None             # a video answered frame by frame (video_batch_handler), no items of its own


@dataclass
class PreparedBatch:
    """The decodable requests of one TorchServe batch, flattened to items, and the errors of the others."""

    requests: Dict[int, DecodedRequest] = field(default_factory=dict)
    errors: Dict[int, RequestError] = field(default_factory=dict)
    items: List[Any] = field(default_factory=list)
    owners: List[int] = field(default_factory=list)  # request index of each item
    topks: List[Optional[int]] = field(default_factory=list)  # per item: a request's topk parameter, or None

    def subset(self, indices: List[int]) -> "PreparedBatch":
        """The items at `indices` (in order), as a batch of their own (the response cache's misses)."""
        return PreparedBatch(self.requests, self.errors, [self.items[i] for i in indices],
                             [self.owners[i] for i in indices], [self.topks[i] for i in indices])


def select_device(gpu_id: Optional[int]) -> torch.device:
    """cuda:<gpu_id> when TorchServe assigned a GPU and CUDA is there, else the CPU."""
    if gpu_id is not None and torch.cuda.is_available():
        return torch.device(f"cuda:{gpu_id}")
    return torch.device("cpu")


def reason_phrase(message: str) -> str:
    """An HTTP reason phrase: one printable ASCII line (the JSON body has the full message)."""
    return re.sub(r"[^\x20-\x7e]+", " ", message)[:200]


class BatchHandler(BaseHandler):
    kind = ""  # the model kind this handler serves (a declaration's `kind:`; named in settings errors)
    settings_class: Type[CommonSettings] = CommonSettings  # the typed `handler:` settings of that kind
    outputs: Sequence[Output] = ()  # the v2 output tensors of an answer
    v2_field = "data"
    raw_element_type = "application/octet-stream"

    def initialize(self, context):
        started = time.perf_counter()
        self.context = context
        self.manifest = context.manifest
        properties = context.system_properties
        self.model_dir = properties["model_dir"]
        self.settings = read_settings(self.settings_class, (context.model_yaml_config or {}).get("handler"), self.kind)
        torch.set_num_threads(self.settings.intraOpThreads)
        self.device = select_device(properties.get("gpu_id"))
        if self.device.type == "cpu" and self.settings.requiredCpuFlags:  # an aoti archive's kernels: its build CPU's
            check_cpu(self.settings.requiredCpuFlags, self.settings.builtForIsa, read_cpuinfo())
        model_file = os.path.join(self.model_dir, self.manifest["model"]["serializedFile"])
        self.model = self.load(model_file)
        self.handler_metrics = HandlerMetrics(context.metrics, context.model_name)
        drop_per_batch_noise()  # one stdout line less per batch for the frontend to read (worker_log.py)
        self.cache, self.profiler = self.cache_and_profiler(context.model_name)
        self.setup(self.settings)
        self.warm_up(self.settings.warmUpRuns)
        self.initialized = True
        logger.info(
            "%s (%s) ready on %s with %d intra-op threads in %.1f s", context.model_name,
            self.settings.modelFormat, self.device, torch.get_num_threads(), time.perf_counter() - started,
        )

    def cache_and_profiler(self, model_name: str) -> Tuple[Optional[ResponseCache], BatchProfiler]:
        settings, version = self.settings, self.model_version()
        cache = None
        if settings.cacheEntries:  # keyed by name and version too: a new version never serves an old answer
            cache = ResponseCache(settings.cacheEntries, settings.cacheBytes, f"{model_name}/{version}")
        folder = settings.profileDir or os.path.join(os.environ.get("LOG_LOCATION", "logs"), "profiles")
        return cache, BatchProfiler(settings.profileBatches, folder, f"{model_name}-{version}", self.device)

    def load(self, model_file: str) -> Any:
        """The model behind one callable (model_formats); a kind with its own runtime overrides this."""
        return load_model(model_file, self.settings.modelFormat, self.device, self.settings.intraOpThreads,
                          self.settings.optimizeForInference)

    def archive_file(self, name: str) -> str:
        return os.path.join(self.model_dir, name)

    # ---- hooks for subclasses ------------------------------------------------------------
    def setup(self, settings: CommonSettings) -> None:
        """Take the typed settings; called once, after the model is loaded."""

    def read_input(self, body: Any, content_type: Optional[str]) -> Any:
        """One input's body -> what check_inputs and decode take; each input is read exactly once."""
        return body, content_type

    def decode(self, payload: Any) -> Any:
        raise NotImplementedError

    def collate(self, items: List[Any]) -> Any:
        raise NotImplementedError

    def postprocess(self, outputs: Any, batch: PreparedBatch) -> List[Any]:
        raise NotImplementedError

    def warm_up_items(self) -> List[Any]:
        """Decoded items for the load-time warm-up runs (TorchScript optimises on its first calls)."""
        return []

    def check_outputs(self, outputs: Any) -> None:
        """Raise model_settings.SettingsError when the model's output does not fit the settings."""

    # ---- the pipeline ------------------------------------------------------------------
    def warm_up(self, runs: int) -> None:
        """Run the warm-up items; the first run's output is checked against the settings even when runs=0."""
        items = self.warm_up_items()
        for run in range(max(runs, 1) if items else 0):
            outputs = self.inference(self.collate(items))
            if run == 0:
                self.check_outputs(outputs)

    def decode_request(self, idx: int, row: dict) -> DecodedRequest:
        key, body = request_body(row)
        request = parse_request(body, self.content_type(idx, key), self.request_header(idx, HEADER_LENGTH))
        return self.decode_items(request)

    def decode_items(self, request: Request) -> DecodedRequest:
        """A parsed request's inputs, budgeted, read and decoded (its RequestErrors marked with its protocol)."""
        try:
            if request.protocol == "plain":
                inputs, topk = [(request.body, request.content_type)], None
            else:
                inputs, topk = [self.element_input(e) for e in request.elements], request_topk(request.parameters)
            self.check_budget(request, len(inputs), topk)
            payloads = [self.read_input(body, content_type) for body, content_type in inputs]
            self.check_inputs(payloads)
            return DecodedRequest([self.decode(payload) for payload in payloads], request, topk)
        except RequestError as err:
            err.protocol = request.protocol
            raise

    def element_input(self, element) -> Tuple[Any, str]:
        """A KServe element as a (body, content type) pair: a JSON string is what the plain JSON form
        carries in `v2_field` (base64 image bytes or the text); raw bytes (a binary v2 tensor) are the
        image or the UTF-8 text itself."""
        if isinstance(element, str):
            return {self.v2_field: element}, JSON
        return element, self.raw_element_type

    # ---- budgets: checked before any input is read (request_budget) -----------------------------
    def check_budget(self, request: Request, count: int, topk: Optional[int]) -> None:
        check_items(count, self.settings.maxItemsPerRequest)
        estimate = envelope_bytes(getattr(request, "id", None)) + count * self.answer_item_bytes(topk)
        check_answer_bytes(estimate, self.settings.maxResponseBytes)

    def answer_item_bytes(self, topk: Optional[int]) -> int:
        """An upper bound of one item's answer in JSON (`topk`: a KServe request's parameters.topk)."""
        return 0

    def check_inputs(self, payloads: List[Any]) -> None:
        """The kind's own budgets over a request's read, undecoded inputs (e.g. declared pixels); raise RequestError."""

    def preprocess(self, data: List[dict], skip: Sequence[int] = ()) -> PreparedBatch:
        """Decode each request on its own: a bad one is recorded, never raised. `skip`: requests already running
        (a video's later steps), read at their first."""
        batch = PreparedBatch()
        now = time.time()  # the batch reached the worker: a stamped request's wait ends here
        for idx, row in enumerate(data):
            if idx in skip:
                continue
            try:
                check_deadline(lambda name: self.request_header(idx, name), self.settings.maxQueueMs, now)
                request = self.decode_request(idx, row)
            except RequestError as err:
                batch.errors[idx] = err
            except Exception:  # a decoder bug must not fail the batch or the worker
                logger.exception("decoding request %d failed", idx)
                batch.errors[idx] = InternalError("the server failed to read this request")
            else:
                batch.requests[idx] = request
                batch.items += request.items
                batch.owners += [idx] * len(request.items)
                batch.topks += [request.topk] * len(request.items)
        return batch

    def inference(self, inputs: Any) -> Any:
        with torch.inference_mode():
            return self.model(inputs)

    def handle(self, data: List[dict], context) -> List[bytes]:
        self.context = context
        if self.profiler.active:  # off: this test is all it costs
            with self.profiler.batch():
                return self.handle_batch(data)
        return self.handle_batch(data)

    def handle_batch(self, data: List[dict]) -> List[bytes]:
        started = time.perf_counter()
        with self.profiler.phase("decode"):
            batch = self.preprocess(data)
        answers: Dict[int, Any] = dict(batch.errors)
        timings: Dict[str, float] = {}
        results = self.guarded_results(batch, timings, started)
        answers.update(self.group_answers(batch, results) if results is not None else self.failed(batch))
        self.batch_done(len(data), timings, batch)
        protocols = {idx: decoded.request.protocol for idx, decoded in batch.requests.items()}
        return [self.encode(idx, answers[idx], protocols.get(idx)) for idx in range(len(data))]

    def guarded_results(self, batch: PreparedBatch, timings: Dict[str, float], started: float) -> Optional[List[Any]]:
        """One result per item of the batch; None when the forward pass failed (logged: the worker lives)."""
        if not batch.items:
            return []
        try:
            return self.results(batch, timings, started)
        except Exception:
            logger.exception("inference failed for a batch of %d", len(batch.items))
            return None

    @staticmethod
    def failed(batch: PreparedBatch) -> Dict[int, RequestError]:
        failure = InternalError(INFERENCE_FAILED)
        return {idx: failure for idx in batch.requests}

    def batch_done(self, size: int, timings: Dict[str, float], batch: PreparedBatch) -> None:
        self.handler_metrics.batch(size, timings, [e.type for e in batch.errors.values()])
        if self.cache is not None:
            self.handler_metrics.counts(self.cache.take_counts())
        logger.info("handled batch size=%d invalid=%d", size, len(batch.errors))

    def results(self, batch: PreparedBatch, timings: Dict[str, float], started: float) -> List[Any]:
        """One result per item: from the response cache where it has the item, else from the model
        (only the missing items run; a batch whose items all hit runs no forward pass)."""
        if self.cache is None:
            return self.run_model(batch, timings, started)
        keys = [self.cache.key(item, (topk,)) for item, topk in zip(batch.items, batch.topks)]
        results = [self.cache.get(key) for key in keys]
        missing = [i for i, result in enumerate(results) if result is None]
        if missing:
            computed = self.run_model(batch if len(missing) == len(results) else batch.subset(missing), timings, started)
            for i, result in zip(missing, computed):
                results[i] = result
                if not isinstance(result, RequestError):  # only successful answers are kept
                    self.cache.put(keys[i], result)
        return results

    def run_model(self, batch: PreparedBatch, timings: Dict[str, float], started: float) -> List[Any]:
        with self.profiler.phase("collate"):
            inputs = self.collate(batch.items)
        decoded = time.perf_counter()
        timings["PreprocessTime"] = (decoded - started) * 1e3
        with self.profiler.phase("model"):
            outputs = self.inference(inputs)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
        inferred = time.perf_counter()
        timings["InferenceTime"] = (inferred - decoded) * 1e3
        with self.profiler.phase("postprocess"):
            results = self.postprocess(outputs, batch)
        timings["PostprocessTime"] = (time.perf_counter() - inferred) * 1e3
        return results

    def group_answers(self, batch: PreparedBatch, results: List[Any]) -> Dict[int, Answer]:
        """Item results back to their requests, each answered by its own protocol object."""
        per_request: Dict[int, List[Any]] = {}
        for owner, result in zip(batch.owners, results):
            per_request.setdefault(owner, []).append(result)
        model = ModelInfo(self.context.model_name, self.model_version(), self.outputs)
        return {idx: decoded.request.respond(per_request[idx], model) for idx, decoded in batch.requests.items()}

    def bounded(self, answer: Any, protocol: Optional[str]) -> Tuple[Answer, Optional[RequestError]]:
        """(what is sent, the error it answers or None): an error as the contract's JSON, and any answer
        over maxResponseBytes (an estimate that missed, a plain JSON `topk`, an error that grew) replaced by
        AnswerTooLarge. The frontend fails a worker's whole message above max_response_size and restarts the
        worker, so no answer, error or not, may pass this size. AnswerTooLarge's own JSON (under 400 bytes,
        ASCII) is below the smallest maxResponseBytes settings allow (1,024)."""
        error = answer if isinstance(answer, RequestError) else None
        if error is not None:
            answer = Answer(json.dumps(error.to_dict()).encode("utf-8"))
        limit = self.settings.maxResponseBytes
        if len(answer.body) <= limit:
            return answer, error
        too_large = AnswerTooLarge(f"the answer is {len(answer.body):,} bytes, above the server's limit of "
                                   f"{limit:,} (max_response_size): ask for fewer items or predictions per request")
        too_large.protocol = error.protocol if error is not None else protocol
        return Answer(json.dumps(too_large.to_dict()).encode("utf-8")), too_large

    # ---- TorchServe request/response plumbing -------------------------------------------------
    def model_version(self) -> Optional[str]:
        return (self.manifest or {}).get("model", {}).get("modelVersion")

    def content_type(self, idx: int, key: str) -> Optional[str]:
        """The content type of the request part `key` (TorchServe keeps one per part)."""
        part = self.context.get_request_header(idx, key)
        if isinstance(part, dict):
            return part.get("content-type")
        return self.context.get_request_header(idx, "Content-Type")

    def request_header(self, idx: int, name: str) -> Optional[str]:
        """A request header, whatever the case the client wrote its name in (the per-part entries TorchServe
        keeps beside them are dicts, never a header's value)."""
        headers = self.context.get_all_request_header(idx) or {}
        wanted = name.lower()
        return next((value for key, value in headers.items() if str(key).lower() == wanted and isinstance(value, str)),
                    None)

    def encode(self, idx: int, answer: Any, protocol: Optional[str] = None) -> bytes:
        """The one exit of every answer (`protocol`: its request's, for an AnswerTooLarge in its form)."""
        answer, error = self.bounded(answer, protocol)
        if error is not None:
            self.context.set_response_status(error.status, reason_phrase(error.message), idx)
        self.context.set_response_content_type(idx, answer.content_type)
        for name, value in answer.headers.items():
            self.context.set_response_header(idx, name, value)
        if self.came_by_grpc(idx):
            # gRPC StreamPredictions reads this header of every answer (the frontend's GRPCJob throws
            # without it and the worker is restarted): "false" makes each answer the stream's last
            # message; unary gRPC ignores it. Never on HTTP, where it would switch to a chunked stream.
            self.context.set_response_header(idx, "ts_stream_next", "false")
        return answer.body

    def mark_streams(self, stops: Dict[int, Optional[bool]]) -> None:
        """Continuous batching's marks: TorchServe's codec asks each request's criterion after the handler returns:
        True writes ts_stream_next "false" (the last reply), False "true" (more to come), None nothing (an ordinary
        reply). A call with no stream in it sets none."""
        streams = any(stop is not None for stop in stops.values())
        self.context.stopping_criteria = ({idx: (lambda _, stop=stop: stop) for idx, stop in stops.items()}
                                          if streams else None)

    def came_by_grpc(self, idx: int) -> bool:
        """gRPC requests carry no HTTP headers: only the input fields' (per-part) entries."""
        headers = self.context.get_all_request_header(idx) or {}
        return not any(isinstance(value, str) for value in headers.values())


def request_topk(parameters: dict) -> Optional[int]:
    """A KServe request's `parameters.topk`: a positive integer, or absent."""
    topk = parameters.get("topk")
    if topk is not None and not is_count(topk):
        raise InvalidField(count_error("parameters.topk", topk))
    return topk
