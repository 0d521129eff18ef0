"""A/B comparison of two models (or two versions of one) on the running server, before a rollout.

    tsctl.py compare minilm_topics minilm_topics_int8 --inputs texts/
    tsctl.py compare mobilenet_v2/1.0 mobilenet_v2/2.0 --inputs photos/ --concurrency 4

Every input (an image file, or a .txt file holding one text) goes to both sides; then:
- agreement: classifiers, top-1 agreement and the largest and mean change of a label's probability
  (over the labels both answers list); embeddings, the cosine of the two vectors;
- the inputs where they disagree (another top-1, or a cosine under DISAGREE_COSINE);
- speed: each side's p50/p99 latency and throughput at the stated concurrency (the one closed loop,
  tskit.closed_loop, and the one summary, tskit.load.summary), the two sides measured in alternating
  rounds (A, B, A, B) so that drift of this machine's load hits both alike.
The report is printed (markdown) and written with a PNG into --out.
"""

import json
import math
import os
import statistics
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from tskit.client import IMAGE_SUFFIXES, ClientError, TorchServeClient, file_body
from tskit.closed_loop import Job, Loop, Outcome
from tskit.load import summary

DISAGREE_COSINE = 0.99
ROUNDS = 2  # per side, alternating


@dataclass
class Side:
    """`model` or `model/version` on the server, and what its speed rounds sent (the closed loop's outcomes)."""
    spec: str
    model: str = ""
    version: Optional[str] = None
    outcomes: List[Outcome] = field(default_factory=list)
    seconds: float = 0.0

    def __post_init__(self):
        self.model, _, version = self.spec.partition("/")
        self.version = version or None

    def speed(self, concurrency: int) -> dict:
        """The report's speed row: tskit.load.summary of every round, and the right answers' latencies."""
        result = summary(self.outcomes, self.seconds, concurrency)
        return {"p50_ms": result.p50_ms, "p99_ms": result.p99_ms, "throughput_rps": result.throughput,
                "requests": result.requests, "failed": result.errors,
                "latencies_ms": [o.seconds * 1e3 for o in self.outcomes if o.error is None]}


def read_inputs(folder: str) -> Dict[str, Tuple[bytes, str]]:
    """{file name: (body, Content-Type)} for the images and .txt files of `folder`."""
    names = sorted(n for n in os.listdir(folder)
                   if os.path.splitext(n)[1].lower() in IMAGE_SUFFIXES | {".txt"})
    if not names:
        raise ClientError(f"{folder} has no image or .txt file to send")
    return {n: file_body(os.path.join(folder, n)) for n in names}


def answers_of(client: TorchServeClient, side: Side, inputs: Dict[str, Tuple[bytes, str]]) -> Dict[str, dict]:
    return {name: client.predict(side.model, body, kind, side.version) for name, (body, kind) in inputs.items()}


def measure(client: TorchServeClient, side: Side, inputs: Dict[str, Tuple[bytes, str]], concurrency: int,
            requests: int) -> None:
    """`requests` calls (the inputs in turn) from the closed loop at `concurrency`, with the client's key and
    timeout; outcomes and wall time added to side."""
    bodies, url = list(inputs.values()), client.prediction_url(side.model, side.version)

    def job(index: int) -> Job:
        body, content_type = bodies[index % len(bodies)]
        return Job(url, body, content_type, model=side.spec)

    loop = Loop(job, concurrency, key=lambda: client.key("inference") or "", timeout=client.timeout, count=requests)
    side.outcomes += loop.run()
    side.seconds += loop.seconds


def agreement(a: Dict[str, dict], b: Dict[str, dict]) -> dict:
    """Per-input comparison of two answers of the same input, and the summary."""
    rows = {name: _compare_answers(a[name], b[name]) for name in a}
    if all("cosine" in r for r in rows.values()):
        cosines = [r["cosine"] for r in rows.values()]
        return {"kind": "embedding", "rows": rows, "mean_cosine": statistics.fmean(cosines),
                "min_cosine": min(cosines), "disagree": [n for n, r in rows.items() if r["cosine"] < DISAGREE_COSINE]}
    compared = [r for r in rows.values() if r["shared_labels"]]
    return {"kind": "classifier", "rows": rows, "top1_agreement": statistics.fmean(r["same_top1"] for r in rows.values()),
            "max_probability_change": max((r["max_change"] for r in compared), default=None),
            "mean_probability_change": statistics.fmean(r["mean_change"] for r in compared) if compared else None,
            "no_shared_label": sum(not r["shared_labels"] for r in rows.values()),
            "disagree": [n for n, r in rows.items() if not r["same_top1"]]}


def _compare_answers(x: dict, y: dict) -> dict:
    if "embedding" in x and "embedding" in y:
        u, v = x["embedding"], y["embedding"]
        dot = sum(p * q for p, q in zip(u, v))
        norm = math.sqrt(sum(p * p for p in u)) * math.sqrt(sum(q * q for q in v))
        return {"cosine": dot / norm if norm else 0.0}
    if "predictions" not in x or "predictions" not in y:
        raise ClientError("compare needs two classifiers (answers with predictions) or two embedding models")
    px = {p["label"]: p["probability"] for p in x["predictions"]}
    py = {p["label"]: p["probability"] for p in y["predictions"]}
    # top-k answers: a label outside one side's top-k has no probability there to compare
    changes = [abs(px[label] - py[label]) for label in px if label in py]
    top_x, top_y = x["predictions"][0]["label"], y["predictions"][0]["label"]
    return {"same_top1": top_x == top_y, "top1": (top_x, top_y), "shared_labels": len(changes),
            "max_change": max(changes) if changes else None,
            "mean_change": statistics.fmean(changes) if changes else None}


def compare(client: TorchServeClient, spec_a: str, spec_b: str, folder: str, concurrency: int = 4,
            requests_per_round: int = 0) -> dict:
    """The comparison as a dict (what `report_markdown` and `plot` draw)."""
    inputs = read_inputs(folder)
    a, b = Side(spec_a), Side(spec_b)
    agree = agreement(answers_of(client, a, inputs), answers_of(client, b, inputs))
    per_round = requests_per_round or max(4 * concurrency, 2 * len(inputs))
    for _ in range(ROUNDS):
        for side in (a, b):
            measure(client, side, inputs, concurrency, per_round)
    speed = {s.spec: s.speed(concurrency) for s in (a, b)}
    return {"a": spec_a, "b": spec_b, "inputs": len(inputs), "concurrency": concurrency, "agreement": agree,
            "speed": speed}


def report_markdown(result: dict) -> str:
    a, b, agree, speed = result["a"], result["b"], result["agreement"], result["speed"]
    lines = [f"# {a} vs {b}", "", f"{result['inputs']} inputs, each sent to both; speed at concurrency "
             f"{result['concurrency']}, {ROUNDS} alternating rounds per side.", "", "## Agreement", ""]
    if agree["kind"] == "embedding":
        lines += [f"- mean cosine {agree['mean_cosine']:.5f}, lowest {agree['min_cosine']:.5f}"]
    else:
        lines += [f"- top-1 agreement {agree['top1_agreement']:.1%}"]
        if agree["max_probability_change"] is not None:
            lines += [f"- probability change of a label both answers list: largest "
                      f"{agree['max_probability_change']:.4f}, mean {agree['mean_probability_change']:.4f}"]
        if agree["no_shared_label"]:
            lines += [f"- {agree['no_shared_label']} inputs: no label in both top-k answers"]
    lines += ["", "## Speed", "", "| side | p50 ms | p99 ms | req/s | requests | failed |", "| --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {s} | {v['p50_ms']:.1f} | {v['p99_ms']:.1f} | {v['throughput_rps']:.1f} | {v['requests']} | {v['failed']} |"
              for s, v in speed.items()]
    lines += ["", "## Inputs where they disagree", ""]
    rows = agree["rows"]
    if not agree["disagree"]:
        lines.append("none")
    for name in agree["disagree"]:
        row = rows[name]
        lines.append(f"- {name}: " + (f"cosine {row['cosine']:.4f}" if "cosine" in row else
                                      f"{row['top1'][0]} vs {row['top1'][1]} ({_change(row)})"))
    return "\n".join(lines) + "\n"


def _change(row: dict) -> str:
    if row["max_change"] is None:
        return "no label in both top-k"
    return f"largest change {row['max_change']:.3f}"


def plot(result: dict, path: str) -> None:
    """Latency distributions of both sides, and per-input agreement."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for spec, values in result["speed"].items():
        left.hist(values["latencies_ms"], bins=30, alpha=0.6, label=f"{spec} (p50 {values['p50_ms']:.0f} ms)")
    left.set(xlabel="latency (ms)", ylabel="requests", title=f"latency at concurrency {result['concurrency']}")
    left.legend()
    rows = result["agreement"]["rows"]
    names = list(rows)
    values = [rows[n]["cosine"] if "cosine" in rows[n] else (rows[n]["max_change"] or 0.0) for n in names]
    right.bar(range(len(names)), values)
    right.set(xlabel="input", title="cosine per input" if result["agreement"]["kind"] == "embedding"
              else "largest probability change per input")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def write_report(result: dict, out: str) -> Dict[str, str]:
    os.makedirs(out, exist_ok=True)
    paths = {"markdown": os.path.join(out, "compare.md"), "png": os.path.join(out, "compare.png"),
             "json": os.path.join(out, "compare.json")}
    with open(paths["markdown"], "w", encoding="utf-8") as f:
        f.write(report_markdown(result))
    with open(paths["json"], "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)
    plot(result, paths["png"])
    return paths
