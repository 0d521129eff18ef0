"""Agreement of a variant with the fp32 reference, computed from the answers the servers gave; the probes
and the measure follow the kind's input family and answer (tskit.kinds):

    image classifier  >= 100 real photos and their crops/flips/rescales (tskit.real_images.agreement_images),
                      every class's probability asked for: top-1 agreement and the largest change of any
                      class's probability
    text classifier   the 48 labelled headlines of tests/data/topic_headlines.json: top-1 agreement, largest
                      probability change, and accuracy against the labels
    text embedding    the headlines and the bench's texts: the smallest cosine between the two embeddings
"""

import base64
import json
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Dict, List, Optional

from tskit.client import TorchServeClient
from tskit import kinds
from tskit.declaration import REPO

HEADLINES = os.path.join(REPO, "tests", "data", "topic_headlines.json")
ALL_CLASSES = 100000  # topk asked for: the handler caps it at the number of classes


@dataclass
class Probe:
    name: str
    body: bytes
    content_type: str
    truth: Optional[str] = None  # the right label, where known


def headlines() -> List[tuple]:
    with open(HEADLINES, encoding="utf-8") as f:
        document = json.load(f)["headlines"]
    return [(label, text) for label, texts in document.items() for text in texts]


def probes(kind: str, min_images: int = 100, extra_texts: Optional[Dict[str, str]] = None) -> List[Probe]:
    if kinds.kind(kind).family == "image":
        from tskit.real_images import agreement_images

        return [Probe(name, json.dumps({"image": base64.b64encode(data).decode(), "topk": ALL_CLASSES}).encode(),
                      "application/json") for name, data in agreement_images(min_images)]
    out = [Probe(f"headline {i}", json.dumps({"text": text}).encode(), "application/json", label)
           for i, (label, text) in enumerate(headlines())]
    if kinds.kind(kind).answer == "embedding":  # no label to know: any text compares two embeddings
        out += [Probe(name, json.dumps({"text": text}).encode(), "application/json")
                for name, text in (extra_texts or {}).items()]
    return out


def collect(client: TorchServeClient, model: str, items: List[Probe], workers: int = 4) -> List[object]:
    """The parsed answer of `model` to each probe (through tskit.client, one session per thread), or the error
    as a string."""
    local = threading.local()

    def ask(probe: Probe):
        try:
            if not hasattr(local, "client"):
                local.client = client.with_session()
            response = local.client.infer(model, probe.body, probe.content_type, timeout=120)
            if response.status_code != 200:
                return f"status {response.status_code}: {response.text[:200]}"
            return response.json()
        except Exception as err:  # counted as a failed probe
            return f"{type(err).__name__}: {err}"

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(ask, items))


def _distribution(answer) -> Dict[str, float]:
    return {p["label"]: float(p["probability"]) for p in answer["predictions"]}


def compare(kind: str, items: List[Probe], reference: List[object], answers: List[object]) -> dict:
    """Agreement of `answers` with `reference` (same probes, same order)."""
    failed = sum(isinstance(a, str) for a in answers) + sum(isinstance(r, str) for r in reference)
    pairs = [(p, r, a) for p, r, a in zip(items, reference, answers) if not isinstance(a, str) and not isinstance(r, str)]
    out = {"probes": len(items), "failed": failed}
    if not pairs:
        return out
    out.update(MEASURES[kinds.kind(kind).answer](pairs))
    return out


def cosine_agreement(pairs: List[tuple]) -> dict:
    """Embeddings: the smallest and the mean cosine between reference and answer."""
    cosines = []
    for _, r, a in pairs:
        x, y = r["embedding"], a["embedding"]
        dot = sum(i * j for i, j in zip(x, y))
        norm = math.sqrt(sum(i * i for i in x)) * math.sqrt(sum(j * j for j in y))
        cosines.append(dot / norm if norm and len(x) == len(y) else 0.0)
    return {"min_cosine": min(cosines), "mean_cosine": sum(cosines) / len(cosines)}


def top1_agreement(pairs: List[tuple]) -> dict:
    """Labels: top-1 agreement, the largest change of any label's probability, accuracy where the truth is known."""
    same, largest, right, known = 0, 0.0, 0, 0
    for probe, r, a in pairs:
        p, q = _distribution(r), _distribution(a)
        same += r["predictions"][0]["label"] == a["predictions"][0]["label"]
        largest = max(largest, max(abs(p.get(k, 0.0) - q.get(k, 0.0)) for k in set(p) | set(q)))
        if probe.truth is not None:
            known += 1
            right += a["predictions"][0]["label"] == probe.truth
    out = {"top1_agreement": same / len(pairs), "max_prob_change": largest}
    if known:
        out.update(accuracy=right / known, right=right, labelled=known)
    return out


# the measure of each answer shape (a Kind's `answer`); its keys name the Kind's agreement_metric
MEASURES = {"embedding": cosine_agreement, "labels": top1_agreement}


def keeps_agreement(result: dict, kind: str, threshold: float = 0.99) -> bool:
    """Top-1 agreement >= threshold (embeddings: smallest cosine >= threshold), with no failed probe."""
    if result.get("failed"):
        return False
    value = result.get(kinds.kind(kind).agreement_metric)
    return value is not None and value >= threshold
