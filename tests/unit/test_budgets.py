"""Per-request budgets without a server: each over-budget request, batched among good ones, gets its own
413 in the contract's JSON (checked before its content is decoded), and the good ones their answers."""

import base64
import json
import random

import pytest

from handlers import image_decoding
from handlers import text_batch_handler
from hostile_inputs import png_declaring
from handlers.image_classifier_handler import ImageClassifierHandler
from handlers.request_budget import embedding_item_bytes, envelope_bytes, label_bytes, predictions_item_bytes
from support import CAT_LABELS, encode, load_handler, make_context, photo, request_batch, responses
from handlers.text_classifier_handler import TextClassifierHandler
from handlers.text_embedding_handler import TextEmbeddingHandler

STRIKER = "The striker scored twice in the final"


def load(cls, mar, tmp_path_factory, **handler_settings):
    return load_handler(cls, mar, str(tmp_path_factory.mktemp(mar)), **handler_settings)


@pytest.fixture(scope="module")
def vision(tmp_path_factory):
    return load(ImageClassifierHandler, "mobilenet_v2.mar", tmp_path_factory)


@pytest.fixture(scope="module")
def topics(tmp_path_factory):
    return load(TextClassifierHandler, "minilm_topics.mar", tmp_path_factory)


@pytest.fixture(scope="module")
def embedding(tmp_path_factory):
    return load(TextEmbeddingHandler, "minilm_embedding.mar", tmp_path_factory)


def handle(loaded, requests):
    """(status, JSON) per request of one batch; requests: (body, content_type) pairs."""
    handler, archive = loaded
    context = make_context(*archive)
    rows = request_batch(context, [("body", body, content_type) for body, content_type in requests])
    outputs = handler.handle(rows, context)
    assert all(len(out) <= handler.settings.maxResponseBytes for out in outputs)
    return responses(context, outputs)


def v2(elements, **extra):
    return dict(extra, inputs=[{"name": "x", "datatype": "BYTES", "shape": [len(elements)], "data": elements}])


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def assert_413(answer, status, kind, says, v2_request=True):
    assert status == 413 and answer["code"] == 413 and answer["type"] == kind, answer
    assert says in answer["message"]
    assert answer.get("error") == (answer["message"] if v2_request else None)


@pytest.fixture
def decoded(monkeypatch):
    """What reached the heavy decoders (image pixels, the tokenizer), recorded."""
    seen = {"images": 0, "texts": []}
    for name in ("_decode_with_torchvision", "_decode_with_pillow", "_decode_jpeg_reduced"):  # the pixel decoders
        monkeypatch.setattr(image_decoding, name, counted(getattr(image_decoding, name), seen))
    real_tokenize = text_batch_handler.tokenize

    def tokenize(tokenizer, text, max_tokens):
        seen["texts"].append(len(text))
        return real_tokenize(tokenizer, text, max_tokens)

    monkeypatch.setattr(text_batch_handler, "tokenize", tokenize)
    return seen


def counted(decoder, seen):
    def decode(*args, **kwargs):
        seen["images"] += 1
        return decoder(*args, **kwargs)
    return decode


# ---- items per request -----------------------------------------------------------------------------------
def test_too_many_texts_get_413_before_any_is_tokenized_and_the_batch_is_served(topics, decoded):
    limit = topics[0].settings.maxItemsPerRequest
    (good, good_answer), (status, answer), (v1, v1_answer), (fits, fits_answer) = handle(topics, [
        (STRIKER, "text/plain"), (v2(["goal"] * (limit + 1)), "application/json"),
        ({"instances": ["goal"] * (limit + 1)}, "application/json"), (v2([STRIKER] * limit), "application/json")])
    assert_413(answer, status, "TooManyItems", f"at most {limit} per request")
    assert_413(v1_answer, v1, "TooManyItems", f"{limit + 1} items", v2_request=False)
    assert good == 200 and good_answer["predictions"][0]["label"] == "Sports"
    assert fits == 200 and fits_answer["outputs"][0]["data"][0] == "Sports"
    assert fits_answer["outputs"][0]["shape"] == [limit, 4]
    assert len(decoded["texts"]) == 1 + limit  # the good plain text and the request that fits


def test_too_many_images_get_413_before_any_is_decoded(vision, decoded):
    limit = vision[0].settings.maxItemsPerRequest
    one_pixel = b64(encode(photo("chelsea")[:1, :1], "PNG"))
    (good, good_answer), (status, answer) = handle(vision, [
        (encode(photo("chelsea")), "image/jpeg"), ({"instances": [{"data": one_pixel}] * (limit + 1)}, None)])
    assert_413(answer, status, "TooManyItems", f"at most {limit} per request", v2_request=False)
    assert good == 200 and good_answer["predictions"][0]["label"] in CAT_LABELS
    assert decoded["images"] == 1


# ---- pixels per request ----------------------------------------------------------------------------------
def test_images_declaring_too_many_pixels_together_get_413_before_decoding(vision, decoded):
    settings = vision[0].settings
    side = int((settings.maxImagePixels * 0.7) ** 0.5)  # each alone within maxImagePixels, two over the budget
    bomb = b64(png_declaring(side, side))  # ~1 kB each; decoding one would allocate side*side*3 bytes
    cat = b64(encode(photo("chelsea")))
    (status, answer), (good, good_answer), (pair, pair_answer) = handle(vision, [
        (json.dumps(v2([bomb, bomb])).encode(), None), (v2([cat]), "application/json"),
        (v2([cat, cat]), "application/json")])
    assert_413(answer, status, "TooManyPixels", f"at most {settings.maxPixelsPerRequest / 1e6:g} megapixels")
    assert good == 200 and good_answer["outputs"][0]["data"][0] in CAT_LABELS
    assert pair == 200 and pair_answer["outputs"][0]["shape"] == [2, 5]
    assert decoded["images"] == 3  # the cats only: no byte of a bomb's pixels was decoded


def test_one_image_over_its_own_limit_is_still_image_too_large(vision, decoded):
    (status, answer), (good, _) = handle(vision, [(png_declaring(7000, 7000), "image/png"),
                                                  (encode(photo("chelsea")), "image/jpeg")])
    assert (status, answer["type"], good) == (413, "ImageTooLarge", 200)
    assert decoded["images"] == 1


# ---- characters per text ---------------------------------------------------------------------------------
@pytest.mark.parametrize("filler", [" ", "x", "word "])  # blank, one endless word, many words
def test_a_text_over_its_characters_gets_413_before_tokenizing(embedding, decoded, filler):
    limit = embedding[0].settings.maxTextChars
    over = (STRIKER + " " + filler * limit)[: limit + 1]
    at_limit = over[:limit]
    (status, answer), (good, good_answer), (v2_status, v2_answer), (long, long_answer) = handle(embedding, [
        (over, "text/plain"), (STRIKER, "text/plain"), (v2([STRIKER, over]), "application/json"),
        (at_limit, "text/plain")])
    assert_413(answer, status, "TextTooLong", f"at most {limit:,} per text", v2_request=False)
    assert_413(v2_answer, v2_status, "TextTooLong", f"{limit + 1:,} characters")
    assert good == 200 and len(good_answer["embedding"]) == 384 and good_answer["truncated"] is False
    # at the limit: served; cut at maxTokens when it has that many tokens (an endless word is one [UNK])
    assert long == 200 and long_answer["truncated"] is (filler == "word ")
    assert max(decoded["texts"]) == limit


# ---- answer size -----------------------------------------------------------------------------------------
def test_an_answer_over_max_response_size_is_refused_before_the_model_runs(embedding, decoded):
    limit = embedding[0].settings.maxResponseBytes
    huge_id = "i" * limit  # echoed in the answer: it cannot fit
    (status, answer), (good, good_answer), (small, small_answer) = handle(embedding, [
        (v2(["naïve café"], id=huge_id), "application/json"), ("naïve café", "text/plain"),
        (v2(["naïve café"], id="e1"), "application/json")])
    assert_413(answer, status, "AnswerTooLarge", f"limit of {limit:,}")
    assert good == 200 and small == 200 and small_answer["id"] == "e1"
    assert small_answer["outputs"][0]["data"] == pytest.approx(good_answer["embedding"], abs=1e-5)
    assert len(decoded["texts"]) == 2  # the refused one was not even tokenized


def test_an_embedding_budget_refuses_what_its_width_cannot_fit(tmp_path_factory):
    # 384 floats x 25 bytes + 64 = 9,664 bytes an item: 2 items fit in 24,000 bytes, 3 do not
    loaded = load(TextEmbeddingHandler, "minilm_embedding.mar", tmp_path_factory,
                  maxResponseBytes=24_000, maxItemsPerRequest=16)
    assert loaded[0].answer_item_bytes(None) == embedding_item_bytes(384) == 9_664
    (two, two_answer), (three, three_answer) = handle(loaded, [(v2(["a b", "c d"]), "application/json"),
                                                              ({"instances": ["a b", "c d", "e f"]}, "application/json")])
    assert two == 200 and two_answer["outputs"][0]["shape"] == [2, 384]
    assert_413(three_answer, three, "AnswerTooLarge", "up to 30,", v2_request=False)


def test_an_answer_the_estimate_missed_is_refused_after_the_model_not_sent(tmp_path_factory):
    # a plain JSON topk is read with the image: the estimate uses the default, the real answer is measured
    loaded = load(ImageClassifierHandler, "mobilenet_v2.mar", tmp_path_factory, maxResponseBytes=20_000)
    cat = b64(encode(photo("chelsea")))
    (status, answer), (good, good_answer) = handle(loaded, [({"image": cat, "topk": 1000}, "application/json"),
                                                           ({"image": cat, "topk": 3}, "application/json")])
    assert_413(answer, status, "AnswerTooLarge", "limit of 20,000", v2_request=False)
    assert good == 200 and len(good_answer["predictions"]) == 3


@pytest.mark.parametrize("protocol", ["v2", "v1"])
def test_the_answer_estimate_bounds_the_real_answer(embedding, topics, vision, protocol):
    cat = b64(encode(photo("chelsea")))
    rng = random.Random(0)
    for loaded, elements, topk in ((embedding, ["naïve café", STRIKER, "x"], None), (topics, [STRIKER, "x y"], None),
                                   (vision, [cat, cat], 1000), (vision, [cat], None)):
        handler = loaded[0]
        request_id = "".join(rng.choice("ab\"\\é\n") for _ in range(50))
        if protocol == "v2":
            body = v2(elements, id=request_id, **({"parameters": {"topk": topk}} if topk else {}))
        else:
            body = {"instances": elements, **({"parameters": {"topk": topk}} if topk else {})}
        context = make_context(*loaded[1])
        rows = request_batch(context, [("body", body, "application/json")])
        [out] = handler.handle(rows, context)
        assert context.get_response_status(0)[0] == 200, out[:300]
        estimate = envelope_bytes(request_id) + len(elements) * handler.answer_item_bytes(topk)
        assert len(out) <= estimate, (handler.kind, len(out), estimate)


def test_classifier_estimates_use_the_longest_label_and_k(vision, topics):
    handler = vision[0]
    assert handler.answer_item_bytes(None) == predictions_item_bytes(5, label_bytes(handler.labels))
    assert handler.answer_item_bytes(5000) == predictions_item_bytes(1000, label_bytes(handler.labels))  # k capped
    assert topics[0].answer_item_bytes(None) == predictions_item_bytes(4, label_bytes(topics[0].labels))
    assert label_bytes(["a", "é\"x"]) == len(json.dumps("é\"x"))


def test_a_v2_request_of_several_images_reads_each_once(vision, monkeypatch):
    """Each element is base64-decoded once and its header read once: the pixel budget and the decoder take
    what was read (before, the budget check decoded the base64 and read the header, and decode did both again)."""
    from handlers import image_classifier_handler
    from handlers import request_payload

    calls = {"b64": 0, "header": 0}

    def counting(name, function):
        def wrapped(*args, **kwargs):
            calls[name] += 1
            return function(*args, **kwargs)
        return wrapped

    for module in (image_classifier_handler, image_decoding):  # the handler's read and decode_rgb's own
        monkeypatch.setattr(module, "read_header", counting("header", image_decoding.read_header))
    monkeypatch.setattr(request_payload.base64, "b64decode", counting("b64", request_payload.base64.b64decode))
    jpeg = encode(photo("chelsea")[::2, ::2])
    ((status, answer),) = handle(vision, [(v2([b64(jpeg)] * 3), "application/json")])
    assert status == 200 and answer["outputs"][0]["shape"][0] == 3
    assert calls == {"b64": 3, "header": 3}, calls
