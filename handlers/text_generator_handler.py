"""TorchServe handler for the `text-generator` kind: a causal LM, token by token, under continuous batching.

The archive's model-config.yaml sets `continuousBatching: true`: TorchServe then calls `handle` once per
step with every running request (no body: it is cached here) plus new ones up to batchSize, and keeps a
request while its answer says `ts_stream_next: true`. This glue maps that onto generation_engine.Engine:
    ids TorchServe stopped sending     their clients left: rows and caches freed before the step
    running requests                   one decode step together
    new requests                       read and checked (4xx before any token), then prefilled
and answers each request with the bytes its protocol object made this step (generation_protocols).
How each reply is marked (TorchServe 0.12, measured): a request that ends in its first reply is answered
as an ordinary reply (no ts_stream_next header: a first reply marked "false" hangs the client); the others
are "true" until their last. gRPC and KServe v2 requests are answered whole within one call (0.12's gRPC
stream reads a cancelled call as open and drops a live one after its first message; v2 has no stream).
An exception in one request's prefill answers that request alone; one in the batched step answers every
running request with an error and frees them, never the worker.
"""

import json
import logging
import time
from typing import Any, Dict, List, Optional, Tuple

from transformers import AutoConfig, AutoTokenizer, GenerationConfig

from handlers.batch_handler import BatchHandler, reason_phrase
from handlers.decoders import load_decoder
from handlers.generation import Sampling
from handlers.generation_engine import Engine
from handlers.generation_protocols import (ROUTES, V2_OUTPUTS, Framing, NativeStream, NativeWhole, V2Whole, models_list,
                                  openai_framing)
from handlers.generation_request import (Limits, Options, Prompt, UnknownRoute, check_prompt_size, read_messages,
                                read_options, read_prompt)
from handlers.model_settings import TextGeneratorSettings, prompt_token_cap
from handlers.protocols import HEADER_LENGTH, JSON_TYPE, Answer, ModelInfo, PlainRequest, V2Request, parse_request
from handlers.request_errors import InternalError, InvalidField, InvalidJSON, RequestError
from handlers.request_payload import request_body, text_request

logger = logging.getLogger(__name__)

Reply = Tuple[bytes, str, Optional[bool], Optional[RequestError]]  # body, content type, stop flag, error
START_FAILED = "the server failed to start this generation; see the model log"


class TextGeneratorHandler(BatchHandler):
    kind = "text-generator"
    settings_class = TextGeneratorSettings
    outputs = V2_OUTPUTS
    v2_field = "text"

    def load(self, model_file: str) -> Any:
        return load_decoder(model_file, self.settings.modelFormat, self.device, self.settings.intraOpThreads,
                            self.settings.dtype)

    def setup(self, settings: TextGeneratorSettings) -> None:
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir, local_files_only=True)
        config = AutoConfig.from_pretrained(self.model_dir, local_files_only=True)
        positions = getattr(config, "max_position_embeddings", None)
        self.limits = Limits(settings.maxNewTokens, prompt_token_cap(settings, positions), settings.maxPromptChars,
                             settings.defaultMaxTokens)
        eos = GenerationConfig.from_pretrained(self.model_dir, local_files_only=True).eos_token_id
        eos_ids = eos if isinstance(eos, list) else [eos]
        # gRPC and v2 answers are made within one call: half of the per-call responseTimeout, so the worker is
        # never restarted for one (the answer then ends with finish_reason "length")
        call_seconds = float((self.context.model_yaml_config or {}).get("responseTimeout", 120)) / 2
        self.engine = Engine(self.model, self.decode_text, eos_ids, settings.maxSeconds, call_seconds,
                             self.limits.max_prompt_tokens)
        self.created = int(time.time())

    def decode_text(self, tokens: List[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    def warm_up(self, runs: int) -> None:
        for run in range(runs):
            self.engine.start("warm-up", self.tokenizer("warm up")["input_ids"], Options(4, Sampling(0.0)),
                              NativeWhole(), in_call=True)
            self.engine.prefill()
            self.engine.run_in_call(["warm-up"])
            self.engine.reply("warm-up")
        self.engine.take_stats()

    # ---- one TorchServe call: one step --------------------------------------------------------------
    def handle(self, data: List[dict], context) -> List[bytes]:
        self.context = context
        ids = [context.request_ids[idx] for idx in range(len(data))]
        gone = [i for i in self.engine.table if i not in set(ids)]
        if gone:  # TorchServe stopped sending them: their clients closed the connection
            self.engine.forget(gone)
            logger.info("freed %d sequences whose clients left: %s", len(gone), " ".join(gone))
        errors: Dict[int, RequestError] = {}
        immediate: Dict[int, Answer] = {}
        running = [idx for idx, seq_id in enumerate(ids) if seq_id in self.engine.table]
        self.guarded(self.engine.step, [ids[idx] for idx in running], running, errors)
        for idx, seq_id in enumerate(ids):
            if idx not in running:
                self.begin_guarded(idx, seq_id, data[idx], immediate, errors)
        self.prefill(ids, errors)
        in_call = [i for i in ids if i in self.engine.table and self.engine.table[i].in_call]
        if in_call:
            self.guarded(lambda: self.engine.run_in_call(in_call), in_call,
                         [ids.index(i) for i in in_call], errors)
        replies = [self.reply(idx, ids[idx], immediate, errors, idx in running) for idx in range(len(data))]
        self.report(len(data), errors)
        return self.send(replies)

    def guarded(self, work, seq_ids: List[str], indices: List[int], errors: Dict[int, RequestError]) -> None:
        """Run a batched step; if it fails, those requests get an error and are freed, the worker lives."""
        try:
            work()
        except Exception:
            logger.exception("a generation step failed for %d requests", len(seq_ids))
            self.engine.forget(seq_ids)
            errors.update((idx, InternalError("generation failed on the server; see the model log")) for idx in indices)

    def begin_guarded(self, idx: int, seq_id: str, row: dict, immediate: Dict[int, Answer],
                      errors: Dict[int, RequestError]) -> None:
        try:
            answer = self.begin(idx, seq_id, row)
            if answer is not None:
                immediate[idx] = answer
        except RequestError as err:
            errors[idx] = err
        except Exception:  # a reader or prefill bug fails this request only
            logger.exception("starting request %s failed", seq_id)
            self.engine.forget([seq_id])
            errors[idx] = InternalError(START_FAILED)

    def prefill(self, ids: List[str], errors: Dict[int, RequestError]) -> None:
        """This call's new prompts together; a failure answers only the request that caused it."""
        for seq_id, err in self.engine.prefill().items():
            logger.error("prefilling request %s failed: %r", seq_id, err)
            errors[ids.index(seq_id)] = InternalError(START_FAILED)

    # ---- a new request: route, read, check, prefill -------------------------------------------------
    def begin(self, idx: int, seq_id: str, row: dict) -> Optional[Answer]:
        route = (self.request_header(idx, "url_path") or "").strip("/")
        if route not in ROUTES:
            raise UnknownRoute(f"no route {route!r} here: use /predictions/<model>/<version>/v1/chat/completions, "
                               f"v1/completions or v1/models")
        if route == "v1/models":
            return Answer(models_list(self.context.model_name, self.created))
        key, body = request_body(row)
        request = parse_request(body, self.content_type(idx, key), self.request_header(idx, HEADER_LENGTH))
        prompt, options, framing = self.read(route, request, seq_id)
        tokens = self.encode_prompt(prompt)
        in_call = isinstance(framing, V2Whole) or self.came_by_grpc(idx)
        if in_call and framing.streamed:
            framing = NativeWhole()  # gRPC: the whole answer in one message
        self.engine.start(seq_id, tokens, options, framing, in_call)
        return None

    def read(self, route: str, request, seq_id: str) -> Tuple[Prompt, Any, Framing]:
        if isinstance(request, V2Request):
            if len(request.elements) != 1:
                raise InvalidField(f"v2 request: send one prompt per request, not {len(request.elements)}")
            element = request.elements[0]
            text = element if isinstance(element, str) else text_request(element, "text/plain")
            model = ModelInfo(self.context.model_name, self.model_version(), self.outputs)
            return (read_prompt({"prompt": text}), read_options(request.parameters, self.limits),
                    V2Whole(request, model))
        if not isinstance(request, PlainRequest):
            raise InvalidField("KServe v1 is not served by a text generator: send JSON {\"prompt\": ...}")
        document = request.body if isinstance(request.body, dict) else self.text_document(request)
        if route == "":
            options = read_options(document, self.limits)
            return read_prompt(document), options, NativeStream() if options.stream else NativeWhole()
        options = read_options(document, self.limits, openai=True)
        chat = route == "v1/chat/completions"
        prompt = Prompt(messages=read_messages(document.get("messages"))) if chat else read_prompt(document, "prompt")
        framing = openai_framing(route, options.stream, self.context.model_name, seq_id, options.include_usage)
        return prompt, options, framing

    @staticmethod
    def text_document(request: PlainRequest) -> dict:
        """A body that is not a JSON object is the prompt. TorchServe hands a text/plain body over as a str,
        where protocols.parse_request looks for JSON in bytes only: a str that is a JSON object is read as one
        (with the defaults, a JSON request sent as text/plain would otherwise be a 128-token prompt)."""
        body = request.body
        if isinstance(body, str) and body.lstrip().startswith("{"):
            try:
                document = json.loads(body)
            except (ValueError, RecursionError):
                raise InvalidJSON("the body starts like a JSON object but is not valid JSON") from None
            if isinstance(document, dict):
                return document
        return {"prompt": text_request(body, request.content_type)}

    def encode_prompt(self, prompt: Prompt) -> List[int]:
        if prompt.messages is not None:
            check_prompt_size(sum(len(m["content"]) for m in prompt.messages), None, self.limits)
            tokens = self.tokenizer.apply_chat_template(list(prompt.messages), add_generation_prompt=True,
                                                        tokenize=True, return_dict=False)
        else:
            check_prompt_size(len(prompt.text), None, self.limits)
            tokens = self.tokenizer(prompt.text)["input_ids"]
        check_prompt_size(0, len(tokens), self.limits)
        return list(tokens)

    # ---- answers ------------------------------------------------------------------------------------
    def reply(self, idx: int, seq_id: str, immediate: Dict[int, Answer], errors: Dict[int, RequestError],
              streaming: bool) -> Reply:
        """What request `idx` gets this step and how it is marked: None ordinary, False more, True last.
        `streaming`: it has had replies already, so even an error must be marked last (an unmarked reply after
        a stream began is written as a chunk without the stream's end: the client would wait for ever)."""
        grpc = self.came_by_grpc(idx)
        if idx in errors:
            return b"", JSON_TYPE, True if grpc or streaming else None, errors[idx]
        if idx in immediate:
            return immediate[idx].body, immediate[idx].content_type, True if grpc else None, None
        body, done, first, content_type = self.engine.reply(seq_id)
        if grpc:
            return body, content_type, True, None
        return body, content_type, (None if first else True) if done else False, None

    def send(self, replies: List[Reply]) -> List[bytes]:
        stops = {}
        bodies = []
        for idx, (body, content_type, stop, error) in enumerate(replies):
            if error is not None:
                body = self.bounded(error, None)[0].body
                self.context.set_response_status(error.status, reason_phrase(error.message), idx)
            self.context.set_response_content_type(idx, content_type)
            stops[idx] = stop
            bodies.append(body)
        self.mark_streams(stops)
        return bodies

    def report(self, size: int, errors: Dict[int, RequestError]) -> None:
        stats = self.engine.take_stats()
        self.handler_metrics.generation(stats.first_token_ms, stats.per_token_ms, stats.tokens, self.engine.running())
        self.handler_metrics.batch(size, {}, [e.type for e in errors.values()])
