"""One forward pass of a causal LM with its KV cache, in either serving format; what RunningBatch calls.

    decoder(input_ids, attention_mask, position_ids, cache) -> (logits [B, V] of each row's last position, cache)

`cache` is transformers' DynamicCache (None for a prefill): RunningBatch pads, joins and cuts its layers'
keys and values [B, H, T, D] the same way whichever format made them.
    TorchDecoder   the Hugging Face model, eager PyTorch (format `transformers`)
    OnnxDecoder    the same forward exported with the cache as inputs and outputs (format `onnx`, for an
                   architecture ONNX Runtime GenAI's builder has no recipe for: tskit/causal_lm.py), run by
                   ONNX Runtime: per decode step ~2x faster than eager on a CPU (docs/generation.md), where a
                   135M model's step is mostly per-operator overhead
    FusedOnnxDecoder  (fused_decoder.py) the builder's fused graph (format `onnx`), its cache updated in place
Pure: imports nothing from `ts`.
"""

import os
from typing import List, Optional, Protocol, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from transformers.cache_utils import DynamicCache

from handlers.model_formats import decoder_session


ONNX_FILE = "decoder.onnx"
# the exported graph's inputs: input_ids, attention_mask, position_ids, then one `past_keys_<i>` and one
# `past_values_<i>` a layer; its outputs: the last position's logits, every layer's keys, every layer's values
PACKED = "packed_gqa"  # the attention the graph is exported with (packed_gqa_attention)

Step = Tuple[torch.Tensor, DynamicCache]


class Decoder(Protocol):
    device: torch.device

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                 cache: Optional[DynamicCache]) -> Step: ...


class TorchDecoder:
    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.device = next(model.parameters()).device  # a GPU worker keeps its cache and masks there too

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                 cache: Optional[DynamicCache]) -> Step:
        with torch.inference_mode():
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                             past_key_values=cache if cache is not None else DynamicCache(), use_cache=True,
                             logits_to_keep=1)
        return out.logits[:, -1], out.past_key_values


class OnnxDecoder:
    def __init__(self, path: str, device: torch.device, threads: int):
        self.session = decoder_session(path, device, threads)
        self.device = torch.device("cpu")
        past = [i for i in self.session.get_inputs() if i.name.startswith("past_keys_")]
        self.layers = len(past)
        _, self.heads, _, self.head_dim = past[0].shape  # [batch, kv heads, past, head dim]: heads and dim fixed
        self.names = [i.name for i in self.session.get_inputs()]

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                 cache: Optional[DynamicCache]) -> Step:
        if cache is None:
            empty = np.zeros((input_ids.shape[0], self.heads, 0, self.head_dim), np.float32)
            keys, values = [empty] * self.layers, [empty] * self.layers
        else:
            keys = [np.ascontiguousarray(layer.keys.numpy()) for layer in cache.layers]
            values = [np.ascontiguousarray(layer.values.numpy()) for layer in cache.layers]
        feeds = [input_ids.numpy(), attention_mask.numpy(), position_ids.numpy()] + keys + values
        logits, *present = self.session.run(None, dict(zip(self.names, feeds)))
        tensors = [torch.from_numpy(t) for t in present]
        new_keys, new_values = tensors[:self.layers], tensors[self.layers:]
        if cache is None:
            return torch.from_numpy(logits), DynamicCache(ddp_cache_data=list(zip(new_keys, new_values)))
        for layer, k, v in zip(cache.layers, new_keys, new_values):
            layer.keys, layer.values = k, v
        return torch.from_numpy(logits), cache


def load_decoder(model_file: str, model_format: str, device: torch.device, threads: int, dtype: str):
    """The archive's decoder: `model_file` is its weights file (safetensors) or its decoder.onnx."""
    if model_format == "onnx":
        return onnx_decoder(model_file, device, threads)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(os.path.dirname(model_file), dtype=getattr(torch, dtype),
                                                 local_files_only=True)
    return TorchDecoder(model.to(device).eval())


def onnx_decoder(path: str, device: torch.device, threads: int):
    """The decoder for an archive's decoder.onnx: ONNX Runtime GenAI's fused graph (its cache inputs are named
    past_key_values.<i>.key) or the forward exported by torch.onnx (export_onnx)."""
    import onnx

    from handlers.fused_decoder import FusedOnnxDecoder, is_fused

    names = [i.name for i in onnx.load(path, load_external_data=False).graph.input]
    return (FusedOnnxDecoder if is_fused(names) else OnnxDecoder)(path, device, threads)


def export_inputs(config, batch: int = 2, new: int = 3, past: int = 5) -> Tuple[tuple, dict]:
    """Sample inputs and dynamic shapes for exporting a model's forward with its cache (tskit/causal_lm.py)."""
    layers = config.num_hidden_layers
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    kv: List[torch.Tensor] = [torch.randn(batch, heads, past, head_dim) for _ in range(layers)]
    args = (torch.randint(0, 100, (batch, new)), torch.ones(batch, past + new, dtype=torch.long),
            torch.arange(past, past + new).repeat(batch, 1), kv, [t.clone() for t in kv])
    auto = torch.export.Dim.AUTO
    shapes = {"input_ids": {0: auto, 1: auto}, "attention_mask": {0: auto, 1: auto},
              "position_ids": {0: auto, 1: auto}, "past_keys": [{0: auto, 2: auto}] * layers,
              "past_values": [{0: auto, 2: auto}] * layers}
    return args, shapes


class ExportedStep(torch.nn.Module):
    """The forward that is exported: cache tensors in, last logits and the grown cache tensors out."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, position_ids, past_keys, past_values):
        cache = DynamicCache(ddp_cache_data=list(zip(past_keys, past_values)))
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         past_key_values=cache, use_cache=True, logits_to_keep=1)
        layers = out.past_key_values.layers
        return out.logits[:, -1], [layer.keys for layer in layers], [layer.values for layer in layers]


def packed_gqa_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """Grouped-query attention without repeating the cache: each key/value head attends for its group of query
    heads at once ([B, H, T, D] -> [B, KV, H/KV x T, D]). transformers' SDPA path repeats the keys and values
    (`repeat_kv`) whenever it is traced; in the exported graph that copy, and the transpose after it, cost more
    than the matrix products at batch 16 and grew with the context. The same arithmetic: a tiny Llama's logits
    are bit for bit those of SDPA (tests/unit/test_generation.py)."""
    b, h, t, d = query.shape
    groups = h // key.shape[1]
    q = query.reshape(b, key.shape[1], groups * t, d)
    mask = attention_mask
    if mask is not None:  # [B, 1, T, P] -> one row per (group member, position)
        mask = mask[:, :, None].expand(b, 1, groups, t, mask.shape[-1]).reshape(b, 1, groups * t, mask.shape[-1])
    out = F.scaled_dot_product_attention(q, key, value, attn_mask=mask, scale=scaling)
    return out.reshape(b, h, t, d).transpose(1, 2).contiguous(), None


def packed_mask(*args, **kwargs):
    """transformers' SDPA mask, always made: packed rows cannot use SDPA's own causal flag."""
    from transformers.masking_utils import sdpa_mask

    kwargs["allow_is_causal_skip"] = False
    return sdpa_mask(*args, **kwargs)


def use_packed_gqa(model: torch.nn.Module) -> bool:
    """Switch a grouped-query model to packed_gqa_attention; False (unchanged) for one without groups."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    config = model.config
    kv_heads = getattr(config, "num_key_value_heads", None)
    if not kv_heads or kv_heads >= config.num_attention_heads:
        return False
    AttentionInterface.register(PACKED, packed_gqa_attention)
    AttentionMaskInterface.register(PACKED, packed_mask)
    model.set_attn_implementation(PACKED)
    return True


def export_onnx(model: torch.nn.Module, folder: str) -> str:
    """Export `model`'s forward with its cache as inputs and outputs to folder/decoder.onnx (+ .data), grouped-
    query attention packed; the build (tskit/causal_lm.py) checks its greedy text against the model before it
    is served. The model's own attention is restored afterwards."""
    before = model.config._attn_implementation
    packed = use_packed_gqa(model)
    try:
        args, shapes = export_inputs(model.config)
        program = torch.onnx.export(ExportedStep(model.eval()).eval(), args, dynamic_shapes=shapes, dynamo=True,
                                    optimize=True, verbose=False)
    finally:
        if packed:
            model.set_attn_implementation(before)
    path = os.path.join(folder, ONNX_FILE)
    program.save(path, external_data=True)
    return path
