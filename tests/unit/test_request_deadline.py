"""request_deadline: a stamped request that waited past its patience is refused (503) before decoding."""

import pytest

from handlers.request_deadline import check_deadline, started_at
from handlers.request_errors import InvalidField, RequestExpired

NOW = 1_800_000_000.0  # 2027-01-15, seconds since the epoch


def lower_keys(headers):
    """A header reader as BatchHandler.request_header gives one: names in any case."""
    by_name = {name.lower(): value for name, value in headers.items()}
    return lambda name: by_name.get(name.lower())


def headers(**values):
    return lower_keys({name.replace("_", "-"): value for name, value in values.items()})


@pytest.mark.parametrize("stamp", ["t=1799999999.5", "t=1799999999500", "t=1799999999500000", "1799999999500"])
def test_the_stamp_is_read_in_seconds_milliseconds_or_microseconds(stamp):
    assert started_at(stamp) == pytest.approx(NOW - 0.5)


@pytest.mark.parametrize("stamp", ["t=", "yesterday", "t=12", "t=1e9", "t=" + "9" * 30, "t=-1799999999"])
def test_a_stamp_that_is_not_a_time_is_a_400(stamp):
    with pytest.raises(InvalidField) as err:
        started_at(stamp)
    assert err.value.status == 400 and len(err.value.message) < 200


def test_a_request_past_its_patience_is_expired_with_503():
    with pytest.raises(RequestExpired) as err:
        check_deadline(headers(X_Request_Start="t=1799999990", X_Request_Timeout_Ms="2000"), 0, NOW)
    assert err.value.status == 503 and "10,000 ms" in err.value.message and "2,000 ms" in err.value.message


def test_the_models_patience_is_the_default_and_zero_means_none():
    stamped = headers(X_Request_Start=f"t={NOW - 3:.3f}")
    with pytest.raises(RequestExpired):
        check_deadline(stamped, 2000, NOW)
    check_deadline(stamped, 5000, NOW)  # within it
    check_deadline(stamped, 0, NOW)  # the model sets none and the request states none


def test_requests_without_a_stamp_are_always_served():
    check_deadline(headers(X_Request_Timeout_Ms="1"), 1, NOW)
    check_deadline(lower_keys({}), 1, NOW)


def test_header_names_are_read_whatever_their_case():
    with pytest.raises(RequestExpired):
        check_deadline(lower_keys({"X-REQUEST-START": "t=1799999000", "x-Request-Timeout-MS": "5"}), 0, NOW)


@pytest.mark.parametrize("timeout", ["-5", "soon", "1" * 40])
def test_a_patience_that_is_not_milliseconds_is_a_400(timeout):
    with pytest.raises(InvalidField):
        check_deadline(headers(X_Request_Start="t=1799999999", X_Request_Timeout_Ms=timeout), 0, NOW)


def test_an_expired_request_is_answered_503_alone_and_the_model_never_sees_it(tmp_path):
    """Through the real handler: a stale stamped request among fresh ones is refused before decoding (its body
    is not even an image), the others of the batch are answered, and only they reach the model."""
    import json
    import time

    from handlers.image_classifier_handler import ImageClassifierHandler
    from support import CAT_LABELS, encode, load_handler, make_context, photo, request_batch

    handler, archive = load_handler(ImageClassifierHandler, "mobilenet_v2.mar", str(tmp_path), maxQueueMs=5000)
    context = make_context(*archive)
    jpeg, now = encode(photo("chelsea")), time.time()
    stale = {"Host": "h", "X-Request-Start": f"t={now - 60:.3f}"}
    fresh = {"Host": "h", "X-Request-Start": f"t={now * 1e3:.0f}", "X-Request-Timeout-Ms": "30000"}
    rows = request_batch(context, [("body", jpeg, "image/jpeg"), ("body", b"not an image", "image/jpeg"),
                                   ("body", jpeg, "image/jpeg")], [fresh, stale, {"Host": "h"}])
    seen = []
    model = handler.model
    handler.model = lambda batch: seen.append(len(batch)) or model(batch)
    try:
        outputs = handler.handle(rows, context)
    finally:
        handler.model = model
    answers = [(context.get_response_status(i)[0], json.loads(out)) for i, out in enumerate(outputs)]
    assert answers[1][0] == 503 and answers[1][1]["type"] == "RequestExpired", answers[1]
    assert "60," in answers[1][1]["message"] and "5,000 ms" in answers[1][1]["message"]
    for status, answer in (answers[0], answers[2]):
        assert status == 200 and answer["predictions"][0]["label"] in CAT_LABELS
    assert seen == [2]
