"""TorchServe handler for the `image-classifier` kind: ImageNet-style classifiers in any model format.

TorchServe requires exactly one class defined in this module (it is the entry point).
Wires the pure pieces to TorchServe: request_payload (body -> image bytes), image_decoding
(bytes -> RGB uint8), image_transforms (resize/crop per image, normalise per batch) and
classification (top-k). Settings: model_settings.ImageClassifierSettings, from the `handler:` section
of model-config.yaml.
"""

from typing import List

import torch

from handlers.batch_handler import PreparedBatch
from handlers.classification import CLASSIFIER_OUTPUTS, load_labels, top_k_predictions
from handlers.image_decoding import ImageInput, decode_rgb, read_header
from handlers.image_transforms import ImageItem, collate_normalize, resize_and_crop
from handlers.model_settings import ImageClassifierSettings, check_labels
from handlers.request_budget import check_pixels, label_bytes, predictions_item_bytes
from handlers.request_payload import image_request, positive_int_field
from handlers.video import VideoInput
from handlers.video_batch_handler import VideoBatchHandler


class ImageClassifierHandler(VideoBatchHandler):
    kind = "image-classifier"
    settings_class = ImageClassifierSettings
    outputs = CLASSIFIER_OUTPUTS
    v2_field = "image"  # a v2 BYTES element is base64 image bytes, like JSON {"image": ...}

    def setup(self, settings: ImageClassifierSettings) -> None:
        self.topk = settings.topk
        self.max_pixels = settings.maxImagePixels
        self.resize_size = settings.resizeSize
        self.crop_size = settings.cropSize
        # decode large JPEGs at 1/2..1/8 scale, never below the resize size (see image_decoding)
        self.reduced_jpeg_side = self.resize_size if settings.reducedJpegDecode else None
        self.mean, self.std = settings.mean, settings.std
        self.labels_file = settings.labelsFile
        self.labels = load_labels(self.archive_file(settings.labelsFile))
        self.longest_label = label_bytes(self.labels)
        self.max_request_pixels = settings.maxPixelsPerRequest

    def answer_item_bytes(self, topk) -> int:
        return predictions_item_bytes(min(topk or self.topk, len(self.labels)), self.longest_label)

    def read_input(self, body, content_type) -> ImageInput:
        """The image bytes (base64-decoded once for JSON and v2 forms) and their header, read once:
        an image declaring more than maxImagePixels is refused here, before any pixel is decoded."""
        request = image_request(body, content_type, self.topk)
        return ImageInput(request.data, request.topk, read_header(request.data, self.max_pixels))

    def check_inputs(self, payloads: List[ImageInput]) -> None:
        """The declared pixels of all the request's images, from their headers, before any is decoded."""
        check_pixels((p.header.width * p.header.height for p in payloads), self.max_request_pixels)

    def decode(self, payload: ImageInput) -> ImageItem:
        return self.frame_item(decode_rgb(payload.data, self.max_pixels, self.reduced_jpeg_side, payload.header),
                               payload.topk)

    def frame_options(self, video: VideoInput) -> int:
        """A JSON video's `topk`, for each of its frames."""
        return positive_int_field(video.document, "topk", self.topk) if video.document else self.topk

    def frame_item(self, image: torch.Tensor, topk: int) -> ImageItem:
        """A decoded photo or a video frame: resized and cropped."""
        return ImageItem(resize_and_crop(image, self.resize_size, self.crop_size), topk)

    def collate(self, items: List[ImageItem]) -> torch.Tensor:
        return collate_normalize([item.crop for item in items], self.mean, self.std, self.device)

    def postprocess(self, logits: torch.Tensor, batch: PreparedBatch) -> List[dict]:
        ks = [topk or item.topk for topk, item in zip(batch.topks, batch.items)]
        return [{"predictions": top} for top in top_k_predictions(logits, self.labels, ks)]

    def warm_up_items(self) -> List[ImageItem]:
        gray = torch.full((3, self.crop_size, self.crop_size), 128, dtype=torch.uint8)
        return [ImageItem(gray, 1)]

    def check_outputs(self, logits: torch.Tensor) -> None:
        check_labels(self.labels, logits.shape[-1], self.labels_file)
