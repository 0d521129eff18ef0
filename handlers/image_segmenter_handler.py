"""TorchServe handler for the `image-segmenter` kind: semantic segmentation models in any model format.

TorchServe requires exactly one class defined in this module (it is the entry point).
Wires the pure pieces to TorchServe: request_payload (body -> image bytes), image_decoding (bytes -> RGB
uint8), segmentation (resize without a crop, logits -> class map at the original size -> PNG and fractions)
and image_transforms (normalise once per batch). Each image's mask is bounded from its header, before it is
decoded (maxMaskBytes); an answer over maxResponseBytes is a 413 once made. Settings:
model_settings.ImageSegmenterSettings, from the `handler:` section of model-config.yaml.
"""

from typing import List

import torch

from handlers.batch_handler import PreparedBatch
from handlers.classification import load_labels
from handlers.image_decoding import ImageInput, decode_rgb, read_header
from handlers.image_transforms import collate_normalize
from handlers.model_settings import ImageSegmenterSettings, SettingsError, check_labels
from handlers.request_budget import check_pixels, label_bytes
from handlers.request_errors import ImageTooLarge
from handlers.request_payload import image_request
from handlers.video_batch_handler import VideoBatchHandler
from handlers.segmentation import (
    MAX_CLASSES,
    SEGMENTER_OUTPUTS,
    SegmentItem,
    answer,
    class_map,
    classes_bytes,
    mask_bytes,
    resize_exact,
    segmenter_logits,
)


class ImageSegmenterHandler(VideoBatchHandler):
    kind = "image-segmenter"
    settings_class = ImageSegmenterSettings
    outputs = SEGMENTER_OUTPUTS
    v2_field = "image"  # a v2 BYTES element is base64 image bytes, like JSON {"image": ...}

    def setup(self, settings: ImageSegmenterSettings) -> None:
        self.size = settings.inputSize
        self.mean, self.std = settings.mean, settings.std
        self.labels_file = settings.labelsFile
        self.labels = load_labels(self.archive_file(settings.labelsFile))
        if len(self.labels) > MAX_CLASSES:
            raise SettingsError(f"{settings.labelsFile}: {len(self.labels)} classes do not fit an 8-bit PNG mask "
                                f"(at most {MAX_CLASSES})")
        self.longest_label = label_bytes(self.labels)

    def read_input(self, body, content_type) -> ImageInput:
        request = image_request(body, content_type, None)
        return ImageInput(request.data, None, read_header(request.data, self.settings.maxImagePixels))

    def answer_item_bytes(self, topk) -> int:
        """Every class listed; the PNG's size is known once made (an answer over maxResponseBytes is then a 413:
        bounding it from the header would refuse a 12-MP photo, whose map compresses to a small part of that)."""
        return classes_bytes(len(self.labels), self.longest_label)

    def check_inputs(self, payloads: List[ImageInput]) -> None:
        """Declared pixels and each image's upsampled logits, from the headers alone."""
        sizes = [(p.header.height, p.header.width) for p in payloads]
        check_pixels((h * w for h, w in sizes), self.settings.maxPixelsPerRequest)
        for h, w in sizes:
            self.check_frame_size(w, h)

    def check_frame_size(self, width: int, height: int) -> None:
        """An image's (or a video frame's) logits upsampled to its size, before the arg-max."""
        classes = len(self.labels)
        needed = mask_bytes(height, width, classes)
        if needed > self.settings.maxMaskBytes:
            raise ImageTooLarge(f"a {width}x{height} image's mask needs {needed} bytes before the arg-max "
                                f"({classes} classes x 4 bytes a pixel), more than this model's maxMaskBytes "
                                f"{self.settings.maxMaskBytes}")

    def decode(self, payload: ImageInput) -> SegmentItem:
        return self.frame_item(decode_rgb(payload.data, self.settings.maxImagePixels, header=payload.header), None)

    def frame_item(self, image: torch.Tensor, options: None) -> SegmentItem:
        """A decoded photo or a video frame: resized without a crop; its own size kept for the mask."""
        return SegmentItem(resize_exact(image, self.size), image.shape[-2], image.shape[-1])

    def collate(self, items: List[SegmentItem]) -> torch.Tensor:
        return collate_normalize([item.image for item in items], self.mean, self.std, self.device)

    def postprocess(self, outputs, batch: PreparedBatch) -> List[dict]:
        logits = segmenter_logits(outputs)
        return [answer(class_map(logits[i], item.height, item.width), self.labels)
                for i, item in enumerate(batch.items)]

    def warm_up_items(self) -> List[SegmentItem]:
        return [SegmentItem(torch.full((3, self.size, self.size), 128, dtype=torch.uint8), 8, 8)]

    def check_outputs(self, outputs) -> None:
        check_labels(self.labels, segmenter_logits(outputs).shape[1], self.labels_file)
