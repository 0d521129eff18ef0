"""minilm_embedding and minilm_topics through the real TorchServe."""

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from support import REPO

TEXT_MODELS = ["minilm_embedding", "minilm_topics"]
MIXED = [
    "Goal!",
    "The striker scored twice in the final",
    "Central bank raises interest rates to fight inflation, and markets react sharply across Asia and Europe",
    " ".join(["Astronomers observed a distant planet whose atmosphere contains water vapour"] * 40),  # > 256 tokens
]


def test_cli_classifies_the_striker_as_sports(server):
    cmd = [sys.executable, os.path.join(REPO, "scripts", "tsctl.py"), "--inference-url", server.inference_url,
           "--management-url", server.management_url, "--key-file", server.key_file,
           "predict", "minilm_topics", "--text", "The striker scored twice in the final"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["predictions"][0]["label"] == "Sports"
    assert [p["label"] for p in answer["predictions"]].count("Sports") == 1 and len(answer["predictions"]) == 4


def test_embedding_forms_and_shape(client):
    plain = client.predict("minilm_embedding", "naïve café".encode(), "text/plain; charset=utf-8")
    as_json = client.infer("POST", "/predictions/minilm_embedding", json={"text": "naïve café"})
    assert plain.status_code == as_json.status_code == 200
    a, b = torch.tensor(plain.json()["embedding"]), torch.tensor(as_json.json()["embedding"])
    assert a.shape == (384,) and abs(a.norm().item() - 1) < 1e-5
    assert torch.allclose(a, b, atol=1e-6)
    assert plain.json()["truncated"] is False


@pytest.mark.parametrize("model", TEXT_MODELS)
def test_concurrent_mixed_lengths_with_a_bad_input_form_batches(client, model):
    bad = (b"caf\xe9", "text/plain")  # invalid UTF-8
    jobs = [(t.encode(), "text/plain; charset=utf-8") for t in MIXED] * 6 + [bad] * 3
    alone = {t: client.predict(model, t.encode(), "text/plain").json() for t in MIXED}
    before = len(client.batch_sizes(model))
    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(lambda job: client.predict(model, *job), jobs))
    for (body, _), response in zip(jobs, answers):
        if body == bad[0]:
            assert response.status_code == 400 and response.json()["type"] == "InvalidUTF8"
            continue
        assert response.status_code == 200, response.text
        expected, got = alone[body.decode()], response.json()
        assert got["truncated"] is (body.decode() == MIXED[-1])
        if model == "minilm_embedding":
            cosine = torch.nn.functional.cosine_similarity(
                torch.tensor(got["embedding"]), torch.tensor(expected["embedding"]), dim=0)
            assert cosine > 0.99999  # padding inside a mixed batch does not change the answer
        else:
            assert got["predictions"][0]["label"] == expected["predictions"][0]["label"]
            assert abs(got["predictions"][0]["probability"] - expected["predictions"][0]["probability"]) < 1e-4
    sizes = client.batches_since(model, before, len(jobs))
    # at least: the log is the session server's, shared with whatever else reached this model meanwhile
    assert sum(sizes) >= len(jobs), sizes
    assert max(sizes) > 1, sizes


@pytest.mark.parametrize("model", TEXT_MODELS)
def test_text_errors(client, model):
    cases = [
        (b"", "text/plain", 400, "EmptyBody"),
        (b'{"text": ', "application/json", 400, "InvalidJSON"),
        (b'{"txt": "x"}', "application/json", 400, "InvalidField"),
        (b'{"text": 5}', "application/json", 400, "InvalidField"),
        (b"\xff\xd8\xff\xe0", "image/jpeg", 415, "UnsupportedMediaType"),
    ]
    for body, content_type, status, kind in cases:
        response = client.predict(model, body, content_type)
        assert response.status_code == status, (body, response.text)
        assert response.json()["type"] == kind
    assert all(w["status"] == "READY" for w in client.describe(model)["workers"])
