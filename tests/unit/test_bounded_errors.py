"""No answer can kill a worker, and no bad input gets a 5xx (issue 17, item 4), through the real handlers.

TorchServe's frontend fails a worker's whole message when one answer is over max_response_size
(6,553,500) and restarts the worker: every request of its batch gets 500 "Worker died.". So an error
message never repeats unbounded input, every answer (error or not) is measured against maxResponseBytes
where it leaves the handler, and invalid Unicode and absurd numbers are the client's 4xx, not our 500.
Each reproducer is batched with a good request, which must still get its answer.
"""

import base64
import json
import struct

import pytest

from handlers.detection import DetectionOptions, request_options
from handlers.image_classifier_handler import ImageClassifierHandler
from handlers.protocols import HEADER_LENGTH, Answer
from handlers.request_errors import MAX_MESSAGE_CHARS, InvalidField, RequestError, shown
from handlers.request_payload import MAX_JSON_INT
from support import CAT_LABELS, encode, load_handler, make_context, photo, request_batch
from handlers.text_classifier_handler import TextClassifierHandler
from handlers.text_embedding_handler import TextEmbeddingHandler

STRIKER = "The striker scored twice in the final"
CAT = base64.b64encode(encode(photo("chelsea")[::4, ::4])).decode()
SMALL_BODY = 4096  # every error answer here: the contract's JSON with a bounded message, far below this


def v2(elements, datatype="BYTES", shape=None, **extra):
    tensor = {"name": "x", "datatype": datatype, "shape": [len(elements)] if shape is None else shape,
              "data": elements}
    return dict(extra, inputs=[tensor])


def binary_v2(document: dict, elements) -> tuple:
    """(body, header value) of a v2 request with the binary tensor extension."""
    chunk = b"".join(struct.pack("<I", len(e)) + e for e in elements)
    document["inputs"][0]["parameters"] = dict(document["inputs"][0].get("parameters", {}),
                                               binary_data_size=document["inputs"][0].pop("binary_size", len(chunk)))
    header = json.dumps(document).encode()
    return header + chunk, str(len(header))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    def load(cls, mar):
        return load_handler(cls, mar, str(tmp_path_factory.mktemp(mar)))
    return {"vision": load(ImageClassifierHandler, "mobilenet_v2.mar"),
            "topics": load(TextClassifierHandler, "minilm_topics.mar"),
            "embedding": load(TextEmbeddingHandler, "minilm_embedding.mar")}


GOOD = {"vision": (encode(photo("chelsea")), "image/jpeg"), "topics": (STRIKER, "text/plain"),
        "embedding": (STRIKER, "text/plain")}


def good_then(loaded, model, body, content_type, headers=None):
    """(status, raw answer) of `body` batched after a good request, which must be answered 200."""
    handler, archive = loaded
    context = make_context(*archive)
    rows = request_batch(context, [("body", *GOOD[model]), ("body", body, content_type)],
                         [{"Host": "h"}, dict({"Host": "h"}, **(headers or {}))])
    outputs = handler.handle(rows, context)
    assert all(len(out) <= handler.settings.maxResponseBytes for out in outputs)
    good_answer = json.loads(outputs[0])
    assert context.get_response_status(0)[0] == 200, good_answer
    assert {"vision": lambda: good_answer["predictions"][0]["label"] in CAT_LABELS,
            "topics": lambda: good_answer["predictions"][0]["label"] == "Sports",
            "embedding": lambda: len(good_answer["embedding"]) == 384}[model]()
    return context.get_response_status(1)[0], outputs[1]


def assert_contract_error(status, body, expected_status, kind, says, v2_request):
    assert len(body) < SMALL_BODY, len(body)
    answer = json.loads(body)
    assert (status, answer["code"], answer["type"]) == (expected_status, expected_status, kind), answer
    assert set(answer) == ({"code", "type", "message", "error"} if v2_request else {"code", "type", "message"})
    assert says in answer["message"], answer["message"]
    assert len(answer["message"]) <= MAX_MESSAGE_CHARS + 40


HUGE = 10 ** 4000  # 4,001 digits: json.loads reads it; a product of two cannot be printed (4,300 digits at most)
# (model, name, body, content type, headers, status, type, words of the message, a v2 request)
CASES = [
    # answers that repeated the input grew past max_response_size and killed the worker
    ("vision", "topk a 1.4 MB string", {"image": "AAAA", "topk": "x" * 1_400_000}, "application/json", None,
     400, "InvalidField", "[a string of 1,400,000 characters]", False),
    ("vision", "shape of 2,000,000 zeros", v2([CAT], shape=[0] * 2_000_000), "application/json", None,
     400, "InvalidField", "(2,000,000 numbers) holds 0 elements but data has 1", True),
    ("vision", "shape of 100,000 zeros (was a 600 KB answer)", v2([CAT], shape=[0] * 100_000), None, None,
     400, "InvalidField", "(100,000 numbers)", True),
    ("vision", "a 3 MB datatype", v2([CAT], datatype="FP" * 1_500_000), "application/json", None,
     400, "InvalidField", "[a string of 3,000,000 characters]", True),
    ("vision", "a 4,000-digit Inference-Header-Content-Length", b'{"inputs": []}', None, {HEADER_LENGTH: "9" * 4000},
     400, "InvalidField", "an integer of 4,000 digits", True),
    # invalid Unicode: a lone surrogate escape, in every form and field
    ("topics", "plain JSON text", {"text": "\ud800"}, "application/json", None,
     400, "InvalidUTF8", "JSON field 'text' is not valid Unicode", False),
    ("embedding", "plain JSON text, mid-sentence", {"text": "goal \udfff scored"}, "application/json", None,
     400, "InvalidUTF8", "lone surrogate '\\udfff' at character 5", False),
    ("topics", "KServe v1 instance", {"instances": [STRIKER, "\ud800"]}, "application/json", None,
     400, "InvalidUTF8", "not valid Unicode", False),
    ("embedding", "KServe v1 instance object", {"instances": [{"text": "x \udc00"}]}, "application/json", None,
     400, "InvalidUTF8", "not valid Unicode", False),
    ("topics", "v2 JSON BYTES data", v2(["\ud800"]), "application/json", None,
     400, "InvalidUTF8", "not valid Unicode", True),
    ("embedding", "v2 JSON bytes without a content type", json.dumps(v2(["a \ud83d b"])).encode(), None, None,
     400, "InvalidUTF8", "not valid Unicode", True),
    ("vision", "plain JSON image", {"image": "\ud800" + CAT}, "application/json", None,
     400, "InvalidUTF8", "JSON field 'image' is not valid Unicode", False),
    ("vision", "v2 image element", v2([CAT + "\udbff"]), "application/json", None,
     400, "InvalidUTF8", "not valid Unicode", True),
    ("vision", "v2 id (echoed in the answer)", v2([CAT], id="req-\ud800"), "application/json", None,
     400, "InvalidUTF8", "'id' is not valid Unicode", True),
    # absurd numbers
    ("vision", "shape of three 4,001-digit numbers", v2([CAT], shape=[HUGE] * 3), "application/json", None,
     400, "InvalidField", "an integer of 4,001 digits", True),
    ("vision", "shape whose product passes 2^53", v2([CAT], shape=[2 ** 30, 2 ** 30]), "application/json", None,
     400, "InvalidField", "holds more than 9,007,199,254,740,991 elements", True),
    ("vision", "shape NaN", v2([CAT], shape=[float("nan")]), "application/json", None,
     400, "InvalidField", "got nan", True),
    ("vision", "plain topk of 4,001 digits", {"image": CAT, "topk": HUGE}, "application/json", None,
     400, "InvalidField", "at most 9,007,199,254,740,991, got an integer of 4,001 digits", False),
    ("vision", "plain topk Infinity", {"image": CAT, "topk": float("inf")}, "application/json", None,
     400, "InvalidField", "must be a positive integer, got inf", False),
    ("topics", "parameters.topk of 4,001 digits", v2([STRIKER], parameters={"topk": HUGE}), "application/json", None,
     400, "InvalidField", "parameters.topk must be a positive integer of at most", True),
    ("topics", "parameters.topk 2^53", v2([STRIKER], parameters={"topk": 2 ** 53}), "application/json", None,
     400, "InvalidField", "got 9007199254740992", True),
    ("vision", "v2 id of 4,001 digits", v2([CAT], id=HUGE), "application/json", None,
     400, "InvalidField", "'id' must be a string", True),
    ("vision", "v2 id NaN", v2([CAT], id=float("nan")), "application/json", None,
     400, "InvalidField", "'id' must be a string, not nan", True),
    ("vision", "v2 input name of 4,001 digits", {"inputs": [dict(v2([CAT])["inputs"][0], name=HUGE)]},
     "application/json", None, 400, "InvalidField", "'name' must be a string, not a number", True),
]


@pytest.mark.parametrize("model, name, body, content_type, headers, status, kind, says, v2_request", CASES,
                         ids=[case[1] for case in CASES])
def test_a_hostile_request_gets_a_small_4xx_and_its_neighbour_its_answer(
        models, model, name, body, content_type, headers, status, kind, says, v2_request):
    got, answer = good_then(models[model], model, body, content_type, headers)
    assert_contract_error(got, answer, status, kind, says, v2_request)


@pytest.mark.parametrize("size, says", [(2 ** 53, "binary_data_size 9007199254740992 does not fit"),
                                        (HUGE, "binary_data_size an integer of 4,001 digits does not fit"),
                                        (float("inf"), "binary_data_size inf does not fit")],
                         ids=["2^53", "4,001 digits", "Infinity"])
def test_absurd_binary_data_sizes_are_400(models, size, says):
    document = v2([], shape=[1])
    del document["inputs"][0]["data"]
    document["inputs"][0]["binary_size"] = size
    body, length = binary_v2(document, [STRIKER.encode()])
    status, answer = good_then(models["topics"], "topics", body, "application/octet-stream", {HEADER_LENGTH: length})
    assert_contract_error(status, answer, 400, "InvalidField", says, True)


def test_a_binary_element_of_an_encoded_surrogate_is_invalid_utf8(models):
    body, length = binary_v2(v2([], shape=[1]), [b"goal \xed\xa0\x80"])  # U+D800 as (invalid) UTF-8 bytes
    status, answer = good_then(models["topics"], "topics", body, "application/octet-stream", {HEADER_LENGTH: length})
    assert_contract_error(status, answer, 400, "InvalidUTF8", "not valid UTF-8", True)


def test_a_valid_surrogate_pair_is_text(models):
    body = b'{"text": "goal \\ud83d\\ude00"}'  # an escaped pair: one character, U+1F600
    status, answer = good_then(models["topics"], "topics", body, None)
    assert status == 200 and json.loads(answer)["predictions"][0]["label"] == "Sports"


# ---- the one exit: every answer is measured against maxResponseBytes ---------------------------------------
@pytest.fixture(scope="module")
def tight(tmp_path_factory):
    return load_handler(TextClassifierHandler, "minilm_topics.mar", str(tmp_path_factory.mktemp("tight")),
                        maxResponseBytes=1024)


def exit_of(loaded, answer, protocol=None):
    handler, archive = loaded
    context = make_context(*archive)
    request_batch(context, [("body", b"x", "text/plain")])
    handler.context = context  # as handle() sets it
    body = handler.encode(0, answer, protocol)
    return context.get_response_status(0)[0], body


@pytest.mark.parametrize("protocol", [None, "v2"])
def test_an_error_whose_json_passes_the_budget_is_answer_too_large(tight, protocol):
    error = InvalidField("é" * 300)  # within the message bound, but 6 JSON bytes a character (twice in v2)
    error.protocol = protocol
    status, body = exit_of(tight, error)
    assert len(body) <= 1024
    assert_contract_error(status, body, 413, "AnswerTooLarge", "limit of 1,024", protocol == "v2")


@pytest.mark.parametrize("protocol", [None, "kserve_v1", "v2"])
def test_a_successful_answer_over_the_budget_is_answer_too_large_in_its_protocol(tight, protocol):
    status, body = exit_of(tight, Answer(b"[" + b"1," * 600 + b"1]"), protocol)
    assert_contract_error(status, body, 413, "AnswerTooLarge", "the answer is 1,203 bytes", protocol == "v2")


def test_an_answer_within_the_budget_leaves_unchanged(tight):
    status, body = exit_of(tight, Answer(b"x" * 1024, "application/octet-stream"))
    assert (status, body) == (200, b"x" * 1024)


# ---- the pieces --------------------------------------------------------------------------------------------
def test_every_message_is_bounded_with_a_note_of_what_was_cut():
    error = RequestError("advice first: " + "x" * 1_000_000)
    assert error.message.startswith("advice first: xxx") and len(error.message) < MAX_MESSAGE_CHARS + 50
    assert error.message.endswith(f"[{1_000_014 - MAX_MESSAGE_CHARS:,} more characters cut]")
    assert str(error) == error.message and len(json.dumps(error.to_dict())) < 1024
    assert RequestError("short").message == "short"


SHOWN = [
    ("abc", "'abc'"), ("x" * 61, "'" + "x" * 60 + "'... [a string of 61 characters]"), ("\ud800", "'\\ud800'"),
    (7, "7"), (-(10 ** 60), repr(-(10 ** 60))), (10 ** 61 - 1, "an integer of 61 digits"), (-(10 ** 61), "an integer of 62 digits"),
    (10 ** 5000, "an integer of 5,001 digits"),
    (float("nan"), "nan"), (float("-inf"), "-inf"), (True, "True"), (None, "None"),
    ([0] * 10 ** 6, "an array of 1,000,000 items"), ([3], "an array of 1 item"), ({"a": 1}, "an object"),
]


@pytest.mark.parametrize("value, text", SHOWN, ids=[text[:30] for _, text in SHOWN])
def test_shown_client_values_are_short_whatever_their_size(value, text):
    assert shown(value) == text


@pytest.mark.parametrize("document, says", [
    ({"max_detections": HUGE}, "'max_detections' must be a positive integer of at most 9,007,199,254,740,991"),
    ({"max_detections": MAX_JSON_INT + 1}, "got 9007199254740992"),
    ({"threshold": HUGE}, "got an integer of 4,001 digits"),
    ({"threshold": float("nan")}, "from 0 to 1 (the lowest score answered), got nan"),
    ({"threshold": "x" * 100_000}, "[a string of 100,000 characters]"),
])
def test_detector_options_refuse_absurd_numbers_with_short_messages(document, says):
    with pytest.raises(InvalidField) as raised:
        request_options(document, DetectionOptions(0.5, 100), "JSON field")
    assert says in raised.value.message and len(raised.value.message) < 200


def test_the_largest_count_is_still_accepted():
    assert request_options({"max_detections": MAX_JSON_INT}, DetectionOptions(0.5, 100), "x").max_detections == MAX_JSON_INT
