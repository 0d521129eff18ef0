"""image-segmenter: semantic segmentation models in any model format; an image in, its class map out.

The model takes [N, 3, inputSize, inputSize] (the image resized without a crop) and gives logits
[N, classes, h, w], or torchvision's {"out": ...}; the answer is the class map at the image's own size as an
8-bit PNG and each class's fraction (handlers/segmentation.py). fp32 only (no int8 or bf16 form). make bench
sends it the bench's photo and checks its largest class under load; make optimize keeps a format whose class map
agrees with fp32's on >= 99% of the pixels of every agreement photo.
"""

from handlers.model_settings import ImageSegmenterSettings
from tskit.kinds import Kind
from tskit.kinds.answers import MASK
from tskit.kinds.inputs import IMAGE_BATCH

TEMPLATE = """\
  inputSize: 520              # the model's input is [N, 3, inputSize, inputSize]: resized, never cropped
  mean: [0.485, 0.456, 0.406]
  std: [0.229, 0.224, 0.225]
  maxImagePixels: 40000000    # a declared width*height above this answers 413 before decoding
  maxMaskBytes: 268435456     # height x width x classes x 4: the logits upsampled before the arg-max (413 above)
  intraOpThreads: 1           # workers x threads <= cores
  # Per-request budgets, answered 413 before decoding (docs/limits-and-overload.md)
  maxItemsPerRequest: 8       # images per KServe request
  maxPixelsPerRequest: 40000000  # declared pixels of all of a request's images (>= maxImagePixels)
"""

KIND = Kind(
    name="image-segmenter",
    handler_file="image_segmenter_handler.py",
    settings=ImageSegmenterSettings,
    model_input=IMAGE_BATCH,
    answer=MASK,
    template=TEMPLATE,
    max_batch_delay=20,  # the image classifier's: no tuned segmenter yet
    v2_outputs=("mask", "width", "height", "labels", "indices", "fractions"),
    bench_workload="jpeg_640x480",  # the bench's photo; make optimize's agreement: the share of equal pixels
    takes_video=True,
)
