"""A generation request read and checked before any token: the prompt or chat messages and the options.

    read_options(document, limits, openai)  the contract's options (or OpenAI's names for them) -> Options
    read_prompt(document)                    "prompt" (a string) or "messages" (a chat) -> Prompt
Every malformed value is a RequestError naming the field and what it accepts (400), a prompt past the
declaration's cap is 413; nothing here runs the model. Pure: imports nothing from `ts`.
"""

import math
from dataclasses import dataclass
from typing import Any, List, Optional, Tuple

from handlers.generation import Sampling
from handlers.request_errors import EmptyText, InvalidField, RequestError, TextTooLong, shown
from handlers.request_payload import MAX_JSON_INT, json_type_name, unicode_text

ROLES = ("system", "user", "assistant")
MAX_STOPS = 4
MAX_STOP_CHARS = 200


@dataclass(frozen=True)
class Limits:
    """The declaration's caps (handler: maxNewTokens, maxPromptTokens, maxPromptChars) and defaults."""

    max_new_tokens: int
    max_prompt_tokens: int
    max_prompt_chars: int
    default_max_tokens: int


@dataclass(frozen=True)
class Options:
    max_tokens: int
    sampling: Sampling
    stop: Tuple[str, ...] = ()
    stream: bool = False
    include_usage: bool = False   # OpenAI's stream_options.include_usage: a last chunk with the usage


@dataclass(frozen=True)
class Prompt:
    text: Optional[str] = None                 # a plain prompt
    messages: Optional[Tuple[dict, ...]] = None  # or a chat; the model's template is applied


class PromptTooLong(TextTooLong):
    """A prompt over the declaration's maxPromptTokens or maxPromptChars (413)."""


class UnknownRoute(RequestError):
    """A path after /predictions/<model>/<version>/ that this model does not serve."""

    status = 404


def read_prompt(document: dict, field: str = "prompt") -> Prompt:
    """The prompt of a native or completions request ("prompt", or "messages" as a chat)."""
    if "messages" in document and field == "prompt":
        return Prompt(messages=read_messages(document["messages"]))
    if field not in document:
        raise InvalidField(f"the request needs '{field}' (a string)" + (" or 'messages' (a chat)" if field == "prompt" else ""))
    value = document[field]
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str):  # OpenAI's list of one prompt
        value = value[0]
    if not isinstance(value, str):
        raise InvalidField(f"'{field}' must be a string, not {json_type_name(value)}")
    return Prompt(text=checked_text(value, f"'{field}'"))


def read_messages(messages: Any) -> Tuple[dict, ...]:
    if not isinstance(messages, list) or not messages:
        raise InvalidField(f"'messages' must be a non-empty list of {{\"role\", \"content\"}} objects, "
                           f"not {json_type_name(messages)}")
    read = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise InvalidField(f"messages[{i}] must be an object with 'role' and 'content', not {json_type_name(message)}")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise InvalidField(f"messages[{i}].role must be one of {', '.join(ROLES)}, not {shown(role)}")
        if not isinstance(content, str):
            raise InvalidField(f"messages[{i}].content must be a string, not {json_type_name(content)}")
        read.append({"role": role, "content": unicode_text(content, f"messages[{i}].content")})
    if not any(m["content"].strip() for m in read):
        raise EmptyText("the messages are empty: send at least one word")
    return tuple(read)


def checked_text(text: str, what: str) -> str:
    unicode_text(text, what)
    if not text.strip():
        raise EmptyText(f"{what} is empty: send at least one word")
    return text


def check_prompt_size(chars: int, tokens: Optional[int], limits: Limits) -> None:
    if chars > limits.max_prompt_chars:
        raise PromptTooLong(f"the prompt has {chars:,} characters, above this model's limit of "
                            f"{limits.max_prompt_chars:,} (maxPromptChars)")
    if tokens is not None and tokens > limits.max_prompt_tokens:
        raise PromptTooLong(f"the prompt has {tokens:,} tokens, above this model's limit of "
                            f"{limits.max_prompt_tokens:,} (maxPromptTokens): shorten it")


def read_options(document: dict, limits: Limits, openai: bool = False) -> Options:
    """The options of a request; `openai` also reads max_completion_tokens, n and stream_options."""
    max_tokens = document.get("max_tokens")
    if openai and max_tokens is None:
        max_tokens = document.get("max_completion_tokens")
    if openai and document.get("n", 1) != 1:
        raise InvalidField(f"'n' must be 1 (one answer per request), not {shown(document.get('n'))}")
    stream = document.get("stream", False)
    if not isinstance(stream, bool):
        raise InvalidField(f"'stream' must be true or false, not {shown(stream)}")
    return Options(
        max_tokens=read_max_tokens(max_tokens, limits),
        sampling=Sampling(read_number(document, "temperature", 1.0, 0.0, 2.0),
                          read_top_p(document.get("top_p", 1.0)),
                          read_int(document, "top_k", 0, 0), read_seed(document.get("seed"))),
        stop=read_stop(document.get("stop")), stream=stream,
        include_usage=openai and stream and read_include_usage(document.get("stream_options")))


def read_max_tokens(value: Any, limits: Limits) -> int:
    if value is None:
        return min(limits.default_max_tokens, limits.max_new_tokens)
    if not _is_int(value) or value < 1:
        raise InvalidField(f"'max_tokens' must be an integer of at least 1, not {shown(value)}")
    if value > limits.max_new_tokens:
        raise InvalidField(f"'max_tokens' is {value:,}, above this model's limit of {limits.max_new_tokens:,} "
                           f"(maxNewTokens): ask for at most {limits.max_new_tokens:,}")
    return value


def read_number(document: dict, name: str, default: float, low: float, high: float) -> float:
    value = document.get(name, default)
    if value is None:
        return default
    if not _is_number(value) or not low <= value <= high:
        raise InvalidField(f"'{name}' must be a number from {low:g} to {high:g}, not {shown(value)}")
    return float(value)


def read_top_p(value: Any) -> float:
    if value is None:
        return 1.0
    if not _is_number(value) or not 0 < value <= 1:
        raise InvalidField(f"'top_p' must be a number above 0 and at most 1, not {shown(value)}")
    return float(value)


def read_int(document: dict, name: str, default: int, low: int) -> int:
    value = document.get(name, default)
    if value is None:
        return default
    if not _is_int(value) or value < low:
        raise InvalidField(f"'{name}' must be an integer of at least {low}, not {shown(value)}")
    return value


def read_seed(value: Any) -> Optional[int]:
    if value is None:
        return None
    if not _is_int(value) or abs(value) > MAX_JSON_INT:
        raise InvalidField(f"'seed' must be an integer, not {shown(value)}")
    return value % 2**63


def read_stop(value: Any) -> Tuple[str, ...]:
    if value is None:
        return ()
    stops: List[Any] = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not 1 <= len(stops) <= MAX_STOPS:
        raise InvalidField(f"'stop' must be a string or a list of 1 to {MAX_STOPS} strings, not {shown(value)}")
    for stop in stops:
        if not isinstance(stop, str) or not stop or len(stop) > MAX_STOP_CHARS:
            raise InvalidField(f"each 'stop' must be a non-empty string of at most {MAX_STOP_CHARS} characters, "
                               f"not {shown(stop)}")
        unicode_text(stop, "'stop'")
    return tuple(stops)


def read_include_usage(options: Any) -> bool:
    if options is None:
        return False
    if not isinstance(options, dict) or not isinstance(options.get("include_usage", False), bool):
        raise InvalidField(f"'stream_options' must be an object like {{\"include_usage\": true}}, not {shown(options)}")
    return options.get("include_usage", False)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
