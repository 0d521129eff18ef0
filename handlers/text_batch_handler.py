"""Shared glue of the text handlers: request text -> token ids per request, padded per batch."""

import os
from typing import List, Tuple

import torch

from batch_handler import BatchHandler
from request_payload import text_request
from text_tokenization import TextItem, collate_padded, load_tokenizer, tokenize


class TextBatchHandler(BatchHandler):
    def setup(self, config: dict) -> None:
        self.max_tokens = int(config.get("maxTokens", 256))
        self.tokenizer = load_tokenizer(
            os.path.join(self.model_dir, config.get("tokenizerFile", "tokenizer.json")), self.max_tokens
        )
        self.pad_id = self.tokenizer.token_to_id(config.get("padToken", "[PAD]"))

    def decode(self, body, content_type) -> TextItem:
        return tokenize(self.tokenizer, text_request(body, content_type), self.max_tokens)

    def collate(self, items: List[TextItem]) -> Tuple[torch.Tensor, torch.Tensor]:
        return collate_padded(items, self.pad_id, self.device)

    def inference(self, inputs: Tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        with torch.inference_mode():
            return self.model(*inputs)

    def warm_up_items(self) -> List[TextItem]:
        return [tokenize(self.tokenizer, "warm up " * n, self.max_tokens) for n in (1, 8)]
