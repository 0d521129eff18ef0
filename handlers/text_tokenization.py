"""Text -> token ids with the model's own Hugging Face tokenizer, and dynamic padding per batch.

Truncation at the model's limit is reported (`truncated`), not silent. A very long text is not
tokenized whole: only a prefix several times longer than the limit needs, grown until it
overflows by a safe margin (tokenizing 1 MB of text whole takes about a second here).
"""

from typing import List, NamedTuple, Tuple

import torch
from tokenizers import Tokenizer

from handlers.request_errors import EmptyText

# Characters per token tried first; the prefix grows 4x while it yields too few tokens.
PREFIX_CHARS_PER_TOKEN = 32
# Overflow tokens required before a cut prefix counts as "surely past the limit": the word cut
# at the prefix's end (at most ~100 word pieces) must lie entirely beyond the kept tokens.
SAFE_OVERFLOW_TOKENS = 128


class TextItem(NamedTuple):
    ids: List[int]
    truncated: bool


def load_tokenizer(path: str, max_tokens: int) -> Tokenizer:
    tokenizer = Tokenizer.from_file(path)
    tokenizer.no_padding()  # padding happens per batch, to the longest item
    tokenizer.enable_truncation(max_tokens)
    return tokenizer


def _overflow_tokens(encoding) -> int:
    return sum(len(o.ids) for o in encoding.overflowing)


def tokenize(tokenizer: Tokenizer, text: str, max_tokens: int) -> TextItem:
    """Ids of `text` truncated to `max_tokens` (special tokens included), and whether it was cut."""
    limit = max_tokens * PREFIX_CHARS_PER_TOKEN
    while True:
        whole = limit >= len(text)
        encoding = tokenizer.encode(text if whole else text[:limit])
        if whole or _overflow_tokens(encoding) >= SAFE_OVERFLOW_TOKENS:
            break
        limit *= 4
    special = sum(encoding.special_tokens_mask)
    if len(encoding.ids) <= special:
        raise EmptyText("the text has no words the tokenizer can read (only spaces or control characters)")
    return TextItem(list(encoding.ids), bool(encoding.overflowing))


def collate_padded(items: List[TextItem], pad_id: int, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) int64 [N, longest]: padded to the longest item of this batch."""
    longest = max(len(item.ids) for item in items)
    ids = torch.full((len(items), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(items), longest), dtype=torch.long)
    for row, item in enumerate(items):
        ids[row, : len(item.ids)] = torch.tensor(item.ids, dtype=torch.long)
        mask[row, : len(item.ids)] = 1
    return ids.to(device, non_blocking=True), mask.to(device, non_blocking=True)


def length_buckets(lengths: List[int], pass_overhead_tokens: int) -> List[List[int]]:
    """Split a batch into sub-batches of similar length, to cut padding waste.

    A forward pass costs about (items x longest length) padded tokens, plus a fixed overhead per
    pass. Sorted by length, the best contiguous split under that cost is found exactly by dynamic
    programming: best[j] = overhead + j*L[j] + min over i < j of (best[i] - i*L[j]). Each i is a line
    of slope -i, queried at L[j], which never decreases, so a lower hull of those lines with a moving
    pointer answers every query in amortised O(1) (the convex hull trick): O(n log n) with the sort,
    where the plain double loop took minutes for 40,000 short texts. Ties keep the earlier cut, as the
    double loop did. Returns lists of indices into `lengths`, shortest first.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    n = len(order)
    best = [0] * (n + 1)  # best[j]: cost of the first j sorted items
    cut = [0] * (n + 1)   # cut[j]: where the last pass of that best split starts
    hull: List[int] = []  # candidate cuts i whose lines can still be the lowest, slopes decreasing
    head = 0              # the hull's lowest line at the current length
    for j in range(1, n + 1):
        _add_line(hull, best, j - 1)
        head = min(head, len(hull) - 1)
        longest = lengths[order[j - 1]]
        while head + 1 < len(hull) and _line(best, hull[head + 1], longest) < _line(best, hull[head], longest):
            head += 1
        cut[j] = hull[head]
        best[j] = _line(best, cut[j], longest) + j * longest + pass_overhead_tokens
    groups, j = [], n
    while j > 0:
        groups.append(order[cut[j]:j])
        j = cut[j]
    return groups[::-1]


def _line(best: List[int], i: int, x: int) -> int:
    return best[i] - i * x


def _add_line(hull: List[int], best: List[int], i: int) -> None:
    """Push line i, first dropping the last line where it is never strictly lowest (integers: exact)."""
    while len(hull) >= 2:
        a, b = hull[-2], hull[-1]
        # b is useless when i overtakes a no later than b does: (best[i]-best[a])/(i-a) <= (best[b]-best[a])/(b-a)
        if (best[i] - best[a]) * (b - a) <= (best[b] - best[a]) * (i - a):
            hull.pop()
        else:
            break
    hull.append(i)
