"""The generation engine of one worker: a table of live requests over one RunningBatch, stepped per call.

TorchServe's continuous batching calls the handler once per step with every running request plus new
ones; the engine keeps each request's state by its id between calls:
    forget(ids)          requests TorchServe stopped sending (their clients left): rows and caches freed now
    start(id, ...)       a new request: checked, its prompt waits for this call's prefill
    prefill()            the waiting prompts run together (a group at a time), each samples its first token
    step()               one token for every running row; a request whose time is up ends ("length")
    reply(id)            the bytes this call produced for it and whether it is done
A request marked `in_call` (gRPC, KServe v2: they cannot be streamed) runs to its end within the call
that started it, the others advancing beside it (their next reply carries several tokens).
Pure: imports nothing from `ts`.
"""

import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Sequence as Seq, Tuple

import torch

from handlers.decoders import Decoder
from handlers.generation import RunningBatch, Sequence, make_generator, next_tokens, sample
from handlers.generation_protocols import Framing, Result
from handlers.generation_request import Options

Decode = Callable[[List[int]], str]


@dataclass
class Live:
    """One request between calls: its sequence, how its answer is framed, what this call has for it."""

    sequence: Sequence
    framing: Framing
    in_call: bool
    started: float
    deadline: float
    first_token_s: Optional[float] = None
    out: bytearray = field(default_factory=bytearray)
    replies: int = 0          # replies already sent (0: the next one is the first)

    def produce(self, piece: str) -> None:
        first = self.replies == 0 and not self.out  # nothing of the answer made yet (OpenAI's role chunk)
        if self.sequence.done:
            result = Result(self.sequence.text, self.sequence.finish_reason, self.sequence.prompt_tokens,
                            len(self.sequence.tokens))
            self.out += self.framing.end(piece, result, first)
        else:
            self.out += self.framing.chunk(piece, first)


@dataclass
class Stats:
    """What the metrics report, per call: first-token times (ms), per-token times (ms), tokens made."""

    first_token_ms: List[float] = field(default_factory=list)
    per_token_ms: List[float] = field(default_factory=list)
    tokens: int = 0


class Engine:
    def __init__(self, decoder: Decoder, decode: Decode, eos_ids: Seq[int], max_seconds: float,
                 call_seconds: Optional[float] = None, prefill_tokens: int = 2048,
                 clock: Callable[[], float] = time.perf_counter):
        self.batch = RunningBatch(decoder)
        # padded tokens one prefill may run: a group of prompts never needs more memory than the longest prompt
        # a request may send runs alone (the prompt cap)
        self.prefill_tokens = prefill_tokens
        self.pending: Dict[str, List[int]] = {}
        self.decode, self.eos_ids, self.max_seconds, self.clock = decode, tuple(eos_ids), max_seconds, clock
        # an `in_call` answer is made within one handler call, which TorchServe's responseTimeout bounds (a worker
        # past it is restarted): such an answer ends ("length") once this much of the call has gone
        self.call_seconds = call_seconds or max_seconds
        self.table: Dict[str, Live] = {}
        self.stats = Stats()

    def forget(self, ids: Iterable[str]) -> None:
        gone = [i for i in ids if i in self.table]
        for seq_id in gone:
            del self.table[seq_id]
        self.batch.drop(gone)

    def start(self, seq_id: str, prompt: List[int], options: Options, framing: Framing, in_call: bool) -> None:
        now = self.clock()
        sequence = Sequence(len(prompt), options.max_tokens, options.sampling, options.stop,
                            make_generator(options.sampling))
        seconds = min(self.max_seconds, self.call_seconds) if in_call else self.max_seconds
        live = Live(sequence, framing, in_call, now, now + seconds)
        self.table[seq_id] = live
        self.pending[seq_id] = prompt

    def prefill(self) -> Dict[str, Exception]:
        """Prefill every waiting prompt, a group at a time; a group whose forward pass fails is run again one
        request at a time, so an error fails only the request that causes it. Returns the failed ids (already
        forgotten)."""
        failed: Dict[str, Exception] = {}
        work, self.pending = prefill_groups(self.pending, self.prefill_tokens), {}
        while work:
            group = work.pop(0)
            try:
                logits = self.batch.prefill(group)
            except Exception as err:  # noqa: BLE001 - isolated here, reported by the caller
                if len(group) > 1:
                    work[:0] = [{seq_id: prompt} for seq_id, prompt in group.items()]
                else:
                    failed.update(dict.fromkeys(group, err))
                continue
            for row, seq_id in enumerate(group):
                try:
                    self.first_token(seq_id, logits[row])
                except Exception as err:  # noqa: BLE001
                    failed[seq_id] = err
        self.forget(failed)
        return failed

    def first_token(self, seq_id: str, logits: torch.Tensor) -> None:
        live = self.table[seq_id]
        token = sample(logits, live.sequence.sampling, live.sequence.generator)
        live.first_token_s = self.clock() - live.started
        self.stats.first_token_ms.append(live.first_token_s * 1e3)
        self.take(seq_id, token)

    def take(self, seq_id: str, token: int) -> None:
        live = self.table[seq_id]
        live.produce(live.sequence.add(token, self.eos_ids, self.decode))
        self.stats.tokens += 1
        if not live.sequence.done:
            self.batch.set_last(seq_id, token)
            if self.clock() > live.deadline:
                live.produce(live.sequence.finish("length"))
        if live.sequence.done:
            self.batch.drop([seq_id])

    def step(self) -> None:
        """One token for every running row."""
        if not len(self.batch):
            return
        started = self.clock()
        rows = list(self.batch.ids)
        tokens = next_tokens(self.batch.step(), [self.table[i].sequence for i in rows])
        self.stats.per_token_ms.append((self.clock() - started) * 1e3)
        for seq_id, token in zip(rows, tokens):
            self.take(seq_id, token)

    def run_in_call(self, ids: Seq[str]) -> None:
        """Step until every `in_call` request among `ids` is done (gRPC and v2 answers are whole); prefilled
        already."""
        while any(i in self.table and self.table[i].in_call and not self.table[i].sequence.done for i in ids):
            self.step()

    def reply(self, seq_id: str) -> Tuple[bytes, bool, bool, str]:
        """(bytes for this call, done, first reply, content type) for a running request; a done one leaves
        the table."""
        live = self.table[seq_id]
        body, first = bytes(live.out), live.replies == 0
        live.out.clear()
        live.replies += 1
        done = live.sequence.done
        if done:
            del self.table[seq_id]
        return body, done, first, live.framing.content_type

    def take_stats(self) -> Stats:
        stats, self.stats = self.stats, Stats()
        return stats

    def running(self) -> int:
        return len(self.batch)

    def cache_bytes(self) -> int:
        return self.batch.cache_bytes()


def prefill_groups(prompts: Dict[str, List[int]], budget: int) -> List[Dict[str, List[int]]]:
    """Prompts in arrival order, grouped while rows x the longest prompt stays within `budget` tokens."""
    groups: List[Dict[str, List[int]]] = []
    longest = 0
    for seq_id, prompt in prompts.items():
        widest = max(longest, len(prompt))
        if groups and (len(groups[-1]) + 1) * widest <= budget:
            groups[-1][seq_id], longest = prompt, widest
        else:
            groups.append({seq_id: prompt})
            longest = len(prompt)
    return groups
