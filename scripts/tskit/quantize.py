"""Static int8 quantisation of an ONNX image classifier with ONNX Runtime.

Defaults: QDQ, per-channel int8 weights, uint8 activations, MinMax calibration: the standard
setting, and the fastest int8 tried in results/format_study.md. No setting tried there kept
top-1 agreement >= 99% with fp32 for MobileNetV2 (best: 73%, uint8 weights), and on that
AVX2-only CPU none was faster than ONNX Runtime fp32, so MobileNetV2 is served fp32. The keyword
options exist so a study can try alternatives through this same function.
"""

import os
import tempfile
from typing import Iterable, Iterator, Optional, Sequence

import numpy as np
import onnx
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                      QuantType, quantize_static)
from onnxruntime.quantization.shape_inference import quant_pre_process


class _Images(CalibrationDataReader):
    """Feeds the calibration images one at a time: the histogram calibrators (Percentile,
    Entropy) stack every run's outputs and fail on a short last batch of a different size."""

    def __init__(self, input_name: str, batches: Iterable[np.ndarray]):
        self.input_name = input_name
        self.images: Iterator[np.ndarray] = (b[i:i + 1] for b in batches for i in range(len(b)))

    def get_next(self):
        image = next(self.images, None)
        return None if image is None else {self.input_name: np.ascontiguousarray(image, np.float32)}


def quantize_image_classifier_int8(
    fp32_onnx: str,
    out: str,
    calibration: Iterable[np.ndarray],
    *,
    quant_format: QuantFormat = QuantFormat.QDQ,
    per_channel: bool = True,
    method: CalibrationMethod = CalibrationMethod.MinMax,
    activation_type: QuantType = QuantType.QUInt8,
    weight_type: QuantType = QuantType.QInt8,
    reduce_range: bool = False,
    exclude_op_types: Sequence[str] = (),
    extra_options: Optional[dict] = None,
) -> None:
    """Write an int8 model to `out`, calibrated on `calibration` (float32 NCHW batches, already
    normalised, which must not be the images the result is judged on)."""
    input_name = onnx.load(fp32_onnx, load_external_data=False).graph.input[0].name
    with tempfile.TemporaryDirectory() as tmp:
        # Shape inference + constant folding first: quantize_static needs every tensor's shape
        # and would otherwise also quantise ops that folding removes.
        prepared = os.path.join(tmp, "prepared.onnx")
        quant_pre_process(fp32_onnx, prepared, skip_symbolic_shape=False)
        quantize_static(
            prepared, out, _Images(input_name, calibration),
            quant_format=quant_format,
            per_channel=per_channel,  # depthwise convs' channels differ widely in range
            calibrate_method=method,
            activation_type=activation_type,
            weight_type=weight_type,
            reduce_range=reduce_range,  # 7-bit weights: avoids u8s8 saturation on AVX2-only CPUs
            nodes_to_exclude=_nodes_of_types(prepared, exclude_op_types),
            extra_options=extra_options or {},
        )


def _nodes_of_types(model_path: str, op_types: Sequence[str]) -> list:
    """Names of the nodes of the given op types (e.g. the classifier's Gemm) to keep in fp32."""
    if not op_types:
        return []
    graph = onnx.load(model_path).graph
    return [node.name for node in graph.node if node.op_type in op_types]
