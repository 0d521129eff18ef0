"""TorchServe handler for text classifiers: {"predictions": [...all labels...], "truncated": bool}.

Labels come from index_to_name.json in the archive; every label is returned (topk defaults to
the number of labels), most probable first. TorchServe requires exactly one class here.
"""

import os
from typing import List

import torch

from batch_handler import PreparedBatch
from classification import load_labels, top_k_predictions
from text_batch_handler import TextBatchHandler


class TextClassifierHandler(TextBatchHandler):
    def setup(self, config: dict) -> None:
        super().setup(config)
        self.labels = load_labels(os.path.join(self.model_dir, config.get("labelsFile", "index_to_name.json")))
        self.topk = int(config.get("topk", len(self.labels)))

    def postprocess(self, logits: torch.Tensor, batch: PreparedBatch) -> List[dict]:
        tops = top_k_predictions(logits, self.labels, [self.topk] * len(batch.items))
        return [{"predictions": top, "truncated": item.truncated} for top, item in zip(tops, batch.items)]
