"""One latency summary: load_generators.percentile is the nearest-rank percentile every report uses."""

import math

from tskit.load import percentile


def test_nearest_rank_on_a_known_series():
    values = list(range(1, 101))  # 1..100, in any order
    assert percentile(values[::-1], 50) == 50
    assert percentile(values, 99) == 99 and percentile(values, 100) == 100
    assert percentile(values, 0) == 1


def test_small_series_take_the_worst_value_for_a_high_percentile():
    assert percentile([5.0, 1.0, 3.0], 99) == 5.0  # 99% of 3 values: all three at or below it
    assert percentile([5.0, 1.0, 3.0], 50) == 3.0


def test_no_values_give_nan():
    assert math.isnan(percentile([], 99))
