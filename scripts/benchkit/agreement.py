"""Agreement of a variant with the fp32 reference, computed from the answers the servers gave; the probes
follow what the kind's model takes, the measure what its answer carries (tskit.kinds' model_input and answer):

    photos            >= 100 real photos and their crops/flips/rescales (tskit.real_images.agreement_images),
                      with the answer's probe options (a classifier: every class's probability)
    texts             the 48 labelled headlines of tests/data/topic_headlines.json (and, for answers that name no
                      label, the bench's texts)
    labels            top-1 agreement, the largest change of any class's probability, accuracy against the labels
    embedding         the smallest cosine between the two embeddings
    mask              the smallest share of pixels given the same class over the probes
"""

import base64
import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Dict, List, Optional

from tskit.client import TorchServeClient
from tskit import kinds
from tskit.declaration import REPO

HEADLINES = os.path.join(REPO, "tests", "data", "topic_headlines.json")


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
    k = kinds.kind(kind)
    if k.model_input.takes_photos:
        from tskit.real_images import agreement_images

        return [Probe(name, json.dumps({"image": base64.b64encode(data).decode(), **k.answer.probe_options}).encode(),
                      "application/json") for name, data in agreement_images(min_images)]
    out = [Probe(f"headline {i}", json.dumps({"text": text}).encode(), "application/json", label)
           for i, (label, text) in enumerate(headlines())]
    if not k.answer.labelled:  # no label to know: any text compares two answers
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


def compare(kind: str, items: List[Probe], reference: List[object], answers: List[object]) -> dict:
    """Agreement of `answers` with `reference` (same probes, same order)."""
    failed = sum(isinstance(a, str) for a in answers) + sum(isinstance(r, str) for r in reference)
    pairs = [(p, r, a) for p, r, a in zip(items, reference, answers) if not isinstance(a, str) and not isinstance(r, str)]
    out = {"probes": len(items), "failed": failed}
    if not pairs:
        return out
    out.update(kinds.kind(kind).answer.agreement(pairs))
    return out


def keeps_agreement(result: dict, kind: str, threshold: float = 0.99) -> bool:
    """The kind's agreement metric >= threshold (top-1 agreement, the smallest cosine, the smallest share of
    pixels), with no failed probe."""
    if result.get("failed"):
        return False
    value = result.get(kinds.kind(kind).agreement_metric)
    return value is not None and value >= threshold
