"""The short form of `make soak` (scripts/soak.py, benchkit.soak) against the session server: every answer checked,
zero errors, no worker restart, worker memory growth after warm-up under 10%, and a last phase at 4x the
concurrency answered without an error.

`make soak` runs 5,000 requests; CI runs SOAK_REQUESTS (600) at the same concurrency, which takes
about half a minute on the 2-core machine.
"""

import os

from benchkit.soak import soak
from tskit.checked_load import MODELS

SOAK_REQUESTS = int(os.environ.get("SOAK_REQUESTS", "600"))


def test_short_soak_across_the_three_models(server):
    # the server's key file, as `make soak` passes it: tokens through tskit.client
    report = soak(server.inference_url, server.management_url, server.key_file,
                  requests_total=SOAK_REQUESTS, concurrency=16, warmup=300, max_growth=0.10)
    print(f"\n[soak] {report.requests} requests at concurrency {report.concurrency}: {report.errors} errors, "
          f"{report.throughput} req/s, p50 {report.p50_ms} ms, p99 {report.p99_ms} ms, "
          f"worker memory growth {report.memory_growth} (baseline MB {report.rss_baseline_mb})")
    assert report.requests == SOAK_REQUESTS
    assert all(report.per_model[m] >= 0.3 * SOAK_REQUESTS for m in MODELS), report.per_model
    assert report.errors == 0, report.error_examples
    assert report.restarted_workers == []
    assert len(report.memory_growth) == len(report.rss_baseline_mb) >= len(MODELS)
    assert report.max_memory_growth < 0.10, report.memory_growth
    # the 4x phase (make soak's too): a quarter of the requests at 64 connections, every answer checked
    assert report.overload_concurrency == 64 and report.overload_requests == SOAK_REQUESTS // 4
    assert report.overload_errors == 0, report.error_examples
    assert report.passed
