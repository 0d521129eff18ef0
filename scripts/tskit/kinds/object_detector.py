"""object-detector: torchvision detection models saved as TorchScript; images of any sizes, boxes out.

fp32 only (no int8 form), and neither the bench nor make optimize has inputs or an agreement measure for it.
"""

from handlers.model_settings import ObjectDetectorSettings
from tskit.kinds import Kind
from tskit.kinds.answers import DETECTIONS
from tskit.kinds.inputs import IMAGE_LIST

TEMPLATE = """\
  scoreThreshold: 0.5         # the lowest score answered (a request's JSON "threshold" overrides it)
  maxDetections: 100          # the most detections answered (a request's "max_detections" overrides it)
  maxImagePixels: 40000000    # a declared width*height above this answers 413 before decoding
  intraOpThreads: 1           # workers x threads <= cores
  # Per-request budgets, answered 413 before decoding (docs/limits-and-overload.md)
  maxItemsPerRequest: 16      # images per KServe request
  maxPixelsPerRequest: 40000000  # declared pixels of all of a request's images (>= maxImagePixels)
"""

KIND = Kind(
    name="object-detector",
    handler_file="object_detector_handler.py",
    settings=ObjectDetectorSettings,
    model_input=IMAGE_LIST,
    answer=DETECTIONS,
    template=TEMPLATE,
    max_batch_delay=20,  # the image classifier's: no tuned detector yet
    v2_outputs=("labels", "indices", "scores", "boxes", "count"),
    takes_video=True,
)
