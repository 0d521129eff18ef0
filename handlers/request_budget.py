"""Per-request budgets, checked before the heavy work (decoding, tokenizing, the forward pass).

One request must not cost a worker more than its share: too many items, too many pixels, too long a
text, or an answer larger than TorchServe's `max_response_size` (the frontend then fails the whole
message and restarts the worker) are each answered 413 for that request alone. The answer size is
bounded from above before the model runs (`answer bytes`), and measured again after encoding.
Pure: imports nothing from `ts`. docs/limits-and-overload.md gives the arithmetic behind the defaults.
"""

import json
from typing import Any, Iterable, Optional, Sequence

from handlers.request_errors import AnswerTooLarge, TextTooLong, TooManyItems, TooManyPixels

# The longest JSON a float takes in an answer: Python's repr of a float32 value widened to a double has at
# most 17 significant digits, e.g. "-1.2345678901234567e-05" (23 characters), then ", " before the next.
JSON_FLOAT_BYTES = 25
# One item's own keys and punctuation ({"embedding": [...], "truncated": false}, a v2 BOOL, ...).
ITEM_OVERHEAD_BYTES = 64
# The envelope of one answer (v2 model_name, model_version, output names, datatypes and shapes),
# without the request's own id, which is echoed and counted on its own.
ENVELOPE_BYTES = 1024
# One prediction besides its label: {"label": , "index": <int>, "probability": <float>}, and a separator.
PREDICTION_OVERHEAD_BYTES = 64 + JSON_FLOAT_BYTES


def check_items(count: int, limit: int) -> None:
    if count > limit:
        raise TooManyItems(f"the request has {count} items; this model takes at most {limit} per request: "
                           f"split it into several requests")


def embedding_item_bytes(width: int) -> int:
    """An upper bound of one embedding's answer: `width` floats as JSON."""
    return width * JSON_FLOAT_BYTES + ITEM_OVERHEAD_BYTES


def label_bytes(labels: Sequence[str]) -> int:
    """The longest label as JSON (quotes and escapes included)."""
    return max((len(json.dumps(label)) for label in labels), default=2)


def predictions_item_bytes(k: int, longest_label: int) -> int:
    """An upper bound of one classifier answer of `k` predictions."""
    return k * (longest_label + PREDICTION_OVERHEAD_BYTES) + ITEM_OVERHEAD_BYTES


def envelope_bytes(request_id: Optional[Any]) -> int:
    return ENVELOPE_BYTES + (len(json.dumps(request_id)) if request_id is not None else 0)


def check_answer_bytes(estimate: int, limit: int) -> None:
    """Refuse before the model runs when the answer's upper bound is above the server's limit."""
    if estimate > limit:
        raise AnswerTooLarge(
            f"the answer would be up to {estimate:,} bytes, above the server's limit of {limit:,} "
            f"(max_response_size): send fewer items per request (or ask for fewer predictions or a shorter id)")


def check_pixels(pixels: Iterable[int], limit: int) -> None:
    total = sum(pixels)
    if total > limit:
        raise TooManyPixels(
            f"the request's images declare {total / 1e6:.1f} megapixels in all; this model takes at most "
            f"{limit / 1e6:g} megapixels per request: send fewer or smaller images per request")


def check_text_chars(text: str, limit: int) -> None:
    if len(text) > limit:
        raise TextTooLong(
            f"the text has {len(text):,} characters; this model takes at most {limit:,} per text (and reads only "
            f"its first tokens): send a shorter text")
