"""`precision: int8` in a declaration: the source turned into its int8 form before it is served.

    image kinds  static int8 with ONNX Runtime (QDQ, per channel), calibrated on real photos that are
                 not the ones agreement is measured on (tskit.real_images); served as onnx
    text kinds   dynamic int8 of the Linear layers (int8 weights, activations quantised per call);
                 served as torchscript
The parity check of an int8 model reports its difference without failing; top-1 agreement with fp32
on real photos and headlines is measured by `make bench` and the tests.
"""

import dataclasses
import os

import torch

from tskit import kinds
from tskit.sources import LoadedSource, SourceError


def to_int8(loaded: LoadedSource, declaration, settings, work: str) -> LoadedSource:
    kind = kinds.kind(declaration.kind)
    wanted = kind.int8_format
    if declaration.format != wanted:
        raise SourceError(f"{declaration.path}: precision int8 is served as {wanted} for a {declaration.kind} "
                          f"(format: {declaration.format})")
    if loaded.module is None or (kind.family == "image" and loaded.onnx_file):
        raise SourceError(f"{loaded.description}: int8 is made from a PyTorch source (.pt, .pt2, checkpoint)")
    if kind.family == "image":
        return _static_onnx_int8(loaded, kind.name, settings, work)
    return _dynamic_linear_int8(loaded)


def _static_onnx_int8(loaded: LoadedSource, kind: str, settings, work: str) -> LoadedSource:
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
