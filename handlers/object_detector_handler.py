"""TorchServe handler for the `object-detector` kind: torchvision detection models saved as TorchScript.

TorchServe requires exactly one class defined in this module (it is the entry point).
Wires the pure pieces to TorchServe: request_payload (body -> image bytes), image_decoding (bytes -> RGB
uint8, EXIF orientation applied) and detection (options, the model's list input, its output -> answers).
The images of a batch, of any sizes, go to the model in one call as a list; the model's own transform
resizes them and maps the boxes back to each image as decoded. Settings:
model_settings.ObjectDetectorSettings, from the `handler:` section of model-config.yaml; a request's JSON
`threshold` / `max_detections` (or a KServe request's `parameters`) override them for that request.
"""

from typing import List, Optional

import torch

from handlers.batch_handler import DecodedRequest, PreparedBatch
from handlers.classification import load_labels
from handlers.detection import (
    DETECTOR_OUTPUTS,
    DetectionInput,
    DetectionItem,
    DetectionOptions,
    answer,
    detection_item_bytes,
    detection_request,
    model_detections,
    model_images,
    request_options,
)
from handlers.image_decoding import decode_rgb, read_header
from handlers.model_settings import ObjectDetectorSettings, SettingsError
from handlers.protocols import Request
from handlers.request_budget import check_pixels, label_bytes
from handlers.video import VideoInput
from handlers.video_batch_handler import VideoBatchHandler


class ObjectDetectorHandler(VideoBatchHandler):
    kind = "object-detector"
    settings_class = ObjectDetectorSettings
    outputs = DETECTOR_OUTPUTS
    v2_field = "image"  # a v2 BYTES element is base64 image bytes, like JSON {"image": ...}

    def setup(self, settings: ObjectDetectorSettings) -> None:
        self.defaults = DetectionOptions(settings.scoreThreshold, settings.maxDetections)
        self.max_pixels = settings.maxImagePixels
        self.max_request_pixels = settings.maxPixelsPerRequest
        self.labels_file = settings.labelsFile
        self.labels = load_labels(self.archive_file(settings.labelsFile))
        self.longest_label = label_bytes(self.labels)

    # ---- a KServe request's parameters.threshold / max_detections, for each of its images ----------------
    def request_defaults(self, request: Request) -> DetectionOptions:
        if request.protocol == "plain":  # its JSON fields are read with the image (decode)
            return self.defaults
        return request_options(request.parameters, self.defaults, "parameters")

    def check_budget(self, request: Request, count: int, topk: Optional[int]) -> None:
        # a bad parameter is refused before any image is read; the answer bound uses its count
        super().check_budget(request, count, self.request_defaults(request).max_detections)

    def decode_request(self, idx: int, row: dict) -> DecodedRequest:
        decoded = super().decode_request(idx, row)
        if decoded.request.protocol != "plain":
            options = self.request_defaults(decoded.request)  # checked in check_budget
            decoded.items = [item._replace(options=options) for item in decoded.items]
        return decoded

    # ---- the BatchHandler hooks --------------------------------------------------------------------
    def answer_item_bytes(self, max_detections: Optional[int]) -> int:
        return detection_item_bytes(max_detections or self.defaults.max_detections, self.longest_label)

    def read_input(self, body, content_type) -> DetectionInput:
        """The image bytes and options (base64-decoded once) and the image's header, read once."""
        data, options = detection_request(body, content_type, self.defaults)
        return DetectionInput(data, options, read_header(data, self.max_pixels))

    def check_inputs(self, payloads: List[DetectionInput]) -> None:
        """The declared pixels of all the request's images, from their headers, before any is decoded."""
        check_pixels((p.header.width * p.header.height for p in payloads), self.max_request_pixels)

    def decode(self, payload: DetectionInput) -> DetectionItem:
        return self.frame_item(decode_rgb(payload.data, self.max_pixels, header=payload.header), payload.options)

    def frame_options(self, video: VideoInput) -> DetectionOptions:
        """A JSON video's `threshold` / `max_detections`, for each of its frames."""
        return request_options(video.document, self.defaults, "JSON field") if video.document else self.defaults

    def frame_item(self, image: torch.Tensor, options: DetectionOptions) -> DetectionItem:
        return DetectionItem(image, options)

    def collate(self, items: List[DetectionItem]) -> List[torch.Tensor]:
        return model_images(items, self.device)

    def postprocess(self, outputs, batch: PreparedBatch) -> List[dict]:
        return [answer(detection, self.labels, item.options)
                for detection, item in zip(model_detections(outputs), batch.items)]

    def warm_up_items(self) -> List[DetectionItem]:
        # two sizes: the model's transform resizes and pads; both paths run once before the first request
        return [DetectionItem(torch.full((3, height, 320), 128, dtype=torch.uint8), DetectionOptions(0.0, 1))
                for height in (320, 240)]

    def check_outputs(self, outputs) -> None:
        for detection in model_detections(outputs):
            if detection["labels"].numel() and int(detection["labels"].max()) >= len(self.labels):
                raise SettingsError(f"{self.labels_file} has {len(self.labels)} labels but the model gives "
                                    f"class index {int(detection['labels'].max())}")

