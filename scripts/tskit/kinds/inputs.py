"""What a kind's model takes (a Kind's `model_input`): one object per input form, and every tool asks it instead
of testing a kind's name or family.

    IMAGE_BATCH   a float batch [N, 3, H, W]: image classifiers, segmenters
    TOKEN_BATCH   (input_ids, attention_mask) int64 [N, L]: text classifiers, embedders
    IMAGE_LIST    a list of float images [3, H, W] of any sizes: detectors (TorchScript only)
    CAUSAL_LM     a causal language model's folder, built by tskit.causal_lm (no tensors to trace)

Each says which sources give it, its example batches (the exporters trace them, the parity check runs them),
which of its dimensions vary, how a module of it becomes TorchScript, its bfloat16 face and what the archive
carries beside the model. The build's own modules (torch, the exporters) are imported inside the methods that
need them: this package stays light for the commands that only look a kind up.
"""

import os
from typing import Dict, Tuple

# A detector's example images (height, width): different sizes and aspect ratios in one list, as batched
DETECTOR_IMAGE_SIZES = ((240, 320), (320, 200), (300, 300))


class ModelInput:
    name = ""                                   # in messages: "an image model", ...
    names: Tuple[str, ...] = ()                 # the model's inputs as ONNX and OpenVINO name them
    dynamic: Dict[int, str] = {}                # the dimensions of every input that vary, by axis name
    parity_shapes: Tuple[Tuple[int, int], ...] = ()  # (batch, length) of the parity check's batches
    # the source is a Hugging Face checkpoint folder: the archive carries its tokenizer.json, and its token limits
    # are the handler's unless the declaration says otherwise
    checkpoint_folder = False
    takes_photos = False   # a request carries a photo (image/jpeg, {"image": base64}), else text
    builds_folder = False  # the model is a folder (tskit.causal_lm), not one file exported from a module
    sources = "a .pt, .pt2 or .onnx file (or python:<module>:<function>)"  # what a source may be, in messages

    def example(self, settings, batch: int = 2, length: int = 16, seed: int = 0) -> tuple:
        raise NotImplementedError

    def source_formats(self, source: str) -> Tuple[str, ...]:
        """The formats a source can give, judged by its name (the build checks again with the model loaded)."""
        from tskit.sources import ALL_FORMATS, FORMATS_OF_FILE

        if source.startswith("python:") or os.path.isdir(source):  # a folder is refused with its reason when loaded
            return ALL_FORMATS
        return FORMATS_OF_FILE.get(os.path.splitext(source)[1], ())

    def to_torchscript(self, module, example):
        import torch

        return torch.jit.trace(module, example, check_trace=False)

    def export_dims(self, settings) -> tuple:
        """torch.export's dynamic shapes: each input's varying dimensions (a .pt2 source keeps its own limits)."""
        import torch

        dims = {"batch": torch.export.Dim.DYNAMIC}
        if "sequence" in self.dynamic.values():
            dims["sequence"] = torch.export.Dim("sequence", min=1, max=settings.maxTokens)
        return tuple({axis: dims[name] for axis, name in self.dynamic.items()} for _ in self.names)

    def bf16(self, module, unit_length: bool):
        """The bfloat16 module behind a float32 face (tskit.precision)."""
        raise NotImplementedError

    def parity(self, loaded, model_format: str, settings, path: str, strict: bool, reference_module):
        """(largest |served - source|, the output width) over the parity batches (tskit.formats)."""
        from tskit.formats import tensor_parity

        return tensor_parity(self, loaded, model_format, settings, path, strict, reference_module)


class ImageBatch(ModelInput):
    name = "image"
    takes_photos = True
    names = ("input",)
    dynamic = {0: "batch"}
    parity_shapes = ((1, 0), (3, 0), (5, 0))

    def example(self, settings, batch: int = 2, length: int = 16, seed: int = 0) -> tuple:
        import torch

        generator = torch.Generator().manual_seed(seed)
        return (torch.randn(batch, 3, settings.input_size, settings.input_size, generator=generator),)

    def to_torchscript(self, module, example):
        import torch

        if not isinstance(module, torch.fx.GraphModule):
            try:
                return torch.jit.script(module)  # keeps control flow; device-neutral
            except Exception:  # many modules do not script; a trace of a fixed-graph model is as good
                pass
        return super().to_torchscript(module, example)

    def bf16(self, module, unit_length: bool):
        from tskit.precision import Bf16Images

        return Bf16Images(module)


class TokenBatch(ModelInput):
    name = "text"
    names = ("input_ids", "attention_mask")
    dynamic = {0: "batch", 1: "sequence"}
    parity_shapes = ((1, 7), (3, 16), (5, 40))
    checkpoint_folder = True
    sources = "a Hugging Face checkpoint folder (or python:<module>:<function>)"

    def example(self, settings, batch: int = 2, length: int = 16, seed: int = 0) -> tuple:
        """Token ids in the ordinary vocabulary range; row i keeps length - i*3 tokens (the rest is padding)."""
        import torch

        length = min(length, settings.maxTokens)
        generator = torch.Generator().manual_seed(seed)
        ids = torch.randint(1000, 2000, (batch, length), generator=generator)
        mask = torch.ones(batch, length, dtype=torch.long)
        for row in range(1, batch):
            mask[row, max(1, length - row * 3):] = 0
        ids[mask == 0] = 0
        return ids, mask

    def bf16(self, module, unit_length: bool):
        from tskit.precision import Bf16Text

        return Bf16Text(module, unit_length)


class ImageList(ModelInput):
    name = "detector"
    takes_photos = True
    sources = "a torchvision detection model saved with torch.jit.script (.pt)"

    def example(self, settings, batch: int = 2, length: int = 16, seed: int = 0) -> tuple:
        return (images_of_sizes(DETECTOR_IMAGE_SIZES[:batch], seed),)

    def source_formats(self, source: str) -> Tuple[str, ...]:
        from tskit.sources import detector_formats

        return detector_formats(source)

    def to_torchscript(self, module, example):
        import torch

        return torch.jit.script(module)  # a trace would fix the number and sizes of the images

    def parity(self, loaded, model_format: str, settings, path: str, strict: bool, reference_module):
        from tskit.formats import detector_parity

        return detector_parity(self, loaded, settings, path, strict)


class CausalLMInput(ModelInput):
    name = "generator"
    builds_folder = True
    sources = "a .gguf file or a Hugging Face folder"

    def source_formats(self, source: str) -> Tuple[str, ...]:
        from tskit import causal_lm

        return causal_lm.source_formats(source)


def images_of_sizes(sizes, seed: int = 0) -> list:
    """Float RGB images in [0, 1] of the given (height, width) sizes: a detector's input."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    return [torch.rand(3, height, width, generator=generator) for height, width in sizes]


IMAGE_BATCH, TOKEN_BATCH, IMAGE_LIST, CAUSAL_LM = ImageBatch(), TokenBatch(), ImageList(), CausalLMInput()
MODEL_INPUTS: Tuple[ModelInput, ...] = (IMAGE_BATCH, TOKEN_BATCH, IMAGE_LIST, CAUSAL_LM)
