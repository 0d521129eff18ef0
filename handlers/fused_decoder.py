"""The decoder of the fused graph (format onnx, built by tskit/fused_graph.py): the KV cache updated in place.

ONNX Runtime's GroupQueryAttention reads a layer's cache and writes the step's new keys and values into it;
with the past and present of a layer bound to one buffer (`io_binding`), a decode step writes one column
instead of copying the whole cache into new outputs, which is what made long contexts slow every row beside
them. RunningBatch (handlers/generation.py) keeps its cache as transformers' DynamicCache: here it holds
views of those buffers. When the batch has changed them (a row joined or left, padding columns were cut),
the next step copies them into fresh buffers once; a buffer has COLUMNS_AHEAD free columns, so it grows by a
copy every that many steps.

Where the build found the weights on a GGUF's 4/8-bit grids it wrote decoder_one_row.onnx beside the graph (the
same weights held in those bits, tskit/exact_bits.py): a step with a single running row runs it (one row is
bound by the bytes of weights it reads), more rows the fp32 graph; both are bound to the same buffers.

Prompts of one length run together; prompts of different lengths run one length at a time rather than
left-padded, because GroupQueryAttention rotates a first prompt's tokens by their column (it reads
`position_ids` only once there is a cache): a padded row would be rotated off its own positions. After that
every row's positions are its own token count (RunningBatch's), as `generate` counts them.
Pure: imports nothing from `ts`.
"""

import json
import os
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from transformers.cache_utils import DynamicCache

from handlers.model_formats import decoder_session


COLUMNS_AHEAD = 64
KEY, VALUE = "past_key_values.{}.key", "past_key_values.{}.value"
ONE_ROW = "decoder_one_row.onnx"  # the GGUF's own 4/8-bit blocks (tskit/exact_bits.py): run for a single row


def config_head_dim(config_file: str) -> int:
    with open(config_file, encoding="utf-8") as f:
        config = json.load(f)
    return config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]


def cache_tensors(cache: DynamicCache) -> List[torch.Tensor]:
    """Every layer's keys, then every layer's values: the order of the buffers and of past_names()."""
    return [layer.keys for layer in cache.layers] + [layer.values for layer in cache.layers]


def is_fused(input_names: List[str]) -> bool:
    return KEY.format(0) in input_names


class FusedOnnxDecoder:
    def __init__(self, path: str, device: torch.device, threads: int):
        self.session = decoder_session(path, device, threads)
        one_row = os.path.join(os.path.dirname(path), ONE_ROW)
        self.one_row = decoder_session(one_row, device, threads) if os.path.isfile(one_row) else None
        self.device = torch.device("cpu")
        inputs = {i.name: i for i in self.session.get_inputs()}
        self.layers = sum(1 for name in inputs if name.startswith("past_key_values.") and name.endswith(".key"))
        _, self.heads, _, self.head_dim = inputs[KEY.format(0)].shape
        if not isinstance(self.head_dim, int):  # the builder names it (kv_cache_dim): the model's config says
            self.head_dim = config_head_dim(os.path.join(os.path.dirname(path), "config.json"))
        self.buffers: List[np.ndarray] = []   # every layer's keys, then every layer's values: [B, H, columns, D]
        self.views: List[torch.Tensor] = []   # what the cache was last given: the buffers' used columns
        self.bindings: List[Tuple[object, object]] = []  # (session, io_binding): the main graph's, the one-row graph's

    def past_names(self) -> List[str]:
        return [KEY.format(i) for i in range(self.layers)] + [VALUE.format(i) for i in range(self.layers)]

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                 cache: Optional[DynamicCache]) -> Tuple[torch.Tensor, DynamicCache]:
        if cache is None:
            return self.prefill(input_ids, attention_mask)
        width = attention_mask.shape[1]
        if not self.holds(cache, width):
            self.adopt(cache, width)
        # a single row: the one-row graph where there is one (bindings[-1] is the main graph's otherwise)
        session, binding = self.bindings[-1] if input_ids.shape[0] == 1 else self.bindings[0]
        binding.bind_cpu_input("input_ids", np.ascontiguousarray(input_ids.numpy()))
        binding.bind_cpu_input("attention_mask", np.ascontiguousarray(attention_mask.numpy()))
        binding.bind_cpu_input("position_ids", np.ascontiguousarray(position_ids.numpy()))
        session.run_with_iobinding(binding)
        logits = torch.from_numpy(binding.get_outputs()[0].numpy()[:, -1])
        self.views = [torch.from_numpy(buffer)[:, :, :width] for buffer in self.buffers]
        for i, layer in enumerate(cache.layers):
            layer.keys, layer.values = self.views[i], self.views[self.layers + i]
        return logits, cache

    def holds(self, cache: DynamicCache, width: int) -> bool:
        """The cache is still the buffers' views (nothing joined, left or was cut) and the new column fits."""
        if not self.views or width > self.buffers[0].shape[2]:
            return False
        return all(t is view for t, view in zip(cache_tensors(cache), self.views))

    def adopt(self, cache: DynamicCache, width: int) -> None:
        """Copy the cache into fresh buffers with room for COLUMNS_AHEAD more steps; bind them in place."""
        tensors = cache_tensors(cache)
        rows, past = tensors[0].shape[0], tensors[0].shape[2]
        self.buffers = []
        for tensor in tensors:
            buffer = np.empty((rows, self.heads, width + COLUMNS_AHEAD, self.head_dim), np.float32)
            buffer[:, :, :past] = tensor.numpy()
            self.buffers.append(buffer)
        self.bind()

    def bind(self) -> None:
        """Each session's binding of the buffers: past and present of a layer are one buffer."""
        import onnxruntime

        values = [onnxruntime.OrtValue.ortvalue_from_numpy(b) for b in self.buffers]  # share the buffers' memory
        self.bindings = []
        for session in filter(None, (self.session, self.one_row)):
            binding = session.io_binding()
            binding.bind_output("logits")  # first: get_outputs()[0]
            for name, value in zip(self.past_names(), values):
                binding.bind_ortvalue_input(name, value)
                binding.bind_ortvalue_output(name.replace("past_key_values", "present"), value)
            self.bindings.append((session, binding))

    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Tuple[torch.Tensor, DynamicCache]:
        """New prompts (left-padded rows), run a length at a time; their caches left-padded to the rows' width."""
        lengths = attention_mask.sum(dim=1).tolist()
        by_length: Dict[int, List[int]] = {}
        for row, length in enumerate(lengths):
            by_length.setdefault(int(length), []).append(row)
        width = input_ids.shape[1]
        logits = [None] * len(lengths)
        layers: List[List[Optional[np.ndarray]]] = [[None] * len(lengths) for _ in range(2 * self.layers)]
        for length, rows in by_length.items():
            out, present = self.run_prompt(input_ids[rows, width - length:].numpy())
            pad = ((0, 0), (0, 0), (width - length, 0), (0, 0))
            for k, row in enumerate(rows):
                logits[row] = out[k]
                for i, tensor in enumerate(present):
                    layers[i][row] = np.pad(tensor[k:k + 1], pad)
        tensors = [torch.from_numpy(np.concatenate(parts)) for parts in layers]
        cache = DynamicCache(ddp_cache_data=list(zip(tensors[:self.layers], tensors[self.layers:])))
        return torch.from_numpy(np.stack(logits)), cache

    def run_prompt(self, ids: np.ndarray) -> Tuple[np.ndarray, List[np.ndarray]]:
        """Equal-length prompts [N, L] from an empty cache: (last logits [N, V], keys then values [N, H, L, D])."""
        rows, length = ids.shape
        feeds = {"input_ids": np.ascontiguousarray(ids, dtype=np.int64),
                 "attention_mask": np.ones((rows, length), np.int64),
                 "position_ids": np.tile(np.arange(length, dtype=np.int64), (rows, 1))}
        empty = np.zeros((rows, self.heads, 0, self.head_dim), np.float32)
        feeds.update((name, empty) for name in self.past_names())
        wanted = ["logits"] + [n.replace("past_key_values", "present") for n in self.past_names()]
        logits, *present = self.session.run(wanted, feeds)
        return logits[:, -1], present
