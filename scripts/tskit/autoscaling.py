"""Autoscaling signals: KServe's containerConcurrency from the declarations, and the queue-wait rule on /metrics.

TorchServe 0.12 exports no queue-depth gauge (pytorch/serve #3286, #2101), and its queue latency,
`ts_queue_latency_microseconds`, is a counter: a sum that only grows, so an autoscaler on it never scales
down. What a controller can use is its rate over the rate of requests: the mean queue wait per request in
the last window, which falls back to 0 when the traffic stops. deploy/prometheusrule-queue-wait.yaml
records it per model; this module reads that shipped rule and evaluates its expression on two scrapes of
/metrics, as Prometheus would over the window between them (tests/integration/test_autoscaling_signal.py).

containerConcurrency (KServe's hard limit of requests in flight per pod, enforced by Knative's
queue-proxy) is derived from models/*/model.yaml: every served model can have a full batch in each of
its workers at once, so the pod admits the sum over models of batchSize x maxWorkers and the rest
waits in the cluster, where a new pod can take it, instead of in one pod's TorchServe queue.
`make kserve` (scripts/kserve_layout.py) rewrites that line of the Serverless manifests in deploy/.
docs/autoscaling.md has the whole story.
"""

import math
import os
import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import yaml
from prometheus_client.parser import text_string_to_metric_families

from tskit import kinds
from tskit.declaration import REPO, Declaration, served

DEPLOY = os.path.join(REPO, "deploy")
PROMETHEUS_RULE = os.path.join(DEPLOY, "prometheusrule-queue-wait.yaml")  # the PrometheusRule CRD
RULES_FILE = os.path.join(DEPLOY, "queue-wait.rules.yaml")                # the same groups, plain Prometheus
ADAPTER_VALUES = os.path.join(DEPLOY, "prometheus-adapter-values.yaml")
HPA = os.path.join(DEPLOY, "hpa-queue-wait.yaml")
STANDARD_MANIFEST = os.path.join(DEPLOY, "inferenceservice-cpu-standard.yaml")
# The manifests whose pods sit behind Knative's queue-proxy, the only place containerConcurrency acts
SERVERLESS_MANIFESTS = [os.path.join(DEPLOY, f"inferenceservice-{v}.yaml") for v in ("cpu", "gpu")]

CONCURRENCY_LINE = re.compile(r"^(?P<indent>[ \t]*)containerConcurrency:.*$", re.MULTILINE)


# ---- containerConcurrency from the declarations ----

def in_workers(declaration: Declaration) -> int:
    """Requests one model holds in its workers' batches when all are busy: batchSize x maxWorkers."""
    settings = declaration.torchserve
    return int(settings.get("batchSize", 1)) * int(settings.get("maxWorkers", settings.get("minWorkers", 1)))


def streamed(declarations: Optional[Sequence[Declaration]] = None) -> List[str]:
    """The served models whose every request is a stream (text generators): their queue-latency counter counts
    whole streams, so the queue-wait signal leaves them out (deploy/prometheus-adapter-values.yaml's metricsQuery).
    An image kind's videos are streams too, among its photos: they stay in (docs/autoscaling.md)."""
    declarations = served() if declarations is None else declarations
    return sorted(d.name for d in declarations if kinds.kind(d.kind).streams_every_request)


def container_concurrency(declarations: Optional[Sequence[Declaration]] = None) -> int:
    declarations = served() if declarations is None else declarations
    return sum(in_workers(d) for d in declarations)


def concurrency_line(indent: str, declarations: Sequence[Declaration]) -> str:
    terms = " + ".join(f"{d.name} {d.torchserve.get('batchSize', 1)}x{d.torchserve.get('maxWorkers', 1)}"
                       for d in declarations)
    return f"{indent}containerConcurrency: {container_concurrency(declarations)}   # sum of batchSize x maxWorkers: {terms}"


def rendered_manifest(path: str, declarations: Sequence[Declaration]) -> str:
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if not CONCURRENCY_LINE.search(text):
        raise ValueError(f"{path}: no `containerConcurrency:` line in the predictor to keep in step with the declarations")
    return CONCURRENCY_LINE.sub(lambda m: concurrency_line(m.group("indent"), declarations), text, count=1)


def sync_manifests(write: bool = True, declarations: Optional[Sequence[Declaration]] = None) -> List[str]:
    """The Serverless manifests whose containerConcurrency line differs from the declarations' (rewritten if `write`)."""
    declarations = served() if declarations is None else declarations
    stale = []
    for path in SERVERLESS_MANIFESTS:
        text = rendered_manifest(path, declarations)
        with open(path, encoding="utf-8") as f:
            if f.read() == text:
                continue
        stale.append(path)
        if write:
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
    return stale


# ---- the shipped rule ----

def load_yaml(path: str):
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def rule_groups(path: str = PROMETHEUS_RULE) -> list:
    """The rule groups of the PrometheusRule (its spec is a Prometheus rules file's content)."""
    document = load_yaml(path)
    return document["spec"]["groups"] if document.get("kind") == "PrometheusRule" else document["groups"]


def recording_rules(path: str = PROMETHEUS_RULE) -> Dict[str, str]:
    """{recorded series name: PromQL expression}."""
    return {rule["record"]: rule["expr"] for group in rule_groups(path) for rule in group["rules"] if "record" in rule}


@dataclass
class QueueWaitRule:
    """A rule of the shape  (sum by (L) (rate(N[w])) / SCALE) / (sum by (L) (rate(D[w])) > 0) or sum by (L) (rate(D[w])) * 0."""
    record: str
    numerator: str      # the queue-latency counter
    denominator: str    # the request counter
    scale: float        # numerator units per second
    by: List[str]
    window: str


def parse_rule(record: str, expr: str) -> QueueWaitRule:
    """The terms of a queue-wait rule, read from its expression (ValueError when it has another shape)."""
    rates = re.findall(r"rate\(\s*([A-Za-z_:][A-Za-z0-9_:]*)\s*\[(\w+)\]\s*\)", expr)
    groupings = {tuple(label.strip() for label in g.split(",")) for g in re.findall(r"sum by \(([^)]*)\)", expr)}
    scale = re.search(r"\)\)\s*/\s*([0-9.]+(?:e[0-9]+)?)\s*\)?\s*/", expr)
    shape_ok = (len(rates) == 3 and rates[1] == rates[2] and len({w for _, w in rates}) == 1
                and len(groupings) == 1 and scale and "> 0" in expr and re.search(r"\bor\b", expr))
    if not shape_ok:
        raise ValueError(f"{record}: expected (sum by (...) (rate(queue[w])) / SCALE) / (sum by (...) "
                         f"(rate(requests[w])) > 0) or sum by (...) (rate(requests[w])) * 0, got: {expr}")
    return QueueWaitRule(record, rates[0][0], rates[1][0], float(scale.group(1)), list(groupings.pop()), rates[0][1])


def queue_wait_rules(path: str = PROMETHEUS_RULE) -> List[QueueWaitRule]:
    return [parse_rule(record, expr) for record, expr in recording_rules(path).items()]


# ---- the rule evaluated on two scrapes ----

def counter_totals(text: str, metric: str, by: str = "model_name") -> Dict[str, float]:
    """A counter's value summed over the label `by` (e.g. over model versions), from Prometheus text.

    PromQL sees `ts_queue_latency_microseconds` as exposed; the parser names that counter's family without
    `_total` and its sample with it, so both spellings lead to the same samples."""
    family = metric[:-len("_total")] if metric.endswith("_total") else metric
    totals: Dict[str, float] = {}
    for parsed in text_string_to_metric_families(text):
        if parsed.name != family:
            continue
        for sample in parsed.samples:
            if sample.name in (metric, family + "_total") and by in sample.labels:
                key = sample.labels[by]
                totals[key] = totals.get(key, 0.0) + sample.value
    return totals


@dataclass
class QueueWaitReading:
    model: str
    seconds: float          # the rule's value: mean queue wait per request between the scrapes
    queued_seconds: float   # the numerator's increase, in seconds
    requests: float         # the denominator's increase


def evaluate(rule: QueueWaitRule, before: str, after: str) -> Dict[str, QueueWaitReading]:
    """The rule over the interval between two scrapes of one server, per model.

    rate() over that interval is increase / interval for both counters, so the interval cancels out.
    One scrape is one target: the other `by` labels (namespace, pod) are target labels that Prometheus
    adds, constant here. A model with no request in the interval reads 0, the rule's `or ... * 0` branch."""
    readings = {}
    queued = {m: v - counter_totals(before, rule.numerator).get(m, 0.0)
              for m, v in counter_totals(after, rule.numerator).items()}
    requests = {m: v - counter_totals(before, rule.denominator).get(m, 0.0)
                for m, v in counter_totals(after, rule.denominator).items()}
    for model, count in requests.items():
        seconds = queued.get(model, 0.0) / rule.scale
        value = seconds / count if count > 0 else 0.0
        if not math.isfinite(value):
            raise ValueError(f"{rule.record}{{model_name={model!r}}} is not finite: {value}")
        readings[model] = QueueWaitReading(model, value, seconds, count)
    return readings
