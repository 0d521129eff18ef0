"""A bounded LRU of answers inside one worker, keyed by what the model sees. Pure: imports nothing from `ts`.

TorchServe has no response cache (Triton has one). This one sits between decode and the model: the key
is a digest of the model name and version, the decoded item (the image crop the model would see, or
the text's token ids) and every parameter that changes the answer (a request's topk); the value is the
item's JSON-ready result, stored as JSON and read back with json.loads, so a hit is the miss byte for
byte whatever protocol the answer is written in. Only successful results are stored. Bounded by entries
and by stored bytes; the least recently used entries go first. Off (None) unless a model's declaration
sets `handler.cacheEntries`.
"""

import dataclasses
import hashlib
import json
from collections import OrderedDict
from typing import Any, Iterable, Optional

import torch


class ResponseCache:
    def __init__(self, max_entries: int, max_bytes: int, namespace: str):
        self.max_entries, self.max_bytes = max_entries, max_bytes
        self.namespace = namespace.encode("utf-8")  # model name and version: a new version never hits old answers
        self.entries: "OrderedDict[bytes, bytes]" = OrderedDict()
        self.bytes = 0
        self.hits = self.misses = self.evictions = 0

    def key(self, item: Any, parameters: Iterable[Any] = ()) -> bytes:
        digest = hashlib.sha256(self.namespace)  # SHA-NI: ~1 ms for a 224x224 float crop here, blake2b ~3 ms
        _feed(digest, item)
        _feed(digest, tuple(parameters))
        return digest.digest()

    def get(self, key: bytes) -> Optional[Any]:
        stored = self.entries.get(key)
        if stored is None:
            self.misses += 1
            return None
        self.entries.move_to_end(key)
        self.hits += 1
        return json.loads(stored)

    def put(self, key: bytes, result: Any) -> None:
        stored = json.dumps(result, separators=(",", ":")).encode("utf-8")
        if len(stored) > self.max_bytes:
            return  # larger than the whole cache: never stored
        old = self.entries.pop(key, None)
        self.bytes -= len(old) if old is not None else 0
        self.entries[key] = stored
        self.bytes += len(stored)
        while len(self.entries) > self.max_entries or self.bytes > self.max_bytes:
            _, evicted = self.entries.popitem(last=False)
            self.bytes -= len(evicted)
            self.evictions += 1

    def take_counts(self) -> dict:
        """Hits, misses and evictions since the last call (the metrics are counters)."""
        counts = {"CacheHits": self.hits, "CacheMisses": self.misses, "CacheEvictions": self.evictions}
        self.hits = self.misses = self.evictions = 0
        return counts


def _feed(digest, value: Any) -> None:
    """Every part of `value` into the digest, with its type and length, so that no two values collide by
    concatenation ("ab" + "c" vs "a" + "bc", a tensor's bytes under another shape)."""
    if isinstance(value, torch.Tensor):
        data = value.detach().cpu().contiguous()
        digest.update(f"T{data.dtype}{tuple(data.shape)}".encode())
        digest.update(data.numpy().tobytes() if data.dtype != torch.bfloat16 else data.view(torch.int16).numpy().tobytes())
    elif isinstance(value, (list, tuple)):
        digest.update(f"L{len(value)}".encode())
        for part in value:
            _feed(digest, part)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        _feed(digest, tuple(getattr(value, f.name) for f in dataclasses.fields(value)))
    elif isinstance(value, (bytes, bytearray)):
        digest.update(f"B{len(value)}:".encode() + bytes(value))
    else:
        text = repr(value).encode("utf-8")
        digest.update(f"{type(value).__name__}{len(text)}:".encode() + text)
