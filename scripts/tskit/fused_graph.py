"""A causal LM's Hugging Face folder -> the fused decoder graph a text-generator archive serves (format onnx).

    build_fused(folder, out_dir)   ONNX Runtime GenAI's model builder (fp32, CPU) writes the model with ONNX
                                   Runtime's fused operators: GroupQueryAttention (rotary embedding and the
                                   cache update inside it), SkipSimplifiedLayerNormalization, one MatMul for q,
                                   k and v; `adapt` fits it to the serving batch; returns out_dir/decoder.onnx,
                                   or raises FusedUnavailable (an architecture the builder has no recipe for:
                                   the caller exports the model's forward with torch.onnx instead); and
                                   decoder_one_row.onnx beside it where the weights lie on a GGUF's 4/8-bit
                                   grids (tskit/exact_bits.py: the decoder runs it for a single row)
    adapt(model)                   the graph edits, in place:
      - the rows of handlers/generation.py's RunningBatch are left-padded to one width: GroupQueryAttention is
        told every row is that wide (seqlens = width - 1) and the padding is hidden by an additive bias made
        from `attention_mask` (0 for a token, the float minimum for padding);
      - rotary positions come from a new input `position_ids` (each row counts its own tokens);
      - only the last position goes through the LM head (a prefill's other logits are never read).
The decoder that runs it (the cache updated in place) is handlers/fused_decoder.py. Build time only.
"""

import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np

from handlers.decoders import ONNX_FILE as OUT
from handlers.fused_decoder import ONE_ROW
from tskit.exact_bits import one_row_graph
from tskit.sources import SourceError

PREFIX = "fit/"  # names of the nodes adapt() adds


class FusedUnavailable(SourceError):
    pass


def build_fused(folder: str, out_dir: str, timeout_s: int = 1800) -> str:
    import onnx

    with tempfile.TemporaryDirectory(prefix="ortgenai-") as work:
        command = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", folder, "-o",
                   os.path.join(work, "out"), "-p", "fp32", "-e", "cpu", "-c", os.path.join(work, "cache")]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
        graph = os.path.join(work, "out", "model.onnx")
        if done.returncode != 0 or not os.path.isfile(graph):
            raise FusedUnavailable(f"ONNX Runtime GenAI's model builder could not build {folder}: "
                                   f"{(done.stderr or done.stdout).strip()[-400:]}")
        model = onnx.load(graph)
        adapt(model)
        path = os.path.join(out_dir, OUT)
        onnx.save(model, path, save_as_external_data=True, location=OUT + ".data")
        shutil.rmtree(os.path.join(work, "out"), ignore_errors=True)
    one_row = onnx.load(path, load_external_data=False)
    if one_row_graph(one_row, out_dir):
        onnx.save(one_row, os.path.join(out_dir, ONE_ROW), save_as_external_data=True, location=ONE_ROW + ".data")
    return path


def constant(name: str, value) -> "onnx.NodeProto":
    from onnx import helper, numpy_helper

    value = numpy_helper.from_array(np.array(value), PREFIX + name)
    return helper.make_node("Constant", [], [PREFIX + name], value=value)


def node(op: str, inputs, output: str, **attributes) -> "onnx.NodeProto":
    from onnx import helper

    return helper.make_node(op, [i if i in ("attention_mask", "input_ids") or i.startswith("/") else PREFIX + i
                                 for i in inputs], [PREFIX + output], **attributes)


def full_width_nodes() -> list:
    """ones shaped like attention_mask: its row sums (the builder's seqlens) become the full width."""
    return [constant("zero", np.int64(0)), constant("one", np.int64(1)),
            node("Mul", ["attention_mask", "zero"], "zeros"), node("Add", ["zeros", "one"], "ones")]


def bias_nodes() -> list:
    """[B, 1, S, T]: 0 where attention_mask is 1, the float minimum where it is 0 (finite: padded rows stay
    finite, and exp(minimum - max) is 0 in float32)."""
    from onnx import TensorProto

    return [node("Cast", ["attention_mask"], "maskf", to=TensorProto.FLOAT),
            constant("onef", np.float32(1)), constant("minf", np.float32(np.finfo(np.float32).min)),
            node("Sub", ["onef", "maskf"], "hidden"), node("Mul", ["hidden", "minf"], "bias2"),
            constant("axes12", np.array([1, 2], np.int64)), node("Unsqueeze", ["bias2", "axes12"], "bias4"),
            node("Shape", ["input_ids"], "ids_shape"), node("Shape", ["attention_mask"], "mask_shape"),
            constant("i0", np.array([0], np.int64)), constant("i1", np.array([1], np.int64)),
            node("Gather", ["ids_shape", "i0"], "B"), node("Gather", ["ids_shape", "i1"], "S"),
            node("Gather", ["mask_shape", "i1"], "T"), node("Concat", ["B", "i1", "S", "T"], "bias_shape", axis=0),
            node("Expand", ["bias4", "bias_shape"], "bias")]


def adapt(model) -> None:
    from onnx import TensorProto, helper

    graph = model.graph
    nodes = list(graph.node)
    sums = [n for n in nodes if n.op_type == "ReduceSum" and n.input[0] == "attention_mask"]
    attention = [n for n in nodes if n.op_type == "GroupQueryAttention"]
    head = [n for n in nodes if list(n.output) == ["logits"]]
    if len(sums) != 1 or not attention or len(head) != 1:
        raise FusedUnavailable("the builder's graph is not the one this package adapts (one ReduceSum of "
                               "attention_mask, GroupQueryAttention, one node making logits)")
    sums[0].input[0] = PREFIX + "ones"
    for n in attention:  # inputs 9 and 10: position_ids, attention_bias
        n.input.extend([""] * (11 - len(n.input)))
        n.input[9], n.input[10] = "position_ids", PREFIX + "bias"
    last = [constant("minus1", np.array([-1], np.int64)), constant("end", np.array([2 ** 62], np.int64)),
            constant("axis1", np.array([1], np.int64)),
            helper.make_node("Slice", [head[0].input[0], PREFIX + "minus1", PREFIX + "end", PREFIX + "axis1"],
                             [PREFIX + "last"])]
    head[0].input[0] = PREFIX + "last"
    at = list(graph.node).index(head[0])
    for i, added in enumerate(last):  # kept in topological order: just before the head
        graph.node.insert(at + i, added)
    for i, added in enumerate(full_width_nodes() + bias_nodes()):
        graph.node.insert(i, added)
    graph.input.insert(2, helper.make_tensor_value_info("position_ids", TensorProto.INT64,
                                                        ["batch_size", "sequence_length"]))
    logits = next(o for o in graph.output if o.name == "logits")
    logits.type.tensor_type.shape.dim[1].dim_value = 1
