"""The response cache and the batch profiler: alone, and inside the real handlers (a real ts Context)."""

import base64
import json
import os

import pytest
import torch

from handlers.image_classifier_handler import ImageClassifierHandler
from handlers.response_cache import ResponseCache
from support import encode, load_handler, make_context, photo, request_batch
from handlers.text_classifier_handler import TextClassifierHandler


# ---- the cache alone ----------------------------------------------------------------------------
def test_least_recently_used_entries_go_first():
    cache = ResponseCache(max_entries=2, max_bytes=10_000, namespace="m/1.0")
    a, b, c = (cache.key(name) for name in "abc")
    cache.put(a, {"v": 1})
    cache.put(b, {"v": 2})
    assert cache.get(a) == {"v": 1}  # a is now the most recent
    cache.put(c, {"v": 3})
    assert cache.get(b) is None and cache.get(a) == {"v": 1} and cache.get(c) == {"v": 3}
    assert cache.take_counts() == {"CacheHits": 3, "CacheMisses": 1, "CacheEvictions": 1}
    assert cache.take_counts() == {"CacheHits": 0, "CacheMisses": 0, "CacheEvictions": 0}


def test_memory_stays_within_the_byte_bound():
    cache = ResponseCache(max_entries=10_000, max_bytes=5_000, namespace="m/1.0")
    for i in range(500):
        cache.put(cache.key(i), {"embedding": [float(i)] * 20})
        assert cache.bytes <= 5_000
    assert cache.bytes == sum(len(v) for v in cache.entries.values())
    assert 0 < len(cache.entries) < 500 and cache.evictions == 500 - len(cache.entries)
    cache.put(cache.key("huge"), {"x": "y" * 6_000})  # larger than the whole cache: never stored
    assert cache.get(cache.key("huge")) is None and cache.bytes <= 5_000


def test_keys_differ_by_version_parameters_shape_and_content():
    one, two = ResponseCache(4, 10_000, "m/1.0"), ResponseCache(4, 10_000, "m/2.0")
    image = torch.zeros(3, 4, 4, dtype=torch.uint8)
    keys = {one.key(image, (None,)), two.key(image, (None,)), one.key(image, (3,)),
            one.key(image.reshape(3, 2, 8), (None,)), one.key(image + 1, (None,)),
            one.key(("ab", "c")), one.key(("a", "bc"))}
    assert len(keys) == 7
    assert one.key(image.clone(), (None,)) == one.key(image, (None,))


# ---- inside the handlers ---------------------------------------------------------------------------
def handler_with(cls, mar, tmp_path, **handler_settings):
    handler, archive = load_handler(cls, mar, str(tmp_path / mar), **handler_settings)
    calls = []
    model = handler.model

    def counting(*inputs):  # how many items reach the model
        calls.append(_items(inputs[0]))
        return model(*inputs)
    handler.model = counting
    return handler, archive, calls


def _items(inputs):
    return inputs.shape[0] if isinstance(inputs, torch.Tensor) else len(inputs)


def send(handler, archive, requests):
    context = make_context(*archive)
    outputs = handler.handle(request_batch(context, requests), context)
    return [(context.get_response_status(i)[0], out) for i, out in enumerate(outputs)]


@pytest.fixture(scope="module")
def images():
    return {name: encode(photo(name)) for name in ("chelsea", "coffee", "astronaut")}


def test_a_hit_is_the_miss_byte_for_byte_and_skips_the_model(tmp_path, images):
    handler, archive, calls = handler_with(ImageClassifierHandler, "mobilenet_v2.mar", tmp_path, cacheEntries=64)
    first = send(handler, archive, [("body", images["chelsea"], "image/jpeg"), ("body", images["coffee"], "image/jpeg")])
    model_calls = len(calls)
    again = send(handler, archive, [("body", images["coffee"], "image/jpeg"), ("body", images["chelsea"], "image/jpeg")])
    assert again == first[::-1] and all(status == 200 for status, _ in again)
    assert len(calls) == model_calls  # every item hit: no forward pass
    # the same image as base64 JSON with the same topk is the same decoded content: a hit too
    as_json = {"image": base64.b64encode(images["chelsea"]).decode()}  # the worker hands JSON bodies over parsed
    assert send(handler, archive, [("body", as_json, "application/json")]) == first[:1]
    assert len(calls) == model_calls


def test_only_the_missing_items_run_and_parameters_are_part_of_the_key(tmp_path, images):
    handler, archive, calls = handler_with(ImageClassifierHandler, "mobilenet_v2.mar", tmp_path, cacheEntries=64)
    send(handler, archive, [("body", images["chelsea"], "image/jpeg")])
    calls.clear()
    top2 = {"image": base64.b64encode(images["chelsea"]).decode(), "topk": 2}
    answers = send(handler, archive, [("body", images["chelsea"], "image/jpeg"), ("body", images["astronaut"], "image/jpeg"),
                                      ("body", top2, "application/json"), ("body", b"\xff\xd8\xff\xe0 cut", "image/jpeg")])
    assert calls == [2]  # astronaut and the topk=2 form; the plain chelsea hit; the bad one never decodes
    assert [s for s, _ in answers] == [200, 200, 200, 400]
    assert len(json.loads(answers[2][1])["predictions"]) == 2 and len(json.loads(answers[0][1])["predictions"]) == 5
    assert len(handler.cache.entries) == 3  # chelsea top-5, astronaut, chelsea top-2: the error is never stored


def test_text_answers_are_cached_per_worker_within_bounds(tmp_path):
    handler, archive, calls = handler_with(TextClassifierHandler, "minilm_topics.mar", tmp_path,
                                           cacheEntries=3, cacheBytes=100_000)
    texts = [f"Central bank raises rates for the {n}th time".encode() for n in range(6)]
    first = send(handler, archive, [("body", t, "text/plain") for t in texts])
    assert len(handler.cache.entries) == 3 and handler.cache.bytes <= 100_000
    calls.clear()
    assert send(handler, archive, [("body", t, "text/plain") for t in texts[3:]]) == first[3:]
    assert calls == []


def test_the_cache_is_off_by_default(tmp_path, images):
    handler, archive, calls = handler_with(ImageClassifierHandler, "mobilenet_v2.mar", tmp_path)
    assert handler.cache is None
    for _ in range(2):
        send(handler, archive, [("body", images["coffee"], "image/jpeg")])
    assert calls == [1, 1]


def test_the_profiler_covers_the_next_batches_then_stops(tmp_path, images):
    folder = tmp_path / "profiles"
    handler, archive, _ = handler_with(ImageClassifierHandler, "mobilenet_v2.mar", tmp_path,
                                       profileBatches=2, profileDir=str(folder))
    send(handler, archive, [("body", images["coffee"], "image/jpeg")])
    assert not folder.exists()  # written after the Nth batch
    send(handler, archive, [("body", images["chelsea"], "image/jpeg"), ("body", b"bad", "image/jpeg")])
    written = sorted(os.listdir(folder))
    assert len(written) == 2 and written[0].endswith(".top.txt") and written[1].endswith(".trace.json")
    table = (folder / written[0]).read_text()
    for phase in ("batch", "decode", "collate", "model", "postprocess"):
        assert phase in table
    trace = json.loads((folder / written[1]).read_text())
    assert sum(e.get("name") == "batch" for e in trace["traceEvents"]) == 2
    assert not handler.profiler.active
    send(handler, archive, [("body", images["coffee"], "image/jpeg")])
    assert sorted(os.listdir(folder)) == written
