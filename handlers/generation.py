"""Text generation with a KV cache, many sequences decoded together: the pure steps of the `text-generator` kind.

    RunningBatch   the KV cache of every running sequence, left-padded to one length: `prefill` runs new
                   prompts together and merges their caches in, `step` decodes one token for every row,
                   `drop` frees rows; each forward pass is the decoder's (decoders.py: eager or ONNX)
    Sequence       one request's state: its sampling, its tokens, the text it has emitted, why it finished
    sample         the next token of one row: greedy at temperature 0, else transformers' logits warpers

The prompt runs once (prefill), then each step feeds every row its last token and reuses `past_key_values`
(transformers' DynamicCache). Rows of different lengths share one cache by left padding: the attention mask
hides the padding and each row's position ids count only its real tokens, as `generate` does for a padded
batch, so a greedy answer is the same token for token whatever else runs beside it. A request joins between
steps (its cache padded to the batch, or the batch to it) and leaves by dropping its row; columns that only
padding uses are cut then. Pure: imports nothing from `ts`.
"""

import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence as Seq, Tuple

import torch
import torch.nn.functional as F
from transformers import DynamicCache
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from handlers.decoders import Decoder

Tokens = List[int]


@dataclass(frozen=True)
class Sampling:
    temperature: float = 1.0   # 0: greedy
    top_p: float = 1.0
    top_k: int = 0             # 0: off
    seed: Optional[int] = None


def make_generator(sampling: Sampling) -> Optional[torch.Generator]:
    """The sequence's own random stream: seeded when the request says so, so its text repeats."""
    if sampling.temperature == 0:
        return None
    generator = torch.Generator()
    generator.manual_seed(sampling.seed if sampling.seed is not None else int.from_bytes(os.urandom(8), "little") >> 1)
    return generator


def sample(logits: torch.Tensor, sampling: Sampling, generator: Optional[torch.Generator]) -> int:
    """The next token from one row's logits [V]."""
    if sampling.temperature == 0:
        return int(torch.argmax(logits))
    scores = logits.float().cpu().unsqueeze(0)  # a sequence's generator lives on the CPU
    scores = TemperatureLogitsWarper(sampling.temperature)(None, scores)
    if sampling.top_k:
        scores = TopKLogitsWarper(sampling.top_k)(None, scores)
    if sampling.top_p < 1.0:
        scores = TopPLogitsWarper(sampling.top_p)(None, scores)
    probabilities = torch.softmax(scores, dim=-1)
    return int(torch.multinomial(probabilities[0], 1, generator=generator))


@dataclass
class Sequence:
    """One request being generated. `add` takes each new token and says what text it releases."""

    prompt_tokens: int
    max_new: int
    sampling: Sampling
    stop: Tuple[str, ...] = ()
    generator: Optional[torch.Generator] = None
    tokens: Tokens = field(default_factory=list)
    text: str = ""              # the answer so far (cut before a stop string)
    emitted: int = 0            # characters of `text` already released
    finish_reason: Optional[str] = None

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def add(self, token: int, eos_ids: Seq[int], decode) -> str:
        """Take the next token; returns the newly released text (held back while it may begin a stop string
        or ends inside a multi-byte character)."""
        if token in eos_ids:
            self.finish_reason = "stop"
            return self.release(len(self.text))
        self.tokens.append(token)
        self.text = decode(self.tokens)
        cut = first_stop(self.text, self.stop, self.emitted)
        if cut is not None:
            self.text, self.finish_reason = self.text[:cut], "stop"
        elif len(self.tokens) >= self.max_new:
            self.finish_reason = "length"
        if self.done:
            return self.release(len(self.text))
        return self.release(len(self.text) - held_back(self.text, self.stop))

    def finish(self, reason: str) -> str:
        """End it now (a time limit); releases what was held back."""
        self.finish_reason = reason
        return self.release(len(self.text))

    def release(self, upto: int) -> str:
        upto = max(upto, self.emitted)
        piece, self.emitted = self.text[self.emitted:upto], upto
        return piece


def first_stop(text: str, stops: Seq[str], start: int) -> Optional[int]:
    """Where the first stop string begins in `text` (searching from a little before `start`), or None."""
    found = [text.find(s, max(0, start - len(s))) for s in stops]
    found = [i for i in found if i >= 0]
    return min(found) if found else None


def held_back(text: str, stops: Seq[str]) -> int:
    """How many characters at the end of `text` must wait: a stop string's beginning, or an incomplete character."""
    if text.endswith("\ufffd"):  # the tokenizer's replacement for a multi-byte character cut between tokens
        return len(text) - len(text.rstrip("\ufffd"))
    longest = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:n]):
                longest = n
                break
    return longest


class RunningBatch:
    """The KV cache, attention mask, next positions and last tokens of the running sequences, one row each."""

    def __init__(self, decoder: Decoder):
        self.decoder = decoder
        self.device = decoder.device
        self.ids: List[str] = []
        self.cache: Optional[DynamicCache] = None
        self.mask = self.longs((0, 0))        # [B, T]: 1 where a row has a real token
        self.positions = self.longs((0,))     # [B]: the position of each row's next token
        self.last = self.longs((0,))          # [B]: each row's last token, fed at the next step

    def longs(self, shape, fill: int = 0) -> torch.Tensor:
        return torch.full(shape, fill, dtype=torch.long, device=self.device)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def length(self) -> int:
        return self.mask.shape[1]

    def prefill(self, prompts: Dict[str, Tokens]) -> torch.Tensor:
        """Run the prompts together (left-padded to the longest), add their caches as new rows; returns the
        logits [N, V] of each one's first new token, in order. A row's last token is set when the caller has
        sampled it (`set_last`)."""
        longest = max(len(p) for p in prompts.values())
        ids = torch.tensor([[0] * (longest - len(p)) + list(p) for p in prompts.values()], device=self.device)
        mask = torch.tensor([[0] * (longest - len(p)) + [1] * len(p) for p in prompts.values()],
                            device=self.device)
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)  # each row counts its own tokens, as generate does
        logits, cache = self.decoder(ids, mask, positions, None)
        self.merge(list(prompts), cache, mask)
        return logits

    def merge(self, seq_ids: List[str], cache: DynamicCache, mask: torch.Tensor) -> None:
        if self.cache is None or not self.ids:
            self.cache, self.mask = cache, mask
        else:
            if mask.shape[1] < self.length:
                pad_cache(cache, self.length - mask.shape[1])
                mask = F.pad(mask, (self.length - mask.shape[1], 0))
            elif mask.shape[1] > self.length:
                pad_cache(self.cache, mask.shape[1] - self.length)
                self.mask = F.pad(self.mask, (mask.shape[1] - self.length, 0))
            for mine, theirs in zip(self.cache.layers, cache.layers):
                mine.keys = torch.cat([mine.keys, theirs.keys])
                mine.values = torch.cat([mine.values, theirs.values])
            self.mask = torch.cat([self.mask, mask])
        self.ids.extend(seq_ids)
        self.positions = torch.cat([self.positions, mask.sum(dim=1)])
        self.last = torch.cat([self.last, self.longs((len(seq_ids),))])

    def set_last(self, seq_id: str, token: int) -> None:
        self.last[self.ids.index(seq_id)] = token

    def step(self) -> torch.Tensor:
        """One token for every row: feeds each its last token; returns the logits [B, V] of the next ones."""
        self.mask = torch.cat([self.mask, self.longs((len(self.ids), 1), 1)], dim=1)
        logits, self.cache = self.decoder(self.last.unsqueeze(1), self.mask, self.positions.unsqueeze(1),
                                          self.cache)
        self.positions = self.positions + 1
        return logits

    def drop(self, gone: Seq[str]) -> None:
        """Free the rows of `gone` (finished, failed or whose client left) and the columns only padding uses."""
        keep = [i for i, seq_id in enumerate(self.ids) if seq_id not in set(gone)]
        if len(keep) == len(self.ids):
            return
        self.ids = [self.ids[i] for i in keep]
        if not keep:
            self.cache, self.mask = None, self.mask[:0, :0]
            self.positions, self.last = self.positions[:0], self.last[:0]
            return
        rows = torch.tensor(keep, device=self.device)
        self.mask, self.positions, self.last = self.mask[rows], self.positions[rows], self.last[rows]
        start = int(self.mask.shape[1] - self.mask.sum(dim=1).max())  # leading columns that are padding in every row
        self.mask = self.mask[:, start:]
        for layer in self.cache.layers:
            layer.keys = layer.keys[rows, :, start:].contiguous()
            layer.values = layer.values[rows, :, start:].contiguous()

    def cache_bytes(self) -> int:
        if self.cache is None:
            return 0
        return sum(layer.keys.nbytes + layer.values.nbytes for layer in self.cache.layers)


def pad_cache(cache: DynamicCache, n: int) -> None:
    """Left-pad every layer's keys and values [B, H, T, D] by `n` positions (hidden by the attention mask)."""
    for layer in cache.layers:
        layer.keys = F.pad(layer.keys, (0, 0, n, 0))
        layer.values = F.pad(layer.values, (0, 0, n, 0))


def next_tokens(logits: torch.Tensor, sequences: List[Sequence]) -> List[int]:
    """One token per row of `logits` [B, V], each by its own sequence's sampling."""
    greedy = torch.argmax(logits, dim=-1).tolist()
    return [greedy[i] if s.sampling.temperature == 0 else sample(logits[i], s.sampling, s.generator)
            for i, s in enumerate(sequences)]
