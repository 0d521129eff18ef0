"""FORMAT=openvino without a server: the IR made from a module (through the ONNX graph) and from a torch.export
program, loaded as a worker loads it, answers what the module does, at any batch size, in fp32 on any host."""

import os

import openvino
import pytest
import torch

from handlers.model_formats import load_model
from tskit.formats import build_model_file
from tskit.kinds import kind, parse_settings
from tskit.sources import LoadedSource


class TinyClassifier(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.features = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=4), torch.nn.ReLU(),
                                            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
        self.head = torch.nn.Linear(8, 5)

    def forward(self, images):
        return self.head(self.features(images))


@pytest.mark.parametrize("source", ["module", "torch.export"])
def test_the_ir_answers_what_the_module_does_at_any_batch(tmp_path, source):
    module = TinyClassifier().eval()
    settings = parse_settings("image-classifier", {"cropSize": 64, "resizeSize": 64})
    exported = None
    if source == "torch.export":
        exported = torch.export.export(module, (torch.rand(2, 3, 64, 64),),
                                       dynamic_shapes=({0: torch.export.Dim.DYNAMIC},))
    loaded = LoadedSource("tiny", ("openvino",), module=module, exported=exported)
    report = build_model_file(loaded, kind("image-classifier"), "openvino", settings, str(tmp_path))
    assert os.path.basename(report["file"]) == "model.xml" and report["extra"] == [str(tmp_path / "model.bin")]
    assert report["outputs"] == 5 and report["max_abs_diff"] < 1e-5
    served = load_model(report["file"], "openvino", torch.device("cpu"), threads=1, optimize=True)
    # fp32 whatever the host: OpenVINO's own default is bf16 where the CPU has AVX512_BF16 or AMX
    assert served.compiled.get_property("INFERENCE_PRECISION_HINT") == openvino.Type.f32
    for batch in (1, 3, 7):
        images = torch.rand(batch, 3, 64, 64)
        with torch.inference_mode():
            assert torch.allclose(served(images), module(images), atol=1e-5)


def test_bf16_and_int8_are_made_as_the_ir_is_written(tmp_path):
    """A declaration's bf16: the fp32 IR with the bf16 inference hint, compiled so by the worker; int8: NNCF's
    quantised IR (calibrated on the real photos), close to the module and holding FakeQuantize operations."""
    module = TinyClassifier().eval()
    settings = parse_settings("image-classifier", {"cropSize": 64, "resizeSize": 64})
    images = torch.rand(4, 3, 64, 64)
    for precision in ("bf16", "int8"):
        loaded = LoadedSource("tiny", ("openvino",), module=module, openvino_precision=precision)
        report = build_model_file(loaded, kind("image-classifier"), "openvino", settings, str(tmp_path / precision),
                                  strict=False, reference_module=module)
        served = load_model(report["file"], "openvino", torch.device("cpu"), threads=1, optimize=True)
        assert served.precision == ("bf16" if precision == "bf16" else "f32")
        ops = {op.get_type_name() for op in openvino.Core().read_model(report["file"]).get_ops()}
        assert ("FakeQuantize" in ops) == (precision == "int8")
        with torch.inference_mode():
            assert torch.allclose(served(images), module(images), atol=0.1)
