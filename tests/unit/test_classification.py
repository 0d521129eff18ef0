"""top_k_predictions: sorted, capped at the number of classes, per-row k, labels by index."""

import json

import pytest
import torch

from handlers.classification import load_labels, top_k_predictions

LABELS = ["zero", "one", "two", "three"]


def test_sorted_descending_with_labels_and_indices():
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.0]])
    [top] = top_k_predictions(logits, LABELS, [3])
    assert [p["index"] for p in top] == [1, 3, 2]
    assert [p["label"] for p in top] == ["one", "three", "two"]
    probabilities = [p["probability"] for p in top]
    assert probabilities == sorted(probabilities, reverse=True)
    assert probabilities[0] == pytest.approx(torch.softmax(logits, -1)[0, 1].item())


def test_k_is_capped_at_the_number_of_classes():
    [top] = top_k_predictions(torch.randn(1, 4), LABELS, [1000])
    assert len(top) == 4
    assert sum(p["probability"] for p in top) == pytest.approx(1.0, abs=1e-6)


def test_each_row_has_its_own_k():
    tops = top_k_predictions(torch.randn(3, 4), LABELS, [1, 2, 4])
    assert [len(t) for t in tops] == [1, 2, 4]


def test_label_count_mismatch_is_an_error():
    with pytest.raises(ValueError, match="5 classes but there are 4 labels"):
        top_k_predictions(torch.randn(1, 5), LABELS, [1])


def test_load_labels_accepts_plain_and_stock_forms(tmp_path):
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps({"1": "b", "0": "a"}))
    stock = tmp_path / "stock.json"
    stock.write_text(json.dumps({"0": ["n01440764", "tench"], "1": ["n01443537", "goldfish"]}))
    assert load_labels(str(plain)) == ["a", "b"]
    assert load_labels(str(stock)) == ["tench", "goldfish"]
    gap = tmp_path / "gap.json"
    gap.write_text(json.dumps({"0": "a", "2": "c"}))
    with pytest.raises((ValueError, IndexError)):
        load_labels(str(gap))
