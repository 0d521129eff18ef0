"""image-classifier: ImageNet-style classifiers in any model format; an image in, the top-k labels out."""

from handlers.model_settings import ImageClassifierSettings
from tskit.kinds import Kind
from tskit.kinds.answers import LABELS
from tskit.kinds.inputs import IMAGE_BATCH

TEMPLATE = """\
  topk: 5                     # predictions per answer (capped at the number of classes)
  resizeSize: 256             # preprocessing: resize the short side to this, then centre-crop to cropSize
  cropSize: 224               # the model's input is [N, 3, cropSize, cropSize], normalised with mean/std
  mean: [0.485, 0.456, 0.406]
  std: [0.229, 0.224, 0.225]
  maxImagePixels: 40000000    # a declared width*height above this answers 413 before decoding
  intraOpThreads: 1           # workers x threads <= cores
  # Per-request budgets, answered 413 before decoding (docs/limits-and-overload.md): keep
  # batchSize x maxItemsPerRequest x the model's time per image well under responseTimeout
  maxItemsPerRequest: 32      # images per KServe request
  maxPixelsPerRequest: 40000000  # declared pixels of all of a request's images (>= maxImagePixels)
"""

KIND = Kind(
    name="image-classifier",
    handler_file="image_classifier_handler.py",
    settings=ImageClassifierSettings,
    model_input=IMAGE_BATCH,
    answer=LABELS,
    template=TEMPLATE,
    max_batch_delay=20,  # what `make tune` chose for mobilenet_v2 (docs/performance.md)
    v2_outputs=("labels", "indices", "probabilities"),
    int8_format="onnx",  # static int8 calibrated on real photos needs ONNX Runtime's quantiser
    # bf16 through AOTInductor only: 2.1x TorchScript fp32 for mobilenet_v2 in process on AVX512_BF16/AMX,
    # where TorchScript bf16 (frozen, optimize_for_inference) ran at 0.54x; ONNX Runtime's CPU has no bf16 Conv
    bf16_formats=("aoti",),
    openvino_precisions=("bf16", "int8"),
    bench_workload="jpeg_640x480",  # a real photo at a typical camera size
    stock_handler="image_classifier",
    formats_target=1.3,
    takes_video=True,
)
