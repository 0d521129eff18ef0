"""Security: token auth on 8080 and 8081, allowed_urls for registration, loopback-only listeners."""

import collections
import ipaddress
import os
import shutil
import socket
import tempfile
import zipfile
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest
import yaml

from conftest import Client
from own_server import own_server, wait_until
from support import MODEL_STORE

MODEL = "mobilenet_v2"


def rejected(response) -> bool:
    """TorchServe 0.12 answers a missing, wrong or wrong-kind token with 400 InvalidKeyException."""
    return response.status_code == 400 and response.json().get("type") == "InvalidKeyException"


def test_inference_port_rejects_missing_wrong_and_wrong_kind_tokens(client, server):
    keys = server.keys()
    bad = {"none": {}, "wrong": {"Authorization": "Bearer not-a-key"},
           "management key": {"Authorization": f"Bearer {keys['management']}"},
           "API key": {"Authorization": f"Bearer {keys['API']}"},
           "no Bearer scheme": {"Authorization": keys["inference"]}}
    calls = [("GET", "/ping", {}), ("GET", "/models", {}),
             ("POST", f"/predictions/{MODEL}", {"data": b"\xff\xd8", "headers": {"Content-Type": "image/jpeg"}})]
    for label, headers in bad.items():
        for method, path, kwargs in calls:
            kwargs = dict(kwargs)
            response = client.infer(method, path, headers={**kwargs.pop("headers", {}), **headers}, auth=False, **kwargs)
            assert rejected(response), (label, method, path, response.status_code, response.text[:200])
    assert client.infer("GET", "/ping").json() == {"status": "Healthy"}


def test_management_port_rejects_missing_wrong_and_wrong_kind_tokens(client, server):
    keys = server.keys()
    bad = {"none": {}, "wrong": {"Authorization": "Bearer not-a-key"},
           "inference key": {"Authorization": f"Bearer {keys['inference']}"},
           "no Bearer scheme": {"Authorization": keys["management"]}}
    calls = [("GET", "/models", {}), ("GET", f"/models/{MODEL}", {}),
             ("PUT", f"/models/{MODEL}", {"params": {"min_worker": 0}}),
             ("DELETE", f"/models/{MODEL}", {}),
             ("POST", "/models", {"params": {"url": "mobilenet_v2.mar", "model_name": "intruder"}})]
    pids = sorted(w["pid"] for w in client.describe(MODEL)["workers"])
    for label, headers in bad.items():
        for method, path, kwargs in calls:
            response = client.manage(method, path, headers=headers, auth=False, **kwargs)
            assert rejected(response), (label, method, path, response.status_code, response.text[:200])
    # nothing the rejected calls asked for happened
    assert sorted(w["pid"] for w in client.describe(MODEL)["workers"]) == pids
    names = [m["modelName"] for m in client.manage("GET", "/models").json()["models"]]
    assert MODEL in names and "intruder" not in names


def test_all_listeners_are_on_loopback(server):
    frontend = psutil.Process(server.pid())
    connections = getattr(frontend, "net_connections", None) or frontend.connections  # psutil 6+ / 5.9 (kserve's pin)
    listening = [c.laddr for c in connections(kind="inet") if c.status == psutil.CONN_LISTEN]
    ports = {a.port for a in listening}
    for url in (server.inference_url, server.management_url, server.metrics_url):
        assert int(url.rsplit(":", 1)[1]) in ports, (url, listening)
    assert int(server.props["grpc_inference_port"]) in ports and int(server.props["grpc_management_port"]) in ports
    for address in listening:
        ip = ipaddress.ip_address(address.ip)
        assert (getattr(ip, "ipv4_mapped", None) or ip).is_loopback, f"listening on {address.ip}:{address.port}"
    # and from this host's other addresses the ports are closed
    others = [a.address for addrs in psutil.net_if_addrs().values() for a in addrs
              if a.family == socket.AF_INET and not ipaddress.ip_address(a.address).is_loopback]
    for host in others:
        for port in ports:
            with socket.socket() as s:
                s.settimeout(2)
                assert s.connect_ex((host, port)) != 0, f"{host}:{port} accepts connections"


def registration_attempts(base: str):
    """Archives outside the server's model store, as the URL forms a client could send."""
    archive = os.path.join(MODEL_STORE, "minilm_topics.mar")
    elsewhere = os.path.join(base, "elsewhere")
    os.makedirs(elsewhere)
    shutil.copy(archive, os.path.join(elsewhere, "intruder.mar"))
    return {
        "https URL": ("https://example.com/intruder.mar", "does not match any allowed URL"),
        "file URL outside the store": (f"file://{elsewhere}/intruder.mar", "does not match any allowed URL"),
        "file URL to a system file": ("file:///etc/passwd", "does not match any allowed URL"),
        "relative path out of the store": ("../elsewhere/intruder.mar", "Relative path is not allowed"),
        "absolute path": (f"{elsewhere}/intruder.mar", "Model not found"),
    }


QUEUE = 4


@pytest.fixture(scope="module")
def bare_server(tmp_path_factory):
    """A server of its own with one small model, the shipped allowed_urls, a model store in a temp dir,
    and a job queue of only QUEUE requests (to see what a full queue answers): a copy of the archive whose
    model-config.yaml says jobQueueSize QUEUE (the declaration's own queue wins over job_queue_size)."""
    base = str(tmp_path_factory.mktemp("allowed_urls"))
    small_queue = os.path.join(str(tmp_path_factory.mktemp("small_queue")), "minilm_topics.mar")
    with zipfile.ZipFile(os.path.join(MODEL_STORE, "minilm_topics.mar")) as source, \
            zipfile.ZipFile(small_queue, "w") as copy:
        for info in source.infolist():
            data = source.read(info)
            if info.filename == "model-config.yaml":
                data = yaml.safe_dump(dict(yaml.safe_load(data), jobQueueSize=QUEUE), sort_keys=False).encode()
            copy.writestr(info, data)
    with own_server(base, models=["minilm_topics"], sources={"minilm_topics": small_queue}) as server:
        yield base, server


def test_a_full_job_queue_answers_503_at_once_and_the_server_serves_on(bare_server):
    _, server = bare_server
    client = Client(server)
    assert client.describe("minilm_topics")["jobQueueStatus"]["remainingCapacity"] == QUEUE
    pids = [w["pid"] for w in client.describe("minilm_topics")["workers"]]
    text = " ".join(["Central bank raises interest rates to fight inflation"] * 20).encode()
    with ThreadPoolExecutor(max_workers=32) as pool:
        answers = list(pool.map(lambda _: client.predict("minilm_topics", text, "text/plain"), range(96)))
    statuses = collections.Counter(r.status_code for r in answers)
    assert set(statuses) == {200, 503} and statuses[503] > 0 and statuses[200] >= QUEUE, statuses
    refused = next(r for r in answers if r.status_code == 503)
    error = refused.json()
    assert error["code"] == 503 and error["type"] == "ServiceUnavailableException", error
    assert all(r.json()["predictions"][0]["label"] == "Business" for r in answers if r.status_code == 200)
    after = client.predict("minilm_topics", text, "text/plain")
    assert after.status_code == 200 and [w["pid"] for w in client.describe("minilm_topics")["workers"]] == pids


def test_registering_from_outside_the_model_store_is_refused(bare_server):
    base, server = bare_server
    client = Client(server)
    store = os.path.join(base, "model_store")
    before = sorted(os.listdir(store))
    for label, (url, says) in registration_attempts(base).items():
        response = client.manage("POST", "/models", params={"url": url, "model_name": "intruder",
                                                             "initial_workers": 1, "synchronous": "true"})
        assert response.status_code == 404, (label, response.status_code, response.text)
        assert says in response.json()["message"], (label, response.json())
    names = [m["modelName"] for m in client.manage("GET", "/models").json()["models"]]
    assert names == ["minilm_topics"]
    assert sorted(os.listdir(store)) == before  # nothing was fetched into the store
    # what the store holds can still be registered by file name
    ok = client.manage("POST", "/models", params={"url": "minilm_topics.mar", "model_name": "topics_again",
                                                  "initial_workers": 1, "synchronous": "true"})
    assert ok.status_code == 200, ok.text
    assert client.manage("DELETE", "/models/topics_again").status_code == 200


def test_a_folder_named_model_store_elsewhere_is_not_the_model_store(bare_server):
    base, server = bare_server
    client = Client(server)
    decoy = os.path.join(base, "attacker", "model_store")
    os.makedirs(decoy, exist_ok=True)
    shutil.copy(os.path.join(MODEL_STORE, "minilm_topics.mar"), os.path.join(decoy, "decoy.mar"))
    response = client.manage("POST", "/models", params={"url": f"file://{decoy}/decoy.mar", "model_name": "decoy",
                                                         "initial_workers": 1, "synchronous": "true"})
    if response.status_code == 200:
        client.manage("DELETE", "/models/decoy")
    assert response.status_code == 404 and "does not match any allowed URL" in response.json()["message"]


def test_the_proposed_allowed_urls_refuses_every_url_and_keeps_file_names(tmp_path):
    """allowed_urls=^$: every URL form is refused, a decoy model_store folder included; archives in the
    model store still register by file name (TorchServe checks allowed_urls for URLs only)."""
    base = str(tmp_path)
    attempts = registration_attempts(base)
    decoy = os.path.join(base, "attacker", "model_store")
    os.makedirs(decoy)
    shutil.copy(os.path.join(MODEL_STORE, "minilm_topics.mar"), os.path.join(decoy, "decoy.mar"))
    with own_server(base, models=[], allowed_urls="^$") as server:
        client = Client(server)
        wait_until(lambda: client.manage("GET", "/models").status_code == 200, 60, what="management API")
        store = os.path.join(base, "model_store")
        os.symlink(os.path.join(MODEL_STORE, "minilm_topics.mar"), os.path.join(store, "minilm_topics.mar"))
        urls = [url for url, _ in attempts.values()] + [f"file://{decoy}/decoy.mar",
                                                        f"file://{store}/minilm_topics.mar"]
        for url in urls:
            response = client.manage("POST", "/models", params={"url": url, "initial_workers": 0})
            assert response.status_code == 404, (url, response.text)
        ok = client.manage("POST", "/models", params={"url": "minilm_topics.mar", "initial_workers": 0})
        assert ok.status_code == 200, ok.text
        assert [m["modelName"] for m in client.manage("GET", "/models").json()["models"]] == ["minilm_topics"]


def test_worker_sockets_live_in_the_servers_own_temp_dir(server):
    # TorchServe's launcher takes java.io.tmpdir from TEMP: without it every server on the machine puts
    # its workers' sockets at /tmp/.ts.sock.900N, and two servers restarting workers at once cross them.
    workers = [w for m in server.expected_models() for w in server.model_status(m)]
    ports = {int(w["id"]) for w in workers}
    assert ports and server.tmpdir != tempfile.gettempdir()
    for port in ports:
        assert os.path.exists(os.path.join(server.tmpdir, f".ts.sock.{port}")), port
