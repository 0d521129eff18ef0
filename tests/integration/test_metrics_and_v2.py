"""Handler metrics on the metrics port (Prometheus text, parsed with prometheus_client), and the
Open Inference Protocol v2 endpoint, batch-correct, on the real server."""

import base64
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from own_server import wait_until
from support import CAT_LABELS, encode, photo


def scrape(server):
    text = requests.get(f"{server.metrics_url}/metrics", timeout=30).text
    return {family.name: family for family in text_string_to_metric_families(text)}


def sample_value(families, family_name, sample_name, **labels):
    family = families.get(family_name)
    if family is None:
        return 0.0
    total = 0.0
    for sample in family.samples:
        if sample.name == sample_name and all(sample.labels.get(k) == v for k, v in labels.items()):
            total += sample.value
    return total


@pytest.fixture
def own_topics(client):
    """minilm_topics registered on the session server under a name of this test's own: the counters
    labelled with it move only with what this test sends, whatever other tests send meanwhile."""
    name = f"metrics_own_topics_{uuid.uuid4().hex[:8]}"  # a fresh name: its counters start at nothing
    registered = client.manage("POST", "/models", params={"url": "minilm_topics.mar", "model_name": name,
                                                           "initial_workers": 1, "synchronous": "true"})
    assert registered.status_code == 200, registered.text
    try:
        yield name
    finally:
        client.manage("DELETE", f"/models/{name}")


def test_handler_metrics_count_exactly_what_was_sent(client, server, own_topics):
    model = own_topics
    good, bad = 10, 3
    jobs = [("Shares slump after retailer cuts forecast".encode(), "text/plain")] * good + [(b"\xff\xfe", "text/plain")] * bad
    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = [r.status_code for r in pool.map(lambda j: client.predict(model, *j), jobs)]
    assert statuses.count(200) == good and statuses.count(400) == bad

    def counted():
        after = scrape(server)
        return (sample_value(after, "InvalidInputs", "InvalidInputs_total", ModelName=model, ErrorType="InvalidUTF8")
                == bad and sample_value(after, "BatchSize", "BatchSize_sum", ModelName=model) == good + bad
                and after)

    # the worker reports its metrics on its own thread: wait for them (a deadline, not a pause)
    after = wait_until(counted, 30, what="InvalidInputs and BatchSize of exactly what was sent")
    for name in ("PreprocessTime", "InferenceTime", "PostprocessTime"):
        assert sample_value(after, name, f"{name}_count", ModelName=model) > 0, name
        assert sample_value(after, name, f"{name}_sum", ModelName=model) > 0, name
    batches = sample_value(after, "BatchSize", "BatchSize_count", ModelName=model)
    assert 1 <= batches <= good + bad, batches


def v2_infer(client, model, elements, request_id):
    body = {"id": request_id, "inputs": [{"name": "input-0", "datatype": "BYTES", "shape": [len(elements)], "data": elements}]}
    return client.infer("POST", f"/v2/models/{model}/infer", json=body)


def test_v2_image_requests_are_batched_and_each_gets_its_own_answer(client):
    cat = base64.b64encode(encode(photo("chelsea"))).decode()
    coffee = base64.b64encode(encode(photo("coffee"))).decode()
    jobs = [(f"req-{i}", [cat] if i % 2 else [coffee]) for i in range(16)] + [("pair", [cat, coffee])]
    before = len(client.batch_sizes("mobilenet_v2"))
    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(lambda job: v2_infer(client, "mobilenet_v2", job[1], job[0]), jobs))
    for (request_id, elements), response in zip(jobs, answers):
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["id"] == request_id and body["model_name"] == "mobilenet_v2"
        outputs = {o["name"]: o for o in body["outputs"]}
        labels = outputs["labels"]
        assert labels["datatype"] == "BYTES" and labels["shape"] == [len(elements), 5]
        assert outputs["probabilities"]["datatype"] == "FP32" and outputs["indices"]["datatype"] == "INT64"
        for row, element in enumerate(elements):
            top = labels["data"][row * 5]
            assert (top in CAT_LABELS) if element == cat else (top == "espresso")
    sizes = client.batches_since("mobilenet_v2", before, len(jobs))
    assert max(sizes) > 1, sizes


def test_v2_text_embedding_and_errors(client):
    response = v2_infer(client, "minilm_embedding", ["naïve café", "The striker scored twice"], "e1")
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o for o in response.json()["outputs"]}
    assert outputs["embedding"]["shape"] == [2, 384] and len(outputs["embedding"]["data"]) == 768
    assert outputs["truncated"] == {"name": "truncated", "datatype": "BOOL", "shape": [2], "data": [False, False]}
    plain = client.predict("minilm_embedding", "naïve café".encode(), "text/plain").json()["embedding"]
    assert max(abs(a - b) for a, b in zip(plain, outputs["embedding"]["data"][:384])) < 1e-5

    bad = client.infer("POST", "/v2/models/minilm_topics/infer",
                       json={"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1.0]}]})
    assert bad.status_code == 400 and bad.json()["type"] == "InvalidField"
    empty = v2_infer(client, "minilm_topics", [""], "e2")
    assert empty.status_code == 400 and empty.json()["type"] == "EmptyText"
