"""Property-based tests: whatever bytes, JSON values, content types and v2 headers a client sends, each
handler answers it or gives the contract's 4xx for that request alone, never a 500 or an exception, and a
good request in the same batch is still answered 200 (hypothesis explores; regressions are pinned below).
"""

import base64
import json

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from hostile_inputs import png_declaring
from handlers.image_classifier_handler import ImageClassifierHandler
from handlers.protocols import parse_request
from handlers.request_errors import RequestError
from support import encode, extract_archive, make_context, photo, request_batch, responses
from handlers.text_classifier_handler import TextClassifierHandler
from handlers.text_embedding_handler import TextEmbeddingHandler

CONTENT_TYPES = [None, "", "application/json", "application/octet-stream", "text/plain", "text/plain; charset=utf-8",
                 "image/jpeg", "image/png", "application/x-www-form-urlencoded", "multipart/form-data", "x/y"]
# JSON text as a client can write it: any code point, lone surrogates too (a "\ud800" escape parses to one;
# hypothesis' default alphabet leaves them out, which hid the tokenizer's TypeError -> 500).
ANY_CHARACTER = st.characters(codec=None, exclude_categories=()) | st.sampled_from("\ud800\udbff\udc00\udfff")
# Numbers as JSON carries them: NaN and Infinity (Python's json reads both) and integers of thousands of
# digits (json reads up to 4,300; a product of two cannot be printed).
NUMBERS = st.integers() | st.floats() | st.integers(-(10 ** 3999), 10 ** 3999)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | NUMBERS | st.text(ANY_CHARACTER, max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12)
V2_LIKE = st.fixed_dictionaries(
    {"inputs": st.lists(st.fixed_dictionaries({"name": st.text(max_size=5),
                                               "datatype": st.sampled_from(["BYTES", "FP32", "INT64", 3]),
                                               "shape": st.lists(st.integers(-2, 3) | st.integers(2 ** 50, 10 ** 3999), max_size=3),
                                               "data": JSON_VALUES}), max_size=2)},
    optional={"parameters": JSON_VALUES, "outputs": JSON_VALUES, "id": JSON_VALUES})
BODIES = (st.binary(max_size=300) | st.text(max_size=200) | JSON_VALUES | V2_LIKE
          | V2_LIKE.map(lambda d: json.dumps(d).encode()) | st.dictionaries(st.sampled_from(["instances", "text", "image"]),
                                                                              JSON_VALUES, min_size=1))
HEADERS = st.one_of(st.just({}), st.builds(lambda n: {"Inference-Header-Content-Length": n},
                                           st.text(max_size=6) | st.integers(-5, 400).map(str)))
STATUSES = {200, 400, 413, 415}


@pytest.fixture(scope="module")
def handlers(tmp_path_factory):
    loaded = {}
    for cls, mar, good in ((ImageClassifierHandler, "mobilenet_v2.mar", (encode(photo("chelsea")), "image/jpeg")),
                           (TextClassifierHandler, "minilm_topics.mar", ("The striker scored twice", "text/plain")),
                           (TextEmbeddingHandler, "minilm_embedding.mar", ("naïve café", "text/plain"))):
        archive = extract_archive(mar, str(tmp_path_factory.mktemp(mar)))
        handler = cls()
        handler.initialize(make_context(*archive))
        loaded[mar] = (handler, archive, good)
    return loaded


def answer_pair(handler, archive, good, body, content_type, headers):
    context = make_context(*archive)
    rows = request_batch(context, [("body", good[0], good[1]), ("body", body, content_type)], [{}, headers])
    return responses(context, handler.handle(rows, context))


@pytest.mark.parametrize("mar", ["mobilenet_v2.mar", "minilm_topics.mar", "minilm_embedding.mar"])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=BODIES, content_type=st.sampled_from(CONTENT_TYPES), headers=HEADERS)
@example(body={"inputs": [{"name": "t", "datatype": "BYTES", "shape": [1], "data": ["\x00"]}]},
         content_type="application/json", headers={})  # valid JSON, a string the tokenizer cannot read
@example(body=b'{"inputs": [{"name": "t", "datatype": "BYTES", "shape": [1], "data": ["x"]}]}',
         content_type=None, headers={})  # tritonclient's JSON mode: no Content-Type
@example(body=b"{}", content_type=None, headers={"Inference-Header-Content-Length": "2"})
@example(body={"text": "\ud800", "image": "\udc00AAAA"}, content_type="application/json", headers={})
@example(body={"inputs": [{"name": "t", "datatype": "BYTES", "shape": [10 ** 3999] * 2, "data": ["x"]}]},
         content_type="application/json", headers={})  # a product Python cannot print
@example(body={"image": "AAAA", "topk": "x" * 1_400_000}, content_type="application/json", headers={})
def test_any_request_gets_an_answer_or_its_4xx_and_its_neighbour_is_served(handlers, mar, body, content_type, headers):
    handler, archive, good = handlers[mar]
    (good_status, _), (status, answer) = answer_pair(handler, archive, good, body, content_type, headers)
    assert good_status == 200
    assert status in STATUSES, (status, answer)
    if status != 200:
        assert_contract_error(answer, status)


def assert_contract_error(answer: dict, status: int) -> None:
    """The contract's fields; a v2 error adds v2's "error" (tritonclient's message), equal to the message."""
    assert set(answer) in ({"code", "type", "message"}, {"code", "type", "message", "error"}), answer
    assert answer["code"] == status and answer.get("error", answer["message"]) == answer["message"]


# ---- budgets hold for arbitrary KServe requests ------------------------------------------------------------
# Each handler again, with budgets small enough that random requests cross them: an over-budget request
# must get its 413 (never another error, never an answer over the budget), its neighbour its answer.
TIGHT_OF = {"mobilenet_v2.mar": dict(maxItemsPerRequest=3, maxImagePixels=20_000, maxPixelsPerRequest=30_000),
            "minilm_topics.mar": dict(maxItemsPerRequest=3, maxTextChars=60, maxResponseBytes=2_500),
            "minilm_embedding.mar": dict(maxItemsPerRequest=3, maxTextChars=60, maxResponseBytes=25_000)}
TINY_IMAGE = base64.b64encode(encode(photo("chelsea")[::8, ::8])).decode()  # 57x38 = 2,166 pixels
ELEMENTS = st.sampled_from([
    TINY_IMAGE, base64.b64encode(png_declaring(140, 140)).decode(), base64.b64encode(png_declaring(200, 200)).decode(),
    "The striker scored twice", "naïve café " * 10, "x" * 61, "", "not base64!"])


def kserve_request(elements, v2, request_id, topk):
    if not v2:
        return {"instances": [{"data": e} for e in elements]}
    document = {"inputs": [{"name": "x", "datatype": "BYTES", "shape": [len(elements)], "data": elements}]}
    if request_id is not None:
        document["id"] = request_id
    if topk is not None:
        document["parameters"] = {"topk": topk}
    return document


@pytest.fixture(scope="module")
def tight_handlers(tmp_path_factory):
    loaded = {}
    for cls, mar, good in ((ImageClassifierHandler, "mobilenet_v2.mar", (base64.b64decode(TINY_IMAGE), "image/jpeg")),
                           (TextClassifierHandler, "minilm_topics.mar", ("The striker scored twice", "text/plain")),
                           (TextEmbeddingHandler, "minilm_embedding.mar", ("naïve café", "text/plain"))):
        model_dir, manifest, config = extract_archive(mar, str(tmp_path_factory.mktemp(mar)))
        config = dict(config, handler=dict(config.get("handler") or {}, **TIGHT_OF[mar]))
        handler = cls()
        handler.initialize(make_context(model_dir, manifest, config))
        loaded[mar] = (handler, (model_dir, manifest, config), good)
    return loaded


@pytest.mark.parametrize("mar", sorted(TIGHT_OF))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(elements=st.lists(ELEMENTS, min_size=1, max_size=6), v2=st.booleans(),
       request_id=st.none() | st.text(max_size=3) | st.just("i" * 30_000), topk=st.none() | st.integers(1, 1000),
       as_bytes=st.booleans())
def test_budgets_hold_for_any_kserve_request(tight_handlers, mar, elements, v2, request_id, topk, as_bytes):
    handler, archive, good = tight_handlers[mar]
    document = kserve_request(elements, v2, request_id, topk)
    body, content_type = (json.dumps(document).encode(), None) if as_bytes else (document, "application/json")
    context = make_context(*archive)
    rows = request_batch(context, [("body", good[0], good[1]), ("body", body, content_type)])
    outputs = handler.handle(rows, context)
    (good_status, _), (status, answer) = responses(context, outputs)
    assert good_status == 200
    assert status in STATUSES, (status, answer)
    assert len(outputs[1]) <= handler.settings.maxResponseBytes
    if status == 200:
        assert len(elements) <= handler.settings.maxItemsPerRequest
    else:
        assert_contract_error(answer, status)
        assert ("error" in answer) == v2
    if len(elements) > handler.settings.maxItemsPerRequest:
        assert (status, answer["type"]) == (413, "TooManyItems")


@settings(max_examples=300, deadline=None)
@given(body=BODIES, content_type=st.sampled_from(CONTENT_TYPES),
       header_length=st.none() | st.text(max_size=6) | st.integers(-5, 400).map(str))
def test_protocol_parsing_raises_only_request_errors(body, content_type, header_length):
    try:
        request = parse_request(body, content_type, header_length)
    except RequestError as err:
        assert 400 <= err.status < 500
    else:
        assert request.protocol in ("plain", "v2", "kserve_v1")
