"""TorchServe handler for ImageNet-style image classifiers (TorchScript weights).

TorchServe requires exactly one class defined in this module (it is the entry point).
Wires the pure pieces to TorchServe: request_payload (body -> image bytes), image_decoding
(bytes -> RGB uint8), image_transforms (resize/crop per image, normalise per batch) and
classification (top-k). Settings come from the `handler:` section of model-config.yaml.
"""

import os
from typing import List

import torch

from batch_handler import BatchHandler, PreparedBatch
from classification import load_labels, top_k_predictions
from image_decoding import decode_rgb
from image_transforms import ImageItem, collate_normalize, resize_and_crop
from request_payload import image_request


class ImageClassifierHandler(BatchHandler):
    v2_field = "image"  # a v2 BYTES element is base64 image bytes, like JSON {"image": ...}

    def setup(self, config: dict) -> None:
        self.topk = int(config.get("topk", 5))
        self.max_pixels = int(config.get("maxImagePixels", 40_000_000))
        self.resize_size = int(config.get("resizeSize", 256))
        self.crop_size = int(config.get("cropSize", 224))
        # decode large JPEGs at 1/2..1/8 scale, never below the resize size (see image_decoding)
        self.reduced_jpeg_side = self.resize_size if config.get("reducedJpegDecode", True) else None
        self.mean = [float(m) for m in config.get("mean", (0.485, 0.456, 0.406))]
        self.std = [float(s) for s in config.get("std", (0.229, 0.224, 0.225))]
        self.labels = load_labels(
            os.path.join(self.model_dir, config.get("labelsFile", "index_to_name.json"))
        )

    def decode(self, body, content_type) -> ImageItem:
        request = image_request(body, content_type, self.topk)
        image = decode_rgb(request.data, self.max_pixels, self.reduced_jpeg_side)
        return ImageItem(resize_and_crop(image, self.resize_size, self.crop_size), request.topk)

    def collate(self, items: List[ImageItem]) -> torch.Tensor:
        return collate_normalize([item.crop for item in items], self.mean, self.std, self.device)

    def postprocess(self, logits: torch.Tensor, batch: PreparedBatch) -> List[dict]:
        ks = [item.topk for item in batch.items]
        return [{"predictions": top} for top in top_k_predictions(logits, self.labels, ks)]

    def warm_up_items(self) -> List[ImageItem]:
        gray = torch.full((3, self.crop_size, self.crop_size), 128, dtype=torch.uint8)
        return [ImageItem(gray, 1)]
