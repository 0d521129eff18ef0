"""A checked load over the served models: distinct requests with their reference answers, and the closed
loop (tskit.closed_loop) with every answer checked (make soak, and the fault and rollout tests).

Each `Spec` is one distinct request (real photos as JPEG and PNG for image models, texts of three
lengths for text models); `check` compares an answer with the spec's reference. `LoadClient.run` sends
N of them at a fixed concurrency; `LoadClient.background` keeps a load going while a test does something
to the server. Any failure of a request (status, socket, timeout, a wrong answer, an exception) is an
Outcome with its error, never raised.
"""

import io
import json
import math
import random
import threading
from dataclasses import dataclass
from typing import Callable, Iterable, List, Optional

import requests

from tskit.client import TorchServeClient
from tskit.closed_loop import Job, Loop, Outcome, exchange
from tskit.declaration import served
from tskit import kinds

# every one-shot model `make serve` loads, from its declaration; a text generator's answers stream for seconds
# and are checked by their own tests and make bench (G), not by this load
KIND_OF = {d.name: d.kind for d in served() if not kinds.kind(d.kind).streams_every_request}
MODELS = tuple(KIND_OF)
CAT_LABELS = {"Egyptian cat", "tabby", "tiger cat"}
TEXTS = [
    ("The striker scored twice in the final", "Sports"),
    ("Central bank raises interest rates to fight inflation as markets slide across Asia and Europe", "Business"),
    (" ".join(["Astronomers observed a distant planet whose atmosphere contains water vapour"] * 40), None),
]


# ---- requests and their checks ---------------------------------------------------------------------
@dataclass
class Spec:
    """One distinct request: where it goes, its body, and what a right answer looks like."""

    name: str
    model: str
    body: bytes
    content_type: str
    expect_label: Optional[Iterable[str]] = None  # top-1 label must be one of these (None: not checked)
    reference: Optional[dict] = None  # its answer alone, filled in before the run


def _encode(array, fmt: str) -> bytes:
    from PIL import Image
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, fmt)
    return buffer.getvalue()


def default_specs(models: Iterable[str] = MODELS) -> List[Spec]:
    from skimage import data as skimage_data
    specs = []
    for model in models:
        if model in KIND_OF and kinds.kind(KIND_OF[model]).model_input.takes_photos:
            imagenet = model == "mobilenet_v2"  # labels are checked where the model's classes are known
            cat, coffee = skimage_data.chelsea(), skimage_data.coffee()
            specs += [Spec("cat.jpg", model, _encode(cat, "JPEG"), "image/jpeg", CAT_LABELS if imagenet else None),
                      Spec("coffee.jpg", model, _encode(coffee, "JPEG"), "image/jpeg", {"espresso"} if imagenet else None),
                      Spec("cat.png", model, _encode(cat, "PNG"), "image/png", CAT_LABELS if imagenet else None)]
        else:
            for i, (text, label) in enumerate(TEXTS):
                expect = {label} if label and model == "minilm_topics" else None
                specs.append(Spec(f"text{i}", model, text.encode(), "text/plain; charset=utf-8", expect))
    return specs


def check(spec: Spec, status: int, body: bytes) -> Optional[str]:
    """None if the answer is right, else what was wrong. An answer of the wrong shape (a 200 whose JSON
    lacks a field, has the wrong type, ...) is a wrong answer, never an exception."""
    try:
        return _check(spec, status, body)
    except Exception as err:  # KeyError, TypeError, IndexError...: the answer is malformed
        return f"malformed answer ({type(err).__name__}: {err}): {body[:200]!r}"


def _check(spec: Spec, status: int, body: bytes) -> Optional[str]:
    if status != 200:
        return f"HTTP {status}: {body[:200]!r}"
    try:
        answer = json.loads(body)
    except ValueError:
        return f"not JSON: {body[:200]!r}"
    if "embedding" in (spec.reference or answer):
        vector = answer.get("embedding")
        if not isinstance(vector, list) or len(vector) != 384:
            return "no 384-float embedding"
        if spec.reference is not None:
            ref = spec.reference["embedding"]
            cosine = sum(a * b for a, b in zip(vector, ref)) / (
                math.sqrt(sum(a * a for a in vector)) * math.sqrt(sum(b * b for b in ref)))
            if cosine < 0.9999:
                return f"embedding differs from the reference (cosine {cosine:.6f})"
        return None
    predictions = answer.get("predictions")
    if not isinstance(predictions, list) or not predictions:
        return f"no predictions: {body[:200]!r}"
    top = predictions[0]
    if spec.expect_label is not None and top["label"] not in spec.expect_label:
        return f"top-1 {top['label']!r}, expected one of {sorted(spec.expect_label)}"
    if spec.reference is not None:
        ref = spec.reference["predictions"][0]
        if top["label"] != ref["label"] or abs(top["probability"] - ref["probability"]) > 1e-3:
            return f"top-1 {top} differs from the reference {ref}"
    return None


# ---- the client ------------------------------------------------------------------------------
def judge(job: Job, status: int, body: bytes) -> Optional[str]:
    """Every answer checked against its spec's reference (the closed loop's judge)."""
    return check(job.spec, status, body)


class LoadClient:
    """The closed loop (tskit.closed_loop) over specs, every answer checked; the token comes from `key()` on
    every request, e.g. from tskit.client (LoadClient.of), so a key the server renews is picked up."""

    def __init__(self, inference_url: str, key: Callable[[], str], timeout: float = 120):
        self.inference_url = inference_url.rstrip("/")
        self.key = key
        self.timeout = timeout
        self._local = threading.local()

    @classmethod
    def of(cls, client: TorchServeClient, timeout: float = 120) -> "LoadClient":
        """Load on the server `client` talks to, with its inference key."""
        return cls(client.inference_url, lambda: client.key("inference") or "", timeout)

    def job(self, spec: Spec, path: Optional[str] = None) -> Job:
        return Job(f"{self.inference_url}{path or '/predictions/' + spec.model}", spec.body, spec.content_type,
                   spec.name, spec.model, spec=spec)

    def send(self, spec: Spec, path: Optional[str] = None) -> Outcome:
        """One request and its check, on this thread's session. Any exception (socket, timeout, key file, a
        check that raises) is a failed request with status -1 (or the status that came back), never raised."""
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        return exchange(session, lambda: self.job(spec, path), judge, self.key, self.timeout)

    def loop(self, jobs: Callable[[int], Job], concurrency: int, count: Optional[int] = None) -> Loop:
        return Loop(jobs, concurrency, judge, self.key, self.timeout, count=count)

    def run(self, specs: List[Spec], count: int, concurrency: int, seed: int = 0) -> List[Outcome]:
        """`count` requests, cycling over `specs` in a shuffled order, at `concurrency`."""
        order = list(specs) * max(1, math.ceil(count / len(specs)))
        random.Random(seed).shuffle(order)
        return self.loop(lambda i: self.job(order[i]), concurrency, count).run()

    def background(self, specs: List[Spec], concurrency: int, path: Optional[Callable[[Spec], str]] = None) -> Loop:
        """Load that runs until its block ends: `with client.background(specs, 8) as load: ...; load.outcomes`
        (`load.snapshot()`, `load.wait_for(n)` meanwhile), the specs in turn."""
        def job(index: int) -> Job:
            spec = specs[index % len(specs)]
            return self.job(spec, path(spec) if path else None)

        return self.loop(job, concurrency)
