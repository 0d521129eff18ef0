"""A request's patience: one that waited longer than its client will is answered 503 without the model.

TorchServe 0.12 cannot drop a queued request whose client has given up: `clientTimeoutInMills` is read
only by its continuous-batching aggregator, and there it drops the answer after the worker did the work.
A client (or the proxy in front) that stamps its requests lets the handler do it, before any decoding:

    X-Request-Start: t=<time the request entered the system>   nginx `t=${msec}` (seconds with a fraction),
                                                                Heroku / New Relic (milliseconds or
                                                                microseconds since the epoch), or a bare number
    X-Request-Timeout-Ms: <patience>                            optional; default: the model's handler.maxQueueMs

A request without `X-Request-Start` is always served. Clocks: the stamp is compared with the worker's own
clock, so it must come from a host that keeps time with it (the same host, or NTP-synced ones). Pure:
imports nothing from `ts`.
"""

import math
import re
from typing import Callable, Optional

from handlers.request_errors import InvalidField, RequestExpired

START_HEADER = "x-request-start"
TIMEOUT_HEADER = "x-request-timeout-ms"
# A stamp is read as seconds, milliseconds or microseconds since the epoch by its size: these bounds
# are the years 2001 and 2286 in each unit.
SECONDS_RANGE = (1e9, 1e10)
NUMBER = re.compile(r"^\s*(?:t=)?\s*(\d{1,20}(?:\.\d{1,9})?)\s*$")


def started_at(value: str) -> float:
    """Seconds since the epoch from an X-Request-Start value; InvalidField when it is not one."""
    match = NUMBER.match(value or "")
    if not match:
        raise InvalidField("X-Request-Start must be t=<seconds, milliseconds or microseconds since the epoch>")
    number = float(match.group(1))
    for scale in (1.0, 1e3, 1e6):
        if SECONDS_RANGE[0] <= number / scale < SECONDS_RANGE[1]:
            return number / scale
    raise InvalidField("X-Request-Start is not a time since the epoch in seconds, milliseconds or microseconds")


def patience_ms(value: Optional[str], default_ms: int) -> int:
    if value is None:
        return default_ms
    if not re.fullmatch(r"\s*\d{1,9}\s*", value):
        raise InvalidField("X-Request-Timeout-Ms must be a whole number of milliseconds (at most 9 digits)")
    return int(value)


def check_deadline(header: Callable[[str], Optional[str]], default_ms: int, now: float) -> None:
    """RequestExpired when the request waited past its patience; `header(name)` reads a request header
    whatever the case of its name (BatchHandler.request_header); `default_ms` <= 0 with no X-Request-Timeout-Ms: never expires."""
    start = header(START_HEADER)
    if start is None:
        return
    patience = patience_ms(header(TIMEOUT_HEADER), default_ms)
    waited_ms = (now - started_at(start)) * 1e3
    if patience > 0 and math.isfinite(waited_ms) and waited_ms > patience:
        raise RequestExpired(f"the request waited {waited_ms:,.0f} ms, longer than its patience of {patience:,} ms "
                             f"(X-Request-Timeout-Ms or the model's maxQueueMs): it was not run; retry later")
