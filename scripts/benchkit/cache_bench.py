"""The response cache under load (`bench.py --cache`): repeated inputs, cache off vs on, same server.

Each model is served twice by the bench's server: as built (cache off) and as a copy with
`handler.cacheEntries` set (tskit.respec; the copy is renamed `<model>_cache`). Two request streams,
each a fixed sequence of `requests` requests so that both sides get exactly the same mix:
  repeat30: ~30% of the requests repeat an input sent earlier in the stream, ~70% are new;
  unique:   every input new (what the cache costs when it never hits).
Inputs differ in what the model sees (a tiny patch near the photo's centre, so in the centre crop; a
number appended to the text), so each new input is a new cache key; every point gets new inputs of its
own, so no point hits what an earlier point stored. Points run interleaved (off, on, off, on) at one
concurrency; EVERY answer is checked (status 200, top-1 label and top-k length against the lone answer's
check). The hit ratio is read from the server: CacheHits / CacheMisses on the metrics port (Prometheus
text, prometheus_client's parser), the difference around each point.
"""

import hashlib
import io
import random
import time
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from tskit.client import TorchServeClient
from tskit.closed_loop import Job, Loop
from tskit.load import AnswerCheck, answer_judge, summary

REPEAT_SHARE = 0.3
STREAMS = {"repeat30": REPEAT_SHARE, "unique": 0.0}
CACHE_SUFFIX = "_cache"
CACHE_SETTINGS = {"cacheEntries": 1024, "cacheBytes": 64 * 1024 * 1024}


@dataclass
class Stream:
    """The request sequence of one point: indices into `bodies`; repeats point at an earlier index."""
    bodies: List[bytes]
    order: List[int]

    @property
    def repeats(self) -> int:
        return len(self.order) - len(self.bodies)


def make_stream(total: int, repeat_share: float, new_body: Callable[[int], bytes], seed: int) -> Stream:
    """`total` requests, about `repeat_share` of them an input sent earlier (uniformly among those)."""
    rng = random.Random(seed)
    bodies: List[bytes] = []
    order: List[int] = []
    for _ in range(total):
        if bodies and rng.random() < repeat_share:
            order.append(rng.randrange(len(bodies)))
        else:
            bodies.append(new_body(len(bodies)))
            order.append(len(bodies) - 1)
    return Stream(bodies, order)


def photo_variant(photo: Image.Image, salt: int) -> Callable[[int], bytes]:
    """New JPEGs of `photo`: a 16x16 patch at the centre (inside the centre crop) in a colour hashed from
    the index, so the decoded crop, and the cache key, differ; the photo stays a cat. (Colours one level
    apart are not enough: JPEG and the resize can decode two of them to the same crop, the same key.)"""
    width, height = photo.size
    box = (width // 2 - 8, height // 2 - 8, width // 2 + 8, height // 2 + 8)

    def new(index: int) -> bytes:
        image = photo.copy()
        image.paste(tuple(hashlib.blake2b(f"{salt}/{index}".encode(), digest_size=3).digest()), box)
        out = io.BytesIO()
        image.save(out, "JPEG", quality=90)
        return out.getvalue()
    return new


def text_variant(text: str, salt: int) -> Callable[[int], bytes]:
    """New texts: the same text with a reference number appended (new token ids, same topic)."""
    return lambda index: f"{text} Reference {salt}-{index}.".encode("utf-8")


def run_stream(client: TorchServeClient, model: str, content_type: str, stream: Stream, concurrency: int,
               check: AnswerCheck) -> dict:
    """Send the stream to `model` with `concurrency` clients, in order; every answer checked. A row's numbers.
    The one closed loop (tskit.closed_loop: its sequence numbers go out in order), with the URL and token of
    tskit.client, and the one summary (tskit.load.summary)."""
    url = client.prediction_url(model)

    def job(index: int) -> Job:
        return Job(url, stream.bodies[stream.order[index]], content_type)

    loop = Loop(job, concurrency, answer_judge(check), key=lambda: client.key("inference") or "", timeout=120,
                count=len(stream.order))
    result = summary(loop.run(), loop.seconds, concurrency)
    return {"requests": len(stream.order), "errors": result.errors, "checked": result.checked,
            "wrong": result.wrong, "first_error": result.first_error, "throughput": result.throughput,
            "seconds": result.seconds, "p50_ms": result.p50_ms, "p90_ms": result.p90_ms, "p99_ms": result.p99_ms,
            "inputs": len(stream.bodies), "repeats": stream.repeats}


def cache_counts(client: TorchServeClient, model: str) -> Tuple[float, float]:
    """(CacheHits, CacheMisses) of `model` on the metrics port, summed over its workers."""
    text = client.metrics()
    totals = {"CacheHits": 0.0, "CacheMisses": 0.0}
    for family in text_string_to_metric_families(text):
        if family.name in totals:
            totals[family.name] += sum(s.value for s in family.samples
                                       if s.labels.get("ModelName") == model and not s.name.endswith("_created"))
    return totals["CacheHits"], totals["CacheMisses"]


def settled_counts(client: TorchServeClient, model: str, at_least: float, timeout_s: float = 10) -> Tuple[float, float]:
    """The counters once they count at least `at_least` items: the frontend exports what the workers
    logged, a moment after the answers left (polled: there is no event to wait on)."""
    deadline = time.monotonic() + timeout_s
    counts = cache_counts(client, model)
    while sum(counts) < at_least and time.monotonic() < deadline:
        time.sleep(0.2)
        counts = cache_counts(client, model)
    return counts


def cache_rows_table(rows: List[dict]) -> str:
    lines = ["| model | stream | cache | round | conc | requests (inputs) | req/s | p50 ms | p99 ms | hits / misses "
             "| hit ratio | wrong | failed |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        counted = "" if r["cache"] == "off" else f"{r.get('hits', 0):.0f} / {r.get('misses', 0):.0f}"
        ratio = "" if r.get("hit_ratio") is None else f"{r['hit_ratio']:.1%}"
        lines.append(f"| {r['base']} | {r['stream']} | {r['cache']} | {r['round']} | {r['concurrency']} "
                     f"| {r['requests']} ({r.get('inputs', '')}) | {_fmt(r['throughput'])} | {_fmt(r.get('p50_ms'))} "
                     f"| {_fmt(r.get('p99_ms'))} | {counted} | {ratio} | {r.get('wrong', 0)} | {r.get('errors', 0)} |")
    return "\n".join(lines)


def cache_summary(rows: List[dict]) -> List[str]:
    """Per model and stream: mean of the rounds, on / off."""
    out = []
    for base in dict.fromkeys(r["base"] for r in rows):
        for stream in STREAMS:
            sides = {c: [r for r in rows if r["base"] == base and r["stream"] == stream and r["cache"] == c]
                     for c in ("off", "on")}
            if not sides["off"] or not sides["on"]:
                continue
            mean = {c: {k: sum(r.get(k) or 0 for r in rs) / len(rs) for k in ("throughput", "p50_ms", "p99_ms")}
                    for c, rs in sides.items()}
            hits = sum(r.get("hits", 0) for r in sides["on"])
            looked = hits + sum(r.get("misses", 0) for r in sides["on"])
            speedup = mean["on"]["throughput"] / mean["off"]["throughput"] if mean["off"]["throughput"] else float("nan")
            out.append(f"{base} cache {stream} (c={sides['on'][0]['concurrency']}, {len(sides['on'])} rounds each): "
                       f"on {mean['on']['throughput']:.1f} req/s vs off {mean['off']['throughput']:.1f} = {speedup:.2f}x; "
                       f"p50 {mean['on']['p50_ms']:.0f} vs {mean['off']['p50_ms']:.0f} ms, p99 "
                       f"{mean['on']['p99_ms']:.0f} vs {mean['off']['p99_ms']:.0f} ms; hit ratio "
                       + (f"{hits / looked:.1%} ({hits:.0f} of {looked:.0f})" if looked else "not counted"))
    return out


def _fmt(value: Optional[float], digits: int = 1) -> str:
    return "" if value is None or value != value else f"{value:.{digits}f}"
