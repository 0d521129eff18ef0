"""TorchServe handler for the `text-classifier` kind: {"predictions": [...all labels...], "truncated": bool}.

Labels come from index_to_name.json in the archive; every label is returned (topk defaults to
the number of labels), most probable first. TorchServe requires exactly one class here.
"""

from typing import List

import torch

from handlers.batch_handler import PreparedBatch
from handlers.classification import CLASSIFIER_OUTPUTS, load_labels, top_k_predictions
from handlers.model_settings import TextClassifierSettings, check_labels
from handlers.request_budget import label_bytes, predictions_item_bytes
from handlers.text_batch_handler import TRUNCATED, TextBatchHandler


class TextClassifierHandler(TextBatchHandler):
    kind = "text-classifier"
    settings_class = TextClassifierSettings
    outputs = CLASSIFIER_OUTPUTS + (TRUNCATED,)
    def setup(self, settings: TextClassifierSettings) -> None:
        super().setup(settings)
        self.labels_file = settings.labelsFile
        self.labels = load_labels(self.archive_file(settings.labelsFile))
        self.topk = settings.topk or len(self.labels)
        self.longest_label = label_bytes(self.labels)

    def answer_item_bytes(self, topk) -> int:
        return predictions_item_bytes(min(topk or self.topk, len(self.labels)), self.longest_label)

    def check_outputs(self, logits: torch.Tensor) -> None:
        check_labels(self.labels, logits.shape[-1], self.labels_file)

    def postprocess(self, logits: torch.Tensor, batch: PreparedBatch) -> List[dict]:
        tops = top_k_predictions(logits, self.labels, [topk or self.topk for topk in batch.topks])
        return [{"predictions": top, "truncated": item.truncated} for top, item in zip(tops, batch.items)]
