"""Shared glue of the text handlers: request text -> token ids per request, padded per sub-batch.

A TorchServe batch is split into sub-batches of similar length (text_tokenization.length_buckets):
one 256-token text padded together with seven 10-token ones makes the pass cost about as much as
eight 256-token texts. Each sub-batch is padded to its own longest item, run, and the outputs are
put back in request order.
"""

from typing import List, Tuple

import torch

from handlers.batch_handler import BatchHandler
from handlers.model_settings import SettingsError, TextSettings
from handlers.protocols import Output
from handlers.request_budget import check_text_chars
from handlers.request_payload import text_request
from handlers.text_tokenization import TextItem, collate_padded, length_buckets, load_tokenizer, tokenize

TRUNCATED = Output("truncated", "BOOL", lambda answer: answer["truncated"], per_item=True)
SubBatch = Tuple[List[int], torch.Tensor, torch.Tensor]  # (item indices, input_ids, attention_mask)


class TextBatchHandler(BatchHandler):
    v2_field = "text"  # a v2 BYTES element is the text, like JSON {"text": ...}
    raw_element_type = "text/plain; charset=utf-8"  # a binary v2 element: the UTF-8 text

    def setup(self, settings: TextSettings) -> None:
        self.max_tokens = settings.maxTokens
        self.tokenizer = load_tokenizer(self.archive_file(settings.tokenizerFile), self.max_tokens)
        self.pad_id = self.tokenizer.token_to_id(settings.padToken)
        if self.pad_id is None:
            raise SettingsError(f"handler.padToken: {settings.padToken!r} is not in {settings.tokenizerFile}")
        # Per-pass cost, in padded-token equivalents, for splitting a batch by length; < 0: never split.
        self.pass_overhead_tokens = settings.bucketOverheadTokens
        self.max_chars = settings.maxTextChars

    def read_input(self, body, content_type) -> str:
        text = text_request(body, content_type)
        check_text_chars(text, self.max_chars)  # before tokenizing: blank or one-word megabytes cost ~1 s each
        return text

    def decode(self, text: str) -> TextItem:
        return tokenize(self.tokenizer, text, self.max_tokens)

    def collate(self, items: List[TextItem]) -> List[SubBatch]:
        if self.pass_overhead_tokens < 0:
            groups = [list(range(len(items)))]
        else:
            groups = length_buckets([len(item.ids) for item in items], self.pass_overhead_tokens)
        return [(group, *collate_padded([items[i] for i in group], self.pad_id, self.device)) for group in groups]

    def inference(self, sub_batches: List[SubBatch]) -> torch.Tensor:
        """One forward pass per sub-batch; rows back in the order of the items."""
        outputs = None
        with torch.inference_mode():
            for indices, ids, mask in sub_batches:
                result = self.model(ids, mask)
                if outputs is None:
                    total = sum(len(group) for group, _, _ in sub_batches)
                    outputs = result.new_empty((total, *result.shape[1:]))
                outputs[torch.tensor(indices, device=result.device)] = result
        return outputs

    def warm_up_items(self) -> List[TextItem]:
        return [tokenize(self.tokenizer, "warm up " * n, self.max_tokens) for n in (1, 8)]
