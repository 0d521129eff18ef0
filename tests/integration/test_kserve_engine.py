"""The KServe engine (`make serve ENGINE=kserve`, tskit.kserve_engine): KServe's ModelServer serving the archives
`make archives` built, each with its own handler, on 127.0.0.1 only. Held against the shared TorchServe on the
same archives: the same v1 and v2 answers byte for byte, the same error bodies and statuses, the same key."""

import base64
import ipaddress
import json
import os
import re
import subprocess
import sys

import psutil
import pytest
import requests

from support import REPO, STRIKER, encode, photo
from videos import make_video

MODELS = ["mobilenet_v2", "minilm_topics", "minilm_embedding"]


@pytest.fixture(scope="module")
def engine(kserve_engine):
    return kserve_engine


def both(engine, client, path, document, token=True):
    """The same request to the engine and to TorchServe: (engine's response, TorchServe's)."""
    key = client.server.keys()["inference"]
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if token else {})}
    ours = requests.post(engine.url + path, data=json.dumps(document), headers=headers, timeout=60)
    theirs = client.infer("POST", path, auth=token, data=json.dumps(document), headers={"Content-Type": "application/json"})
    return ours, theirs


CAT = {"instances": [{"data": base64.b64encode(encode(photo("chelsea"))).decode()}]}
TOPICS_V2 = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [STRIKER]}]}
CASES = [("mobilenet_v2 v1", "/v1/models/mobilenet_v2:predict", CAT),
         ("minilm_topics v2", "/v2/models/minilm_topics/infer", TOPICS_V2),
         ("minilm_embedding v1", "/v1/models/minilm_embedding:predict", {"instances": [{"data": STRIKER}]})]


@pytest.mark.parametrize("name,path,document", CASES, ids=[c[0] for c in CASES])
def test_answers_are_torchserves_byte_for_byte(engine, client, name, path, document):
    ours, theirs = both(engine, client, path, document)
    assert (ours.status_code, ours.headers["content-type"]) == (200, "application/json")
    assert ours.content == theirs.content and theirs.status_code == 200


BAD = [("not an image", "/v1/models/mobilenet_v2:predict", {"instances": [{"data": "aGVsbG8="}]}, 415),
       ("no text field", "/v2/models/minilm_topics/infer", {"inputs": [{"name": "text", "shape": [1],
                                                                      "datatype": "FP32", "data": [1.5]}]}, 400)]


@pytest.mark.parametrize("name,path,document,status", BAD, ids=[b[0] for b in BAD])
def test_bad_input_gets_torchserves_status_and_body(engine, client, name, path, document, status):
    ours, theirs = both(engine, client, path, document)
    assert (ours.status_code, ours.json()) == (status, theirs.json()) and theirs.status_code == status


def test_the_inference_key_is_required_and_probes_stay_open(engine, client):
    ours, theirs = both(engine, client, "/v1/models/minilm_topics:predict", {"instances": [{"data": STRIKER}]},
                        token=False)
    assert (ours.status_code, ours.json()) == (400, theirs.json()) and ours.json()["type"] == "InvalidKeyException"
    assert requests.get(engine.url + "/v2/health/ready", timeout=10).json() == {"ready": True}
    assert requests.get(f"{engine.url}/v2/models/minilm_topics/ready", timeout=10).status_code == 200


def handled_batches(engine):
    """The sizes of the batches the handlers reported in the engine's log (`handled batch size=N`), in order."""
    with open(os.path.join(engine.workdir, "logs", "kserve_engine.log"), encoding="utf-8") as f:
        return [int(m.group(1)) for m in re.finditer(r"handled batch size=(\d+)", f.read())]


def test_a_batch_of_concurrent_requests_is_answered_each_right(engine, client):
    """Requests arriving together are run in the declaration's batches (batchSize 4, never more), each request
    once, and each answer is its own."""
    from concurrent.futures import ThreadPoolExecutor

    key = client.server.keys()["inference"]
    texts = [STRIKER, "Central bank raises interest rates", "New telescope images reveal a galaxy", STRIKER] * 3
    alone = {t: client.infer("POST", "/v1/models/minilm_topics:predict", json={"instances": [{"data": t}]}).json()
             for t in set(texts)}

    def ask(text):
        return requests.post(engine.url + "/v1/models/minilm_topics:predict", json={"instances": [{"data": text}]},
                             headers={"Authorization": f"Bearer {key}"}, timeout=60).json()

    before = len(handled_batches(engine))
    with ThreadPoolExecutor(len(texts)) as pool:
        answers = list(pool.map(ask, texts))
    sizes = handled_batches(engine)[before:]
    assert sum(sizes) == len(texts) and max(sizes) <= 4, sizes
    for text, answer in zip(texts, answers):
        assert [p["label"] for p in answer["predictions"][0]["predictions"]] == \
            [p["label"] for p in alone[text]["predictions"][0]["predictions"]]


def test_it_listens_on_loopback_only(engine):
    """HTTP and gRPC, each on loopback only (gRPC's socket is IPv6 holding the IPv4-mapped 127.0.0.1)."""
    listening = [c.laddr for c in psutil.Process(engine.pid()).connections("inet") if c.status == "LISTEN"]
    assert sorted(address.port for address in listening) == sorted([engine.http_port, engine.grpc_port])
    for address in listening:
        ip = ipaddress.ip_address(address.ip)
        assert (getattr(ip, "ipv4_mapped", None) or ip) == ipaddress.ip_address("127.0.0.1"), listening


def test_a_video_streams_on_the_engine_as_on_torchserve(engine, client):
    """A raw video to TorchServe's plain route on the engine: the same NDJSON chunks as TorchServe sends (8
    frames a step, then the rest and the end), each line equal to TorchServe's."""
    clip = make_video(("chelsea", "coffee", "astronaut") * 4, 1.0, 5, "mp4")
    ours = requests.post(engine.url + "/predictions/mobilenet_v2", data=clip, stream=True, timeout=120,
                         headers={"Content-Type": "video/mp4", **engine.auth_headers()})
    assert ours.status_code == 200 and ours.headers["content-type"] == "application/x-ndjson"
    chunks = [[json.loads(line) for line in chunk.decode().splitlines()] for chunk in ours.iter_content(None)]
    assert [[line.get("frame") for line in chunk] for chunk in chunks] == [list(range(8)), [8, 9, 10, 11, None]]
    theirs = client.predict("mobilenet_v2", clip, "video/mp4")
    expected = [json.loads(line) for line in theirs.text.splitlines()]
    got = [line for chunk in chunks for line in chunk]
    assert [line.get("frame") for line in got] == [line.get("frame") for line in expected]
    for line, reference in zip(got[:-1], expected[:-1]):
        assert [p["index"] for p in line["predictions"]] == [p["index"] for p in reference["predictions"]]
        assert [p["probability"] for p in line["predictions"]] == pytest.approx(
            [p["probability"] for p in reference["predictions"]], abs=1e-5)


def tsctl(url, key_file, *args):
    return subprocess.run([sys.executable, os.path.join(REPO, "scripts", "tsctl.py"), "--inference-url", url,
                           "--key-file", key_file, *args], capture_output=True, text=True, timeout=300)


def test_tsctl_predicts_and_pings_on_either_engine_alike(engine, client, tmp_path):
    """tsctl's inference commands against the engine (TorchServe's plain route and /ping, the same key file)
    print what they print against TorchServe."""
    image = tmp_path / "cat.jpg"
    image.write_bytes(encode(photo("chelsea")))
    for args in (("predict", "mobilenet_v2", str(image)), ("predict", "minilm_topics", "--text", STRIKER),
                 ("ping",)):
        ours = tsctl(engine.inference_url, engine.key_file, *args)
        theirs = tsctl(client.server.inference_url, client.server.key_file, *args)
        assert ours.returncode == theirs.returncode == 0, ours.stderr + theirs.stderr
        assert json.loads(ours.stdout) == json.loads(theirs.stdout), args
