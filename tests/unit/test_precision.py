"""tskit.precision's bf16 form on tiny real modules: float32 in and out (the handlers need no bf16 path), close to
fp32, the caller's fp32 module untouched, loadable by the handlers' own loader (freeze + optimize_for_inference);
and a precision the kind has no form of, or a format it is not served as, refused before anything is built.
bf16 runs on every CPU in PyTorch (emulated, slower, where AVX512_BF16/AMX are missing), so nothing is skipped."""

import dataclasses

import pytest
import torch

from handlers.model_formats import load_model
from tskit import kinds
from tskit.declaration import Declaration
from tskit.precision import to_bf16, to_precision
from tskit.sources import SourceError, from_module


class TinyImageModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.head = torch.nn.Linear(8, 5)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.bn(self.conv(images))).mean(dim=(2, 3)))


class TinyTextModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embedding = torch.nn.Embedding(100, 16)
        self.head = torch.nn.Linear(16, 4)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask.unsqueeze(-1).to(self.embedding.weight.dtype)
        return self.head((self.embedding(input_ids) * mask).sum(dim=1) / mask.sum(dim=1))


def close_to_fp32(got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.dtype == torch.float32 and got.shape == want.shape
    # bf16 keeps 8 bits of mantissa: ~0.4% of the outputs' scale, well above fp32's noise, well below a wrong model
    scale = want.abs().max().item()
    assert (got - want).abs().max().item() < 0.03 * scale
    assert not torch.equal(got, want)  # it did run in bf16


def test_bf16_image_model_takes_and_gives_float32_close_to_fp32():
    torch.manual_seed(0)
    fp32 = TinyImageModel().eval()
    loaded = to_bf16(from_module(fp32, "tiny"), kinds.kind("image-classifier"))
    images = torch.randn(3, 3, 16, 16)
    with torch.inference_mode():
        close_to_fp32(loaded.module(images), fp32(images))
    assert fp32.conv.weight.dtype == torch.float32  # the fp32 source stays: it is the parity reference
    assert "onnx" not in loaded.formats and "bf16" in loaded.description


def test_bf16_text_model_keeps_int64_ids_and_gives_float32():
    torch.manual_seed(0)
    fp32 = TinyTextModel().eval()
    loaded = to_bf16(from_module(fp32, "tiny text"), kinds.kind("text-classifier"))
    ids = torch.randint(1, 100, (2, 7))
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, 4:] = 0
    with torch.inference_mode():
        close_to_fp32(loaded.module(ids, mask), fp32(ids, mask))


def test_bf16_embeddings_are_unit_length_in_float32_and_scriptable(tmp_path):
    """Normalised inside the model in bf16, an embedding's length is off by ~1e-3 (the served check failed);
    the embedding kind's bf16 form makes it unit length again in float32, and still scripts for TorchScript."""
    torch.manual_seed(0)

    class TinyEmbedder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = TinyTextModel()

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.normalize(self.encoder(input_ids, attention_mask), dim=-1)

    fp32 = TinyEmbedder().eval()
    ids, mask = torch.randint(1, 100, (4, 9)), torch.ones(4, 9, dtype=torch.long)
    path = str(tmp_path / "embedder.pt")
    torch.jit.script(to_bf16(from_module(fp32, "tiny embedder"), kinds.kind("text-embedding")).module).save(path)
    served = load_model(path, "torchscript", torch.device("cpu"), threads=1, optimize=True)
    with torch.inference_mode():
        got, want = served(ids, mask), fp32(ids, mask)
    assert got.dtype == torch.float32
    assert (got.norm(dim=-1) - 1).abs().max().item() < 1e-6
    assert torch.nn.functional.cosine_similarity(got, want).min().item() > 0.999


def test_bf16_torchscript_loads_frozen_and_optimized_as_a_worker_does(tmp_path):
    torch.manual_seed(0)
    fp32 = TinyImageModel().eval()
    loaded = to_bf16(from_module(fp32, "tiny"), kinds.kind("image-classifier"))
    images = torch.randn(2, 3, 16, 16)
    path = str(tmp_path / "model.pt")
    torch.jit.script(loaded.module).save(path)
    served = load_model(path, "torchscript", torch.device("cpu"), threads=1, optimize=True)
    with torch.inference_mode():
        close_to_fp32(served(images), fp32(images))
        assert served(torch.randn(5, 3, 16, 16)).shape == (5, 5)  # another batch size than the one scripted with


def declaration(kind: str, fmt: str, precision: str) -> Declaration:
    return Declaration(name="m", folder="/models/m", kind=kind, source="python:x:y", format=fmt, precision=precision)


@pytest.mark.parametrize("kind, fmt, message", [
    ("image-classifier", "onnx", "precision bf16 is served as aoti or openvino for a image-classifier"),
    ("text-classifier", "onnx", "precision bf16 is served as torchscript or aoti or openvino for a text-classifier"),
    ("object-detector", "torchscript", "precision bf16 is not made for an object-detector"),
])
def test_bf16_in_a_form_the_kind_does_not_make_is_refused(kind, fmt, message):
    with pytest.raises(SourceError, match=message):
        to_precision(from_module(TinyImageModel(), "tiny"), kinds.kind(kind), declaration(kind, fmt, "bf16"), None,
                     "/nowhere")


def test_fp32_is_the_source_itself_and_an_onnx_source_has_no_bf16_form():
    loaded = from_module(TinyImageModel(), "tiny")
    assert to_precision(loaded, kinds.kind("image-classifier"), declaration("image-classifier", "onnx", "fp32"), None,
                        "/nowhere") is loaded
    onnx = dataclasses.replace(loaded, onnx_file="/m.onnx", formats=("onnx",))
    with pytest.raises(SourceError, match="bf16 is made from a PyTorch source"):
        to_precision(onnx, kinds.kind("image-classifier"), declaration("image-classifier", "aoti", "bf16"), None,
                     "/nowhere")
