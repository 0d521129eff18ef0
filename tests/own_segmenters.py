"""Segmentation models made on the spot for `make model KIND=image-segmenter` tests: small and deterministic,
with class maps that follow the picture.

No pretrained segmentation weights install here, and an untrained torchvision segmenter (even with its batch
norms calibrated on real photos) gives one class over the whole image, which no parity check can fail. So
`ColorSegmenter` is made to see the picture: at a quarter of the input's resolution its four classes are where
red, green or blue dominates and where the picture is dark, plus a seeded random 3x3 convolution that bends
the boundaries. Three sources, one per serving format's route, two of them in torchvision's {"out": ...} form:
    segmenter.pt    torch.jit.script of the {"out", "aux"} model       -> torchscript
    segmenter.onnx  the plain-logits model, dynamic batch               -> onnx
    segmenter.pt2   torch.export of the {"out", "aux"} model, dynamic batch -> aoti
`SegmentReference` is what an archive must answer: the handlers' own decode / resize / normalise, the
archive's served file run in process as a worker loads it, the class map at the image's size.
"""

import os
import warnings
from dataclasses import dataclass
from typing import Dict, List

import torch

SEGMENTER_CLASSES = ["red", "green", "blue", "dark"]
INPUT_SIZE = 520
SEED = 0


class ColorSegmenter(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(SEED)
        self.pool = torch.nn.AvgPool2d(4)
        self.texture = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.head = torch.nn.Conv2d(3, 4, 1)
        with torch.no_grad():
            self.texture.weight.mul_(0.3)
            self.head.weight.copy_(torch.tensor([[2.0, -1, -1], [-1, 2, -1], [-1, -1, 2], [-1, -1, -1]])[..., None, None])
            self.head.bias.copy_(torch.tensor([0.0, 0.0, 0.0, -1.0]))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        small = self.pool(images)
        return self.head(small) + self.texture(small)


class TorchvisionForm(torch.nn.Module):
    """torchvision's segmentation models' answer: {"out": logits, "aux": the auxiliary head's}."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
        logits = self.model(images)
        return {"out": logits, "aux": logits * 0.5}


@dataclass
class SegmenterFiles:
    pt: str
    onnx: str
    pt2: str


def make_segmenters(folder: str) -> SegmenterFiles:
    os.makedirs(folder, exist_ok=True)
    files = SegmenterFiles(*(os.path.join(folder, f"segmenter.{ext}") for ext in ("pt", "onnx", "pt2")))
    example = torch.rand(2, 3, INPUT_SIZE, INPUT_SIZE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit / torch.onnx deprecation notes
        torch.jit.script(TorchvisionForm(ColorSegmenter()).eval()).save(files.pt)
        torch.onnx.export(ColorSegmenter().eval(), (example,), files.onnx, dynamo=False,
                          opset_version=17, input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
        program = torch.export.export(TorchvisionForm(ColorSegmenter()).eval(), (example,),
                                      dynamic_shapes=({0: torch.export.Dim.DYNAMIC},))
        torch.export.save(program, files.pt2)
    return files


class SegmentReference:
    """The answer an image-segmenter archive must give for each image, computed in process."""

    def __init__(self, served_file: str, model_format: str, labels: List[str]):
        from handlers.model_formats import load_model

        self.model = load_model(served_file, model_format, torch.device("cpu"), threads=1, optimize=True)
        self.labels = labels

    def answer(self, data: bytes) -> Dict:
        from handlers.image_decoding import decode_rgb
        from handlers.image_transforms import collate_normalize
        from handlers.segmentation import answer, class_map, resize_exact, segmenter_logits

        image = decode_rgb(data, 10 ** 8)
        batch = collate_normalize([resize_exact(image, INPUT_SIZE)], [0.485, 0.456, 0.406], [0.229, 0.224, 0.225],
                                  torch.device("cpu"))
        with torch.inference_mode():
            logits = segmenter_logits(self.model(batch))
        return answer(class_map(logits[0], image.shape[-2], image.shape[-1]), self.labels)
