"""text-classifier: a Hugging Face *ForSequenceClassification checkpoint; a text in, every label's probability out."""

from handlers.model_settings import TextClassifierSettings
from tskit.kinds import Kind
from tskit.kinds.answers import LABELS
from tskit.kinds.inputs import TOKEN_BATCH
from tskit.kinds.text import TEXT_TEMPLATE

KIND = Kind(
    name="text-classifier",
    handler_file="text_classifier_handler.py",
    settings=TextClassifierSettings,
    model_input=TOKEN_BATCH,
    answer=LABELS,
    template=TEXT_TEMPLATE,
    max_batch_delay=5,  # what `make tune` chose for the MiniLM models (docs/performance.md)
    v2_outputs=("labels", "indices", "probabilities", "truncated"),
    int8_format="torchscript",  # dynamic int8 Linear layers are a TorchScript (eager quantized) module
    # MiniLM in process on AVX512_BF16/AMX: TorchScript bf16 2.7x TorchScript fp32 (builds in a second),
    # AOTInductor bf16 3.2x (a 20 s compile); make optimize measures both, QUICK=1 TorchScript only
    bf16_formats=("torchscript", "aoti"),
    openvino_precisions=("bf16",),  # int8: the dynamic TorchScript form
    bench_workload="text_medium",  # a news paragraph: the package's typical request
)
