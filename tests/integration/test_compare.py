"""`tsctl.py compare A B --inputs DIR` on a real TorchServe serving minilm_topics and its int8 form.

The report's agreement must equal what the two models answer to the same texts when asked one by one,
its speed rows must count every request (none failed), and it must write the markdown, JSON and PNG.
"""

import json
import os
import subprocess
import sys

import pytest

from own_server import own_server
from support import REPO

MODELS = ["minilm_topics", "minilm_topics_int8"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with own_server(str(tmp_path_factory.mktemp("compare")), models=MODELS) as server:
        yield server


@pytest.fixture(scope="module")
def texts(tmp_path_factory):
    folder = tmp_path_factory.mktemp("compare_inputs")
    with open(os.path.join(REPO, "tests", "data", "topic_headlines.json"), encoding="utf-8") as f:
        headlines = json.load(f)["headlines"]
    for topic, lines in headlines.items():
        for i in range(3):
            (folder / f"{topic.replace('/', '_')}_{i}.txt").write_text(lines[i], encoding="utf-8")
    return folder


def compare(server, a, b, inputs, out):
    cmd = [sys.executable, os.path.join(REPO, "scripts", "tsctl.py"), "--inference-url", server.inference_url,
           "--management-url", server.management_url, "--key-file", server.key_file,
           "compare", a, b, "--inputs", str(inputs), "--out", str(out), "--concurrency", "2", "--requests", "12"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout), result.stderr


def test_fp32_and_int8_agreement_is_what_the_models_answer(server, texts, tmp_path):
    paths, printed = compare(server, "minilm_topics/1.0", "minilm_topics_int8", texts, tmp_path / "report")
    with open(paths["json"], encoding="utf-8") as f:
        report = json.load(f)
    client = server.client()
    same, changes = [], []
    for name in sorted(os.listdir(texts)):
        text = (texts / name).read_text(encoding="utf-8").encode()
        fp32, int8 = (client.predict(m, text, "text/plain; charset=utf-8")["predictions"] for m in MODELS)
        same.append(fp32[0]["label"] == int8[0]["label"])
        by_label = {p["label"]: p["probability"] for p in int8}
        changes.append(max(abs(p["probability"] - by_label[p["label"]]) for p in fp32))
    agreement = report["agreement"]
    assert report["inputs"] == len(same) == 12
    assert agreement["top1_agreement"] == pytest.approx(sum(same) / len(same))
    assert agreement["max_probability_change"] == pytest.approx(max(changes), abs=1e-6)
    for side in ("minilm_topics/1.0", "minilm_topics_int8"):
        speed = report["speed"][side]
        assert speed["requests"] == 2 * 12 and speed["failed"] == 0
        assert 0 < speed["p50_ms"] <= speed["p99_ms"]
    assert open(paths["png"], "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert f"top-1 agreement {agreement['top1_agreement']:.1%}" in open(paths["markdown"]).read()
    assert "minilm_topics/1.0 vs minilm_topics_int8" in printed


def test_a_model_compared_with_itself_agrees_fully(server, texts, tmp_path):
    paths, _ = compare(server, "minilm_topics", "minilm_topics", texts, tmp_path / "same")
    agreement = json.load(open(paths["json"], encoding="utf-8"))["agreement"]
    assert agreement["top1_agreement"] == 1.0 and agreement["disagree"] == []
    assert agreement["max_probability_change"] < 1e-5  # batch composition may move the last bits only


def test_compare_refuses_an_empty_folder(server, tmp_path):
    cmd = [sys.executable, os.path.join(REPO, "scripts", "tsctl.py"), "--inference-url", server.inference_url,
           "--management-url", server.management_url, "--key-file", server.key_file,
           "compare", "minilm_topics", "minilm_topics_int8", "--inputs", str(tmp_path)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "no image or .txt file" in result.stderr
