"""Weights that a GGUF stored in 4 or 8 bits, held in 4 or 8 bits again, exactly: the one-row decoder graph.

A model read from a GGUF is dequantised to fp32 by transformers, so an fp32 graph reads ~4 bytes a weight where
llama.cpp reads ~0.6. One decode row is bound by those bytes. Their values still lie on the GGUF's grids:
    Q4_1   w = d * q + m   per block of 32 along the input, q in 0..15 (d, m per block)
    Q8_0   w = d * q       per block of 32, q in -127..127
`one_row_graph` rewrites each MatMul whose constant weights lie on such a grid (checked, not assumed) as ONNX
Runtime's MatMulNBits holding the same q and d:
    Q4_1   MatMulNBits(x, q, d, zero point 0) + blocksum(x) @ M   (M: each block's m; MatMulNBits has no
           float zero points on the CPU's fast path, so m is added as its own small product)
    Q8_0   MatMulNBits(x, q + 128, d, zero point 128), 8 bits
The 4-bit products compute in fp32 (accuracy_level 0: the same dequantised weights); the 8-bit one, the LM head,
quantises its input to int8 (accuracy_level 4). It is served only for a single running row, where it measured
~1.5x faster; with more rows the fp32 graph is faster (docs/generation.md). The build checks its greedy text
like the main graph's. Weights on no grid stay as they are; a model with none gets no one-row graph.
Build time only.
"""

from typing import Dict, List, Optional, Tuple

import numpy as np

BLOCK = 32
Q4_ACCURACY, Q8_ACCURACY = 0, 4
PREFIX = "bits/"


def blocks_of(w: np.ndarray) -> np.ndarray:
    """w [K, N] -> [N, K/32, 32]: each output's weights in the GGUF's blocks along the input."""
    k, n = w.shape
    return w.T.reshape(n, k // BLOCK, BLOCK).astype(np.float64)


def q4_1_grid(w: np.ndarray) -> Optional[Tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """w [K, N] -> (q [N, K/32, 32] uint8, d [N, K/32], m [N, K/32]) when every block is d * q + m exactly."""
    blocks = blocks_of(w)
    low, high = blocks.min(-1), blocks.max(-1)
    d = (high - low) / 15
    d[d == 0] = 1
    q = np.rint((blocks - low[..., None]) / d[..., None])
    if np.abs(q * d[..., None] + low[..., None] - blocks).max() > 1e-6 * (np.abs(blocks).max() + 1e-30):
        return None
    return q.astype(np.uint8), d.astype(np.float32), low.astype(np.float32)


def q8_0_grid(w: np.ndarray) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    """w [K, N] -> (q + 128 [N, K/32, 32] uint8, d [N, K/32]) when every block is d * q exactly, |q| <= 127."""
    blocks = blocks_of(w)
    d = np.abs(blocks).max(-1) / 127
    d[d == 0] = 1
    q = np.rint(blocks / d[..., None])
    if np.abs(q * d[..., None] - blocks).max() > 1e-6 * (np.abs(blocks).max() + 1e-30):
        return None
    return (q + 128).astype(np.uint8), d.astype(np.float32)


def nbits_node(x: str, y: str, name: str, k: int, n: int, bits: int, accuracy: int):
    from onnx import helper

    return helper.make_node("MatMulNBits", [x, name + "_q", name + "_d", name + "_zp"], [y], domain="com.microsoft",
                            K=k, N=n, bits=bits, block_size=BLOCK, accuracy_level=accuracy)


def rewrite(node, w: np.ndarray, blocksums: Dict[str, str]) -> Optional[Tuple[List, List]]:
    """(new nodes, new initializers) for one MatMul, or None when its weights lie on no grid."""
    from onnx import helper, numpy_helper

    k, n = w.shape
    x, y, name = node.input[0], node.output[0], PREFIX + node.input[1]
    if k % BLOCK:
        return None
    grid4 = q4_1_grid(w)
    if grid4 is not None:
        q, d, m = grid4
        packed = q[..., 0::2] | (q[..., 1::2] << 4)  # two 4-bit values a byte, the first in the low half
        zero = np.zeros(n * ((k // BLOCK + 1) // 2), np.uint8)
        nodes = []
        if x not in blocksums:
            blocksums[x] = PREFIX + x + "/blocksum"
            nodes += [helper.make_node("Reshape", [x, PREFIX + "blocks"], [PREFIX + x + "/blocks"]),
                      helper.make_node("ReduceSum", [PREFIX + x + "/blocks", PREFIX + "last"], [blocksums[x]],
                                       keepdims=0)]
        nodes += [nbits_node(x, y + "/q", name, k, n, 4, Q4_ACCURACY),
                  helper.make_node("MatMul", [blocksums[x], name + "_m"], [y + "/m"]),
                  helper.make_node("Add", [y + "/q", y + "/m"], [y])]
        return nodes, [numpy_helper.from_array(array, name + suffix) for array, suffix in
                       ((packed, "_q"), (d.reshape(-1), "_d"), (zero, "_zp"), (m.T.copy(), "_m"))]
    grid8 = q8_0_grid(w)
    if grid8 is not None:
        q, d = grid8
        zero = np.full(n * (k // BLOCK), 128, np.uint8)
        return [nbits_node(x, y, name, k, n, 8, Q8_ACCURACY)], [
            numpy_helper.from_array(q, name + "_q"), numpy_helper.from_array(d.reshape(-1), name + "_d"),
            numpy_helper.from_array(zero, name + "_zp")]
    return None


def one_row_graph(model, base_dir: str) -> int:
    """Rewrite `model` (an onnx ModelProto whose weights are external data in base_dir) in place; returns how
    many MatMuls now hold their weights in 4 or 8 bits (0: none lay on a grid, the model is unchanged). The
    weights it keeps still name the main graph's data file, so the one-row graph adds only its own bits."""
    from onnx import helper, numpy_helper

    graph = model.graph
    constants = {t.name: t for t in graph.initializer}
    blocksums: Dict[str, str] = {}
    nodes, added, rewritten = [], [], 0
    for node in graph.node:
        done = None
        if node.op_type == "MatMul" and node.input[1] in constants:
            done = rewrite(node, numpy_helper.to_array(constants[node.input[1]], base_dir), blocksums)
        if done is None:
            nodes.append(node)
            continue
        nodes += done[0]
        added += done[1]
        rewritten += 1
    if not rewritten:
        return 0
    added += [numpy_helper.from_array(np.array([0, 0, -1, BLOCK], np.int64), PREFIX + "blocks"),
              numpy_helper.from_array(np.array([-1], np.int64), PREFIX + "last")]
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(added)
    used = {name for node in graph.node for name in node.input}
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return rewritten
