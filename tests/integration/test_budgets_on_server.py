"""Per-request budgets on the real server: each over-budget request, sent concurrently with good traffic,
gets its 413 in the contract's JSON, the good requests get their right answers, and no worker restarts
(the same worker pids before and after). Before the budgets, the 2,000-text and 40,000-text requests
below restarted their workers (an answer above max_response_size; bucketing past responseTimeout).
A bad v2 request through tritonclient raises InferenceServerException with the handler's message."""

import base64
import json
import random
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from hostile_inputs import png_declaring
from own_server import worker_pids
from support import CAT_LABELS, encode, photo
from tskit.declaration import load

STRIKER = "The striker scored twice in the final"
SETTINGS = {name: load(name).settings() for name in ("mobilenet_v2", "minilm_topics", "minilm_embedding")}


def v2(elements, **extra):
    return dict(extra, inputs=[{"name": "x", "datatype": "BYTES", "shape": [len(elements)], "data": elements}])


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def over_budget_requests(max_response_size: int):
    """(name, model, path, body, content type, error type) of each over-budget request."""
    image, text = SETTINGS["mobilenet_v2"], SETTINGS["minilm_topics"]
    side = int((image.maxImagePixels * 0.7) ** 0.5)  # each image alone allowed, two over the request's pixels
    bomb = b64(png_declaring(side, side))
    one_pixel = b64(encode(photo("chelsea")[:1, :1], "PNG"))
    long_text = (STRIKER + " ") * (text.maxTextChars // len(STRIKER) + 1)
    v2_path = "/v2/models/{}/infer"
    return [
        ("2,000 one-word texts (answer over max_response_size before)", "minilm_embedding",
         v2_path.format("minilm_embedding"), v2(["word"] * 2000), "application/json", "TooManyItems"),
        ("40,000 short texts (bucketing past responseTimeout before)", "minilm_topics",
         v2_path.format("minilm_topics"), v2(["a goal"] * 40_000), None, "TooManyItems"),
        ("33 one-pixel images, KServe v1", "mobilenet_v2", "/v1/models/mobilenet_v2:predict",
         {"instances": [{"data": one_pixel}] * (image.maxItemsPerRequest + 1)}, "application/json", "TooManyItems"),
        (f"two ~1 kB PNGs declaring {side}x{side} each", "mobilenet_v2", v2_path.format("mobilenet_v2"),
         v2([bomb, bomb]), "application/json", "TooManyPixels"),
        (f"a text of {len(long_text):,} characters", "minilm_topics", "/predictions/minilm_topics",
         long_text.encode(), "text/plain; charset=utf-8", "TextTooLong"),
        ("an embedding whose answer would exceed max_response_size (a long id)", "minilm_embedding",
         v2_path.format("minilm_embedding"), v2(["naïve café"], id="i" * max_response_size), "application/json",
         "AnswerTooLarge"),
    ]


def send(client, path, body, content_type):
    data = body if isinstance(body, (bytes, str)) else json.dumps(body).encode()
    return client.infer("POST", path, data=data, headers={"Content-Type": content_type} if content_type else {})


def test_over_budget_requests_get_413_among_good_traffic_and_no_worker_restarts(client, server):
    cat = encode(photo("chelsea"))
    reference = client.predict("minilm_embedding", "naïve café".encode(), "text/plain").json()["embedding"]
    good = [("mobilenet_v2", "/predictions/mobilenet_v2", cat, "image/jpeg"),
            ("minilm_topics", "/predictions/minilm_topics", STRIKER.encode(), "text/plain"),
            ("minilm_embedding", "/predictions/minilm_embedding", "naïve café".encode(), "text/plain"),
            ("minilm_topics", "/v2/models/minilm_topics/infer", v2([STRIKER] * 16), "application/json")] * 6
    bad = over_budget_requests(int(server.props["max_response_size"]))
    jobs = [("good", job) for job in good] + [("bad", job) for job in bad]
    random.Random(0).shuffle(jobs)
    before = worker_pids(client)
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda job: send(client, *job[1][2:5] if job[0] == "bad" else job[1][1:]), jobs))
    for (which, job), response in zip(jobs, answers):
        if which == "bad":
            name, _, path, _, _, kind = job
            assert response.status_code == 413, (name, response.status_code, response.text[:300])
            answer = response.json()
            assert answer["type"] == kind and answer["code"] == 413, (name, answer)
            assert ("error" in answer) == path.startswith("/v2/")
            continue
        model, path, _, _ = job
        assert response.status_code == 200, (model, response.text[:300])
        answer = response.json()
        if path.startswith("/v2/"):
            labels = next(o for o in answer["outputs"] if o["name"] == "labels")
            assert labels["shape"] == [16, 4] and set(labels["data"][::4]) == {"Sports"}
        elif model == "mobilenet_v2":
            assert answer["predictions"][0]["label"] in CAT_LABELS
        elif model == "minilm_topics":
            assert answer["predictions"][0]["label"] == "Sports"
        else:
            assert answer["embedding"] == pytest.approx(reference, abs=1e-5)
    assert worker_pids(client) == before


# ---- tritonclient reads v2's "error" (issue 10) ------------------------------------------------------------
def triton_infer(server, model, tensor):
    client = triton.InferenceServerClient(url=server.inference_url.removeprefix("http://"), network_timeout=120)
    return client.infer(model, [tensor], headers=server.auth_headers("inference"))


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_tritonclient_raises_with_the_handlers_message_and_its_4xx(client, server, binary):
    before = worker_pids(client)
    wrong_type = triton.InferInput("x", [1], "FP32")
    wrong_type.set_data_from_numpy(np.array([1.0], dtype=np.float32), binary_data=binary)
    with pytest.raises(InferenceServerException) as raised:
        triton_infer(server, "minilm_topics", wrong_type)
    assert raised.value.status() == "400"
    assert "input datatype must be BYTES" in raised.value.message()

    limit = SETTINGS["minilm_embedding"].maxItemsPerRequest
    too_many = triton.InferInput("text", [limit + 1], "BYTES")
    too_many.set_data_from_numpy(np.array([b"goal"] * (limit + 1), dtype=np.object_), binary_data=binary)
    with pytest.raises(InferenceServerException) as raised:
        triton_infer(server, "minilm_embedding", too_many)
    assert raised.value.status() == "413"
    assert raised.value.message() == (f"the request has {limit + 1} items; this model takes at most {limit} "
                                      f"per request: split it into several requests")
    assert worker_pids(client) == before
