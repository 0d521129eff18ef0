"""text-embedding: a Hugging Face encoder, mean-pooled and L2-normalised (sentence-transformers' definition)."""

from handlers.model_settings import TextEmbeddingSettings
from tskit.kinds import Kind
from tskit.kinds.answers import EMBEDDING
from tskit.kinds.inputs import TOKEN_BATCH
from tskit.kinds.text import TEXT_TEMPLATE

KIND = Kind(
    name="text-embedding",
    handler_file="text_embedding_handler.py",
    settings=TextEmbeddingSettings,
    model_input=TOKEN_BATCH,
    answer=EMBEDDING,
    template=TEXT_TEMPLATE,
    max_batch_delay=5,  # as the text classifier (tuned on the same MiniLM)
    v2_outputs=("embedding", "truncated"),
    int8_format="torchscript",
    bf16_formats=("torchscript", "aoti"),  # as the text classifier (the same encoder)
    openvino_precisions=("bf16",),  # int8: the dynamic TorchScript form
    bench_workload="text_medium",
)
