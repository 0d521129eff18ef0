"""The handler's own metrics, through TorchServe's metrics API (context.metrics).

Declared in the server's metrics.yaml (model_metrics) so the frontend exports them on the
metrics port in Prometheus format; declared here too when missing, so an archive served with
another metrics config still logs them (model_metrics.log) instead of failing.

    PreprocessTime, InferenceTime, PostprocessTime   histogram, ms, per batch
    BatchSize                                        histogram, requests per handle() call
    InvalidInputs                                    counter, per ErrorType (the 4xx `type`)
    CacheHits, CacheMisses, CacheEvictions           counter, items (models with a response cache)
    TimeToFirstToken, TimePerOutputToken             histogram, ms (text generators: prefill; each decode step)
    GeneratedTokens                                  counter, tokens (text generators)
    RunningSequences                                 gauge, sequences in the running batch after a step
"""

import logging
from collections import Counter
from typing import Dict, Iterable

from ts.metrics.metric_cache_errors import MetricsCacheKeyError
from ts.metrics.metric_type_enum import MetricTypes

logger = logging.getLogger(__name__)

LEVEL = "Model"
BASE_DIMENSIONS = ["ModelName", "Level"]
SPECS = {
    "PreprocessTime": ("ms", BASE_DIMENSIONS, MetricTypes.HISTOGRAM),
    "InferenceTime": ("ms", BASE_DIMENSIONS, MetricTypes.HISTOGRAM),
    "PostprocessTime": ("ms", BASE_DIMENSIONS, MetricTypes.HISTOGRAM),
    "BatchSize": ("count", BASE_DIMENSIONS, MetricTypes.HISTOGRAM),
    "InvalidInputs": ("count", BASE_DIMENSIONS + ["ErrorType"], MetricTypes.COUNTER),
    "CacheHits": ("count", BASE_DIMENSIONS, MetricTypes.COUNTER),
    "CacheMisses": ("count", BASE_DIMENSIONS, MetricTypes.COUNTER),
    "CacheEvictions": ("count", BASE_DIMENSIONS, MetricTypes.COUNTER),
    "TimeToFirstToken": ("ms", BASE_DIMENSIONS, MetricTypes.HISTOGRAM),
    "TimePerOutputToken": ("ms", BASE_DIMENSIONS, MetricTypes.HISTOGRAM),
    "GeneratedTokens": ("count", BASE_DIMENSIONS, MetricTypes.COUNTER),
    "RunningSequences": ("count", BASE_DIMENSIONS, MetricTypes.GAUGE),
}


class HandlerMetrics:
    def __init__(self, metrics_cache, model_name: str):
        self.model_name = model_name
        self.metrics = {}
        if metrics_cache is None:  # e.g. a bare Context in a unit test
            return
        for name, (unit, dimensions, kind) in SPECS.items():
            try:
                self.metrics[name] = metrics_cache.get_metric(name, kind)
            except MetricsCacheKeyError:
                self.metrics[name] = metrics_cache.add_metric_to_cache(name, unit, dimensions, kind)

    def _emit(self, name: str, value: float, *extra_dimensions: str) -> None:
        metric = self.metrics.get(name)
        if metric is not None:
            metric.add_or_update(value, [self.model_name, LEVEL, *extra_dimensions])

    def batch(self, size: int, timings_ms: Dict[str, float], error_types: Iterable[str]) -> None:
        self._emit("BatchSize", size)
        for name, value in timings_ms.items():
            self._emit(name, round(value, 3))
        for error_type, count in Counter(error_types).items():
            self._emit("InvalidInputs", count, error_type)

    def counts(self, counts: Dict[str, int]) -> None:
        """Counter increments (the response cache's hits, misses, evictions of one batch)."""
        for name, value in counts.items():
            if value:
                self._emit(name, value)

    def generation(self, first_token_ms: Iterable[float], per_token_ms: Iterable[float], tokens: int,
                   running: int) -> None:
        """A text generator's step: its prefills' and decode step's times, the tokens made, the rows running."""
        for value in first_token_ms:
            self._emit("TimeToFirstToken", round(value, 3))
        for value in per_token_ms:
            self._emit("TimePerOutputToken", round(value, 3))
        if tokens:
            self._emit("GeneratedTokens", tokens)
        self._emit("RunningSequences", running)
