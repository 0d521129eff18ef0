"""`precision: int8` or `bf16` in a declaration: the source turned into that form before it is served.

int8:
    image kinds  static int8 with ONNX Runtime (QDQ, per channel), calibrated on real photos that are
                 not the ones agreement is measured on (tskit.real_images); served as onnx
    text kinds   dynamic int8 of the Linear layers (int8 weights, activations quantised per call);
                 served as torchscript
OpenVINO (format openvino): the fp32 IR, compiled for bf16 arithmetic (an inference-precision hint written into
    the IR) or quantised to int8 by NNCF on the calibration photos (tskit.formats.to_openvino).
bf16: the PyTorch module's weights and arithmetic in bfloat16, wrapped so that it takes and gives what the
    handlers send and expect (float32 images or int64 token ids in, float32 logits or embeddings out): the
    handlers need no bf16 path. Served in one of the kind's `bf16_formats` (tskit.kinds): AOTInductor for
    images, TorchScript or AOTInductor for text. Fast only where the CPU has AVX512_BF16 or AMX (elsewhere it
    is emulated, slower than fp32), which is why make optimize builds it only on such a host.
The parity check of an int8 or bf16 model reports its difference without failing; agreement with fp32 on
real photos and headlines is measured by `make bench`, `make optimize` and the tests.
"""

import copy
import dataclasses
import os

import torch

from tskit.sources import LoadedSource, SourceError


def to_precision(loaded: LoadedSource, kind, declaration, settings, work: str) -> LoadedSource:
    """The source in the declaration's precision (fp32: as it is); refused where the kind has no such form,
    the declaration's format is not the one it is served as, or the source is not a PyTorch module."""
    if declaration.precision == "fp32":
        return loaded
    precision = declaration.precision
    wanted = kind.precision_formats(precision)
    if not wanted:
        raise SourceError(f"{declaration.path}: precision {precision} is not made for an {declaration.kind} "
                          f"(fp32 only)")
    if declaration.format not in wanted:
        raise SourceError(f"{declaration.path}: precision {precision} is served as {' or '.join(wanted)} for a "
                          f"{declaration.kind} (format: {declaration.format})")
    if declaration.format == "openvino":  # made as the IR is written (tskit.formats.to_openvino)
        return dataclasses.replace(loaded, description=f"{loaded.description}, {precision} (OpenVINO)",
                                   formats=("openvino",), openvino_precision=precision)
    if loaded.module is None or loaded.onnx_file:
        raise SourceError(f"{loaded.description}: {precision} is made from a PyTorch source (.pt, .pt2, checkpoint)")
    if precision == "bf16":
        return to_bf16(loaded, kind)
    return to_int8(loaded, kind, settings, work)


def to_int8(loaded: LoadedSource, kind, settings, work: str) -> LoadedSource:
    """The kind's int8 form, made for the format it is served as: ONNX Runtime's static int8 calibrated on
    photos, or TorchScript with PyTorch's dynamic int8 Linear layers."""
    if kind.int8_format == "onnx":
        return _static_onnx_int8(loaded, kind, settings, work)
    return _dynamic_linear_int8(loaded)


def _static_onnx_int8(loaded: LoadedSource, kind, settings, work: str) -> LoadedSource:
    from tskit.formats import to_onnx, example_inputs
    from tskit.quantize import quantize_image_classifier_int8
    from tskit.real_images import calibration_batches

    fp32 = os.path.join(work, "fp32.onnx")
    to_onnx(loaded, kind, example_inputs(kind, settings), fp32)
    int8 = os.path.join(work, "int8.onnx")
    quantize_image_classifier_int8(fp32, int8, calibration_batches(settings=settings))
    os.remove(fp32)
    return dataclasses.replace(loaded, description=f"{loaded.description}, static int8 (ONNX Runtime)",
                               formats=("onnx",), onnx_file=int8)


def _dynamic_linear_int8(loaded: LoadedSource) -> LoadedSource:
    torch.backends.quantized.engine = "x86" if "x86" in torch.backends.quantized.supported_engines else "fbgemm"
    module = torch.ao.quantization.quantize_dynamic(loaded.module, {torch.nn.Linear}, dtype=torch.qint8)
    return dataclasses.replace(loaded, description=f"{loaded.description}, dynamic int8 Linear layers",
                               formats=("torchscript",), module=module)


class Bf16Images(torch.nn.Module):
    """A bfloat16 image model behind a float32 face: images cast to bf16 in, logits cast to float32 out."""

    def __init__(self, module: torch.nn.Module):
        super().__init__()
        self.module = module

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.module(images.to(torch.bfloat16)).float()


class Bf16Text(torch.nn.Module):
    """A bfloat16 text model behind a float32 face: token ids and mask stay int64 (the model embeds them in
    bf16), logits or embeddings cast to float32 out (embeddings made unit length again in float32)."""

    def __init__(self, module: torch.nn.Module, unit_length: bool = False):
        super().__init__()
        self.module = module
        self.unit_length = unit_length

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.module(input_ids, attention_mask).float()
        return torch.nn.functional.normalize(out, dim=-1) if self.unit_length else out


def to_bf16(loaded: LoadedSource, kind) -> LoadedSource:
    """The module cast to bfloat16 (a copy: the caller's fp32 module stays as it is) behind the float32 face of
    the kind's input. Only the PyTorch formats can give it: ONNX Runtime's CPU has no bf16 Conv or MatMul. A kind
    whose answers are unit vectors (embeddings) has the output L2-normalised again in float32: normalised in bf16
    its length is off by up to ~1e-3 (measured: served TorchScript bf16 embeddings failed the unit-length check)."""
    module = copy.deepcopy(loaded.module).eval().to(torch.bfloat16)
    wrapped = kind.model_input.bf16(module, kind.answer.unit_length).eval()
    formats = tuple(f for f in loaded.formats if f != "onnx")
    return dataclasses.replace(loaded, description=f"{loaded.description}, bf16", formats=formats, module=wrapped,
                               exported=None)
