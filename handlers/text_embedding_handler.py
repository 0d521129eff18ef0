"""TorchServe handler for the `text-embedding` kind: {"embedding": [floats], "truncated": bool}.

The model (any format; built by scripts/tskit) already mean-pools and L2-normalises; this
handler only tokenizes, batches and serialises. TorchServe requires exactly one class here.
"""

from typing import List

import torch

from handlers.batch_handler import PreparedBatch
from handlers.model_settings import TextEmbeddingSettings
from handlers.protocols import Output
from handlers.request_budget import embedding_item_bytes
from handlers.text_batch_handler import TRUNCATED, TextBatchHandler


class TextEmbeddingHandler(TextBatchHandler):
    kind = "text-embedding"
    settings_class = TextEmbeddingSettings
    outputs = (Output("embedding", "FP32", lambda answer: answer["embedding"]), TRUNCATED)

    width = 0  # floats per embedding, from the warm-up's output

    def check_outputs(self, embeddings: torch.Tensor) -> None:
        self.width = embeddings.shape[-1]

    def answer_item_bytes(self, topk) -> int:
        return embedding_item_bytes(self.width)

    def postprocess(self, embeddings: torch.Tensor, batch: PreparedBatch) -> List[dict]:
        rows = embeddings.float().cpu().tolist()
        return [{"embedding": row, "truncated": item.truncated} for row, item in zip(rows, batch.items)]
