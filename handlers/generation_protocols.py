"""How a generated answer is framed, one object per protocol (a kind never writes `data: ` itself).

    framing(route, stream, model, request_id)  the Framing of a request
    NativeWhole / NativeStream   the contract's {"text", "finish_reason", "usage"}; streamed as NDJSON lines
    ChatWhole / ChatStream       OpenAI chat.completion; streamed as chat.completion.chunk server-sent events
    CompletionWhole / CompletionStream   OpenAI text_completion, whole or as server-sent events
    V2Whole                      Open Inference Protocol v2: BYTES outputs text and finish_reason, INT64 usage
Each has `content_type`, `chunk(text, first)` (the bytes of one step's new text: b"" for a whole answer,
which is sent once, at the end) and `end(text, result, first)` (the last bytes). The route comes from
TorchServe's `url_path` header (what follows /predictions/<model>/<version>/). Pure: imports nothing from `ts`.
"""

import json
import time
from dataclasses import dataclass
from typing import Optional

from handlers.protocols import JSON_TYPE, ModelInfo, Output, V2Request

NDJSON_TYPE = "application/x-ndjson"
SSE_TYPE = "text/event-stream"
ROUTES = ("", "v1/chat/completions", "v1/completions", "v1/models")


@dataclass(frozen=True)
class Result:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int

    def usage(self) -> dict:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens}


def _json(document: dict) -> bytes:
    return json.dumps(document).encode("utf-8")  # ASCII (\u escapes): right whatever charset a client assumes


def _event(document) -> bytes:
    data = document if isinstance(document, str) else json.dumps(document)
    return f"data: {data}\n\n".encode("utf-8")


class Framing:
    content_type = JSON_TYPE
    streamed = False

    def chunk(self, text: str, first: bool) -> bytes:
        return b""

    def end(self, text: str, result: Result, first: bool) -> bytes:
        raise NotImplementedError


class NativeWhole(Framing):
    def end(self, text: str, result: Result, first: bool) -> bytes:
        usage = {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens}
        return _json({"text": result.text, "finish_reason": result.finish_reason, "usage": usage})


class NativeStream(Framing):
    content_type = NDJSON_TYPE
    streamed = True

    def chunk(self, text: str, first: bool) -> bytes:
        return _json({"text": text}) + b"\n" if text else b""

    def end(self, text: str, result: Result, first: bool) -> bytes:
        usage = {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens}
        return _json({"text": text, "finish_reason": result.finish_reason, "usage": usage}) + b"\n"


@dataclass
class OpenAIFraming(Framing):
    model: str
    request_id: str
    include_usage: bool = False

    def __post_init__(self):
        self.created = int(time.time())

    def envelope(self, kind: str, **fields) -> dict:
        return {"id": self.request_id, "object": kind, "created": self.created, "model": self.model, **fields}


class ChatWhole(OpenAIFraming):
    def end(self, text: str, result: Result, first: bool) -> bytes:
        choice = {"index": 0, "message": {"role": "assistant", "content": result.text},
                  "logprobs": None, "finish_reason": result.finish_reason}
        return _json(self.envelope("chat.completion", choices=[choice], usage=result.usage()))


class ChatStream(OpenAIFraming):
    content_type = SSE_TYPE
    streamed = True

    def delta(self, content: Optional[str], finish_reason: Optional[str], first: bool) -> bytes:
        delta = {"role": "assistant"} if first else {}
        if content is not None:
            delta["content"] = content
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return _event(self.envelope("chat.completion.chunk", choices=[choice]))

    def chunk(self, text: str, first: bool) -> bytes:
        return self.delta(text, None, first) if text or first else b""

    def end(self, text: str, result: Result, first: bool) -> bytes:
        out = self.delta(text, None, first) if text or first else b""
        out += self.delta(None, result.finish_reason, False)
        if self.include_usage:
            out += _event(self.envelope("chat.completion.chunk", choices=[], usage=result.usage()))
        return out + _event("[DONE]")


class CompletionWhole(OpenAIFraming):
    def end(self, text: str, result: Result, first: bool) -> bytes:
        choice = {"index": 0, "text": result.text, "logprobs": None, "finish_reason": result.finish_reason}
        return _json(self.envelope("text_completion", choices=[choice], usage=result.usage()))


class CompletionStream(OpenAIFraming):
    content_type = SSE_TYPE
    streamed = True

    def piece(self, text: str, finish_reason: Optional[str]) -> bytes:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
        return _event(self.envelope("text_completion", choices=[choice]))

    def chunk(self, text: str, first: bool) -> bytes:
        return self.piece(text, None) if text else b""

    def end(self, text: str, result: Result, first: bool) -> bytes:
        out = self.piece(text, result.finish_reason)
        if self.include_usage:
            out += _event(self.envelope("text_completion", choices=[], usage=result.usage()))
        return out + _event("[DONE]")


V2_OUTPUTS = (
    Output("text", "BYTES", lambda r: r["text"], per_item=True),
    Output("finish_reason", "BYTES", lambda r: r["finish_reason"], per_item=True),
    Output("completion_tokens", "INT64", lambda r: r["completion_tokens"], per_item=True),
)


@dataclass
class V2Whole(Framing):
    request: V2Request
    model: ModelInfo

    def end(self, text: str, result: Result, first: bool) -> bytes:
        answer = {"text": result.text, "finish_reason": result.finish_reason,
                  "completion_tokens": result.completion_tokens}
        return self.request.respond([answer], self.model).body


def openai_framing(route: str, stream: bool, model: str, request_id: str, include_usage: bool) -> Framing:
    chat = route == "v1/chat/completions"
    kind = (ChatStream if stream else ChatWhole) if chat else (CompletionStream if stream else CompletionWhole)
    prefix = "chatcmpl-" if chat else "cmpl-"
    return kind(model, prefix + request_id, include_usage)


def models_list(model: str, created: int) -> bytes:
    """OpenAI's GET /v1/models: this one model."""
    return _json({"object": "list", "data": [{"id": model, "object": "model", "created": created,
                                              "owned_by": "torchserve"}]})
