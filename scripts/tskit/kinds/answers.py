"""What a kind's answer carries (a Kind's `answer`): one object per answer form, and every tool asks it instead of
testing a kind's name.

    LABELS      {"predictions": [{"label", "probability"}, ...]}: image and text classifiers
    EMBEDDING   {"embedding": [...]} (unit length): text embedders
    DETECTIONS  {"detections": [...]}: object detectors
    MASK        {"classes": [{"label", "index", "fraction"}], "mask": {PNG}}: segmenters
    TEXT        generated text: causal LMs

Each says how a source's module is turned into the model that gives it (a checkpoint's head, a detector's
classes, a segmenter's logits), how two servers' answers to the same probes agree (make optimize, the bench's
formats) and what a right answer looks like under load (make bench's answer checks). Heavy modules are
imported inside the methods that need them: this package stays light for the commands that only look a kind up.
"""

import base64
import io
import math
from typing import Dict, List, Optional, Tuple

ALL_CLASSES = 100000  # topk asked for by agreement probes: the handler caps it at the number of classes
CHECK_EVERY = 10  # every n-th answer of a load point is checked (wrk: of each of its threads)
# Served answers of one input differ a little with the batch they ran in (kernel choice): the same
# embedding stays above this cosine, another text's embedding is far below it.
MIN_COSINE = 0.999


class Answer:
    name = ""
    metric: Optional[str] = None   # the agreement measure make optimize holds a variant to; None: none
    labelled = False               # answers name the model's labels (its top-1 can be known right)
    unit_length = False            # answers are unit vectors: a bf16 form is normalised again in float32
    probe_options: Dict[str, int] = {}  # what each agreement probe asks for beyond its input
    columns: Tuple[str, str] = ("", "")  # make optimize's report: the agreement's two columns

    def shown(self, value: Optional[float]) -> str:
        """An agreement value as the reports write it."""
        return "-" if value is None else f"{value:.1%}"

    def cells(self, agreement: dict) -> Tuple[str, str]:
        """The report's two agreement columns of one variant."""
        return self.shown(agreement.get(self.metric)), "-"

    def adapt_source(self, loaded):
        """The loaded source as the model that gives this answer (tskit.sources)."""
        return loaded

    def from_checkpoint(self, folder: str):
        """(module, labels) from a Hugging Face checkpoint folder; SourceError where this answer has no such model."""
        from tskit.sources import SourceError

        raise SourceError(f"{folder} is a folder: expected a .pt, .pt2 or .onnx file")

    def agreement(self, pairs: List[tuple]) -> dict:
        """How (probe, reference answer, answer) pairs agree: the measures, `metric` among them."""
        raise NotImplementedError

    def check(self, answer: dict, known: Optional[Tuple[str, ...]]):
        """The tskit.load.AnswerCheck a sample of every load point's answers must pass, from a lone answer
        (AssertionError when that answer is already wrong; `known`: the right top-1 labels, where known)."""
        from tskit.load import AnswerCheck

        return AnswerCheck("", every=CHECK_EVERY)  # status only


class Labels(Answer):
    name = "labels"
    metric = "top1_agreement"
    labelled = True
    probe_options = {"topk": ALL_CLASSES}  # every class's probability, to measure the largest change
    columns = ("top-1 agreement", "max prob change")

    def cells(self, agreement: dict) -> Tuple[str, str]:
        accuracy = agreement.get("accuracy")
        change = agreement.get("max_prob_change")
        return (self.shown(agreement.get("top1_agreement")) + (f" (accuracy {accuracy:.1%})" if accuracy is not None
                                                               else ""), "-" if change is None else f"{change:.3f}")

    def from_checkpoint(self, folder: str):
        from tskit.sources import sequence_classifier

        return sequence_classifier(folder)

    def agreement(self, pairs: List[tuple]) -> dict:
        """Top-1 agreement, the largest change of any label's probability, accuracy where the truth is known."""
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

    def check(self, answer: dict, known: Optional[Tuple[str, ...]]):
        from tskit.load import AnswerCheck

        labels = [p["label"] for p in answer["predictions"]]
        if known is not None:
            assert labels[0] in known, f"answered {labels[0]} (expected one of {known})"
        return AnswerCheck("first_label", tuple(known or (labels[0],)), labels=len(labels), every=CHECK_EVERY)


class Embedding(Answer):
    name = "embedding"
    metric = "min_cosine"
    unit_length = True
    columns = ("min cosine", "mean cosine")

    def shown(self, value: Optional[float]) -> str:
        return "-" if value is None else f"{value:.5f}"  # cosines near 1: digits, not %

    def cells(self, agreement: dict) -> Tuple[str, str]:
        return self.shown(agreement.get("min_cosine")), self.shown(agreement.get("mean_cosine"))

    def from_checkpoint(self, folder: str):
        from tskit.sources import mean_pooled_encoder

        return mean_pooled_encoder(folder), None

    def agreement(self, pairs: List[tuple]) -> dict:
        """The smallest and the mean cosine between reference and answer."""
        cosines = [_cosine(r["embedding"], a["embedding"]) for _, r, a in pairs]
        return {"min_cosine": min(cosines), "mean_cosine": sum(cosines) / len(cosines)}

    def check(self, answer: dict, known: Optional[Tuple[str, ...]]):
        from tskit.load import AnswerCheck

        vector = answer["embedding"]
        assert vector and abs(sum(x * x for x in vector) - 1) < 1e-3, "embedding not L2-normalised"
        return AnswerCheck("cosine", reference=tuple(vector), min_cosine=MIN_COSINE, every=CHECK_EVERY)


class Detections(Answer):
    name = "detections"

    def adapt_source(self, loaded):
        from tskit.sources import as_detector

        return as_detector(loaded)


class Mask(Answer):
    name = "mask"
    metric = "pixel_agreement"
    columns = ("equal pixels (worst photo)", "equal pixels (all)")

    def shown(self, value: Optional[float]) -> str:
        return "-" if value is None else f"{value:.3%}"  # one pixel in 100,000 still shows

    def cells(self, agreement: dict) -> Tuple[str, str]:
        return self.shown(agreement.get("pixel_agreement")), self.shown(agreement.get("mean_pixel_agreement"))

    def adapt_source(self, loaded):
        from tskit.sources import segmenter_source

        return segmenter_source(loaded)

    def agreement(self, pairs: List[tuple]) -> dict:
        """The share of pixels given the same class: the smallest over the probes and over all pixels."""
        same = total = 0
        worst = 1.0
        for _, r, a in pairs:
            x, y = _class_map(r), _class_map(a)
            equal = int((x == y).sum()) if x.shape == y.shape else 0
            same, total = same + equal, total + x.size
            worst = min(worst, equal / x.size)
        return {"pixel_agreement": worst, "mean_pixel_agreement": same / total}

    def check(self, answer: dict, known: Optional[Tuple[str, ...]]):
        from tskit.load import AnswerCheck

        # the class covering most of the picture: the first "label" (classes come largest first)
        return AnswerCheck("first_label", (answer["classes"][0]["label"],), every=CHECK_EVERY)


class Text(Answer):
    name = "text"


def _distribution(answer) -> Dict[str, float]:
    return {p["label"]: float(p["probability"]) for p in answer["predictions"]}


def _cosine(x, y) -> float:
    dot = sum(i * j for i, j in zip(x, y))
    norm = math.sqrt(sum(i * i for i in x)) * math.sqrt(sum(j * j for j in y))
    return dot / norm if norm and len(x) == len(y) else 0.0


def _class_map(answer):
    """A mask answer's class map (its 8-bit PNG) as a numpy array."""
    import numpy
    from PIL import Image

    return numpy.asarray(Image.open(io.BytesIO(base64.b64decode(answer["mask"]["data"]))))


LABELS, EMBEDDING, DETECTIONS, MASK, TEXT = Labels(), Embedding(), Detections(), Mask(), Text()
