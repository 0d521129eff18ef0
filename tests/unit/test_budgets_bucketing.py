"""length_buckets: the O(n log n) split gives exactly the splits of the plain O(n^2) dynamic program (kept
here as the reference), and a batch of 40,000 short texts (what a KServe request once carried) is split."""

import random

import pytest

from handlers.text_tokenization import length_buckets


def reference_buckets(lengths, pass_overhead_tokens):
    """The former O(n^2) dynamic program: best contiguous split of the sorted lengths, earliest cut on ties."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    n = len(order)
    best, cut = [0.0] + [float("inf")] * n, [0] * (n + 1)
    for j in range(1, n + 1):
        longest = lengths[order[j - 1]]
        for i in range(j):
            cost = best[i] + pass_overhead_tokens + (j - i) * longest
            if cost < best[j]:
                best[j], cut[j] = cost, i
    groups, j = [], n
    while j > 0:
        groups.append(order[cut[j]:j])
        j = cut[j]
    return groups[::-1]


@pytest.mark.parametrize("seed", range(300))
def test_the_same_splits_as_the_quadratic_program(seed):
    rng = random.Random(seed)
    overhead = rng.choice([0, 1, 7, 32, 100, 5000])
    lengths = [rng.choice([rng.randint(1, 256), rng.randint(3, 12), 256]) for _ in range(rng.randint(0, 60))]
    assert length_buckets(lengths, overhead) == reference_buckets(lengths, overhead)


def test_forty_thousand_short_texts_are_split_into_a_partition_by_length():
    rng = random.Random(1)
    lengths = [rng.randint(3, 12) for _ in range(40_000)] + [256] * 8
    groups = length_buckets(lengths, 32)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    assert all(max(lengths[i] for i in a) <= min(lengths[i] for i in b) for a, b in zip(groups, groups[1:]))
    assert [lengths[i] for i in groups[-1]] == [256] * 8  # the long ones are not padded with the short
