"""The KServe engine's own Prometheus metrics, on KServe's /metrics (prometheus_client's default registry), under
TorchServe's names so that the shipped queue-wait rule, its adapter and the HPA (docs/autoscaling.md) read this
engine as they read TorchServe:

    ts_inference_requests_total{model_name}       requests a model's queue took (a counter)
    ts_queue_latency_microseconds{model_name}     their summed wait in the queue until their batch began (a counter,
                                                  exposed untyped as TorchServe writes it: prometheus_client would
                                                  add `_total` to a counter's name, and the rule reads this one)
    kserve_engine_queue_depth{model_name}         requests waiting now (a gauge: what TorchServe 0.12 lacks)
    kserve_engine_refused_total{model_name}       requests refused: the queue stayed full for the admission wait
"""

from dataclasses import dataclass
from typing import Callable, Dict


@dataclass
class QueueCounters:
    """What one model's batcher counts (updated on the event loop only)."""

    requests: int = 0
    queue_wait_us: float = 0.0
    refused: int = 0


def register(counters: Dict[str, QueueCounters], depth: Callable[[str], int]) -> None:
    """The collector of every model's counters, in the registry KServe's /metrics serves."""
    from prometheus_client import REGISTRY
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, UnknownMetricFamily

    class EngineCollector:
        def collect(self):
            requests = CounterMetricFamily("ts_inference_requests", "Requests a model's queue took",
                                           labels=["model_name"])
            waited = UnknownMetricFamily("ts_queue_latency_microseconds", "Summed queue wait of those requests",
                                         labels=["model_name"])
            waiting = GaugeMetricFamily("kserve_engine_queue_depth", "Requests waiting in a model's queue",
                                        labels=["model_name"])
            refused = CounterMetricFamily("kserve_engine_refused", "Requests refused: the model's queue was full",
                                          labels=["model_name"])
            for model, counted in sorted(counters.items()):
                requests.add_metric([model], counted.requests)
                waited.add_metric([model], counted.queue_wait_us)
                waiting.add_metric([model], depth(model))
                refused.add_metric([model], counted.refused)
            yield from (requests, waited, waiting, refused)

    REGISTRY.register(EngineCollector())
