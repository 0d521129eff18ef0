"""Property-based tests: whatever bytes, JSON values, content types and v2 headers a client sends, each
handler answers it or gives the contract's 4xx for that request alone, never a 500 or an exception, and a
good request in the same batch is still answered 200 (hypothesis explores; regressions are pinned below).
"""

import json

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from image_classifier_handler import ImageClassifierHandler
from protocols import parse_request
from request_errors import RequestError
from support import encode, extract_archive, make_context, photo, request_batch, responses
from text_classifier_handler import TextClassifierHandler
from text_embedding_handler import TextEmbeddingHandler

CONTENT_TYPES = [None, "", "application/json", "application/octet-stream", "text/plain", "text/plain; charset=utf-8",
                 "image/jpeg", "image/png", "application/x-www-form-urlencoded", "multipart/form-data", "x/y"]
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12)
V2_LIKE = st.fixed_dictionaries(
    {"inputs": st.lists(st.fixed_dictionaries({"name": st.text(max_size=5),
                                               "datatype": st.sampled_from(["BYTES", "FP32", "INT64", 3]),
                                               "shape": st.lists(st.integers(-2, 3), max_size=3),
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
def test_any_request_gets_an_answer_or_its_4xx_and_its_neighbour_is_served(handlers, mar, body, content_type, headers):
    handler, archive, good = handlers[mar]
    (good_status, _), (status, answer) = answer_pair(handler, archive, good, body, content_type, headers)
    assert good_status == 200
    assert status in STATUSES, (status, answer)
    if status != 200:
        assert set(answer) == {"code", "type", "message"} and answer["code"] == status


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
