"""Logits -> the contract's top-k predictions: label, index, probability, most probable first."""

import json
from typing import Dict, List, Sequence

import torch

from handlers.protocols import Output

# A classifier's v2 outputs: [n, k] labels, indices and probabilities, most probable first.
CLASSIFIER_OUTPUTS = (
    Output("labels", "BYTES", lambda answer: [p["label"] for p in answer["predictions"]]),
    Output("indices", "INT64", lambda answer: [p["index"] for p in answer["predictions"]]),
    Output("probabilities", "FP32", lambda answer: [p["probability"] for p in answer["predictions"]]),
)


def load_labels(path: str) -> List[str]:
    """Labels from an index_to_name.json ({"0": "tench", ...}), as a list indexed by class."""
    with open(path, encoding="utf-8") as f:
        mapping = json.load(f)
    labels = [None] * len(mapping)
    for key, name in mapping.items():
        labels[int(key)] = name[-1] if isinstance(name, list) else name  # stock [wnid, name] form too
    if any(label is None for label in labels):
        raise ValueError(f"{path}: class indices are not 0..{len(labels) - 1}")
    return labels


def top_k_predictions(
    logits: torch.Tensor, labels: Sequence[str], ks: Sequence[int]
) -> List[List[Dict[str, object]]]:
    """Per row of `logits` [N, C], its top ks[i] classes (capped at C) by softmax probability."""
    num_classes = logits.shape[-1]
    if num_classes != len(labels):
        raise ValueError(f"model gives {num_classes} classes but there are {len(labels)} labels")
    probabilities = torch.softmax(logits.float(), dim=-1)
    k_max = min(max(ks), num_classes) if len(ks) else 0
    top_p, top_i = probabilities.topk(k_max, dim=-1)  # sorted, descending
    top_p, top_i = top_p.cpu().tolist(), top_i.cpu().tolist()
    return [
        [
            {"label": labels[index], "index": index, "probability": p}
            for p, index in zip(row_p[: min(k, num_classes)], row_i[: min(k, num_classes)])
        ]
        for row_p, row_i, k in zip(top_p, top_i, ks)
    ]
