"""tskit.client without TorchServe: key expiry, archive names, bounded retries (against a real local HTTP server)."""

import datetime
import http.server
import json
import os
import threading

import pytest

from tskit.client import ClientError, KeyFile, TorchServeClient, parse_expiration, store_archive


def write_keys(path, expires_in_s):
    stamp = (datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=expires_in_s))
    text = stamp.strftime("%Y-%m-%dT%H:%M:%S.%f") + "123Z"  # nanoseconds, as TorchServe writes them
    path.write_text(json.dumps({"inference": {"key": "i", "expiration time": text},
                                "management": {"key": "m", "expiration time": text}, "API": {"key": "a"}}))
    return str(path)


def test_expiration_with_nanoseconds_is_parsed():
    value = parse_expiration("2026-11-27T18:46:06.756847359Z")
    assert (value.hour, value.minute, value.second, value.microsecond) == (18, 46, 6, 756847)
    assert value.tzinfo is datetime.timezone.utc


def test_a_key_expires_only_after_its_expiration_time(tmp_path):
    assert not KeyFile(write_keys(tmp_path / "fresh.json", 600)).expired("inference")
    assert KeyFile(write_keys(tmp_path / "old.json", -1)).expired("inference")


def test_a_missing_key_file_is_a_clear_error(tmp_path):
    with pytest.raises(ClientError, match="no key file"):
        KeyFile(str(tmp_path / "absent.json")).key("inference")


@pytest.mark.parametrize("name", ["/tmp/unpacked", "/abs/model.mar", "../model.mar", "sub/model.mar",
                                  "https://example.com/m.mar", "file:model.mar", "model", ".hidden.mar",
                                  "C:\\x.mar"])
def test_register_takes_only_a_bare_archive_name(name):
    with pytest.raises(ClientError, match="archive file name"):
        store_archive(name)


def test_a_bare_archive_name_is_kept():
    assert store_archive("mobilenet_v2.mar") == "mobilenet_v2.mar"


class Scripted(http.server.BaseHTTPRequestHandler):
    """Answers each request with the next (status, body) of `script`, recording what it was sent."""
    script, seen = [], []

    def _answer(self):
        status, body = self.script.pop(0)
        Scripted.seen.append((self.command, self.path, self.headers.get("Authorization")))
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_PUT = do_DELETE = do_POST = _answer

    def log_message(self, *args):
        pass


@pytest.fixture
def scripted_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Scripted)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    Scripted.seen.clear()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


CME = (500, json.dumps({"code": 500, "type": "InternalServerException",
                        "message": "java.util.ConcurrentModificationException"}))


def test_transient_management_failures_are_retried_then_answered(scripted_server, monkeypatch, caplog):
    monkeypatch.setattr("tskit.client.RETRY_DELAYS_S", (0.01, 0.01, 0.01))
    Scripted.script[:] = [CME, (503, "{}"), (200, json.dumps({"status": "ok"}))]
    client = TorchServeClient(scripted_server, scripted_server)
    assert client.unregister("m") == {"status": "ok"}
    assert len(Scripted.seen) == 3
    assert sum("retry" in r.getMessage() for r in caplog.records) == 2


def test_retries_are_bounded(scripted_server, monkeypatch):
    monkeypatch.setattr("tskit.client.RETRY_DELAYS_S", (0.01, 0.01))
    Scripted.script[:] = [CME, CME, CME]
    with pytest.raises(ClientError, match="ConcurrentModificationException"):
        TorchServeClient(scripted_server, scripted_server).scale("m", 1)
    assert len(Scripted.seen) == 3


def test_registration_is_not_retried(scripted_server, monkeypatch):
    monkeypatch.setattr("tskit.client.RETRY_DELAYS_S", (0.01, 0.01))
    Scripted.script[:] = [CME, (200, "{}")]
    with pytest.raises(ClientError):
        TorchServeClient(scripted_server, scripted_server).register("m.mar")
    assert len(Scripted.seen) == 1


REJECTED = (400, json.dumps({"code": 400, "type": "InvalidKeyException", "message": "Token Authorization failed."}))


def test_an_unexpired_rejected_key_is_not_renewed(scripted_server, tmp_path):
    Scripted.script[:] = [REJECTED, (200, "{}")]
    client = TorchServeClient(scripted_server, scripted_server, write_keys(tmp_path / "k.json", 600))
    with pytest.raises(ClientError, match="has not expired"):
        client.ping()
    assert [path for _, path, _ in Scripted.seen] == ["/ping"]  # no call to /token


def test_an_expired_key_is_renewed_once_and_the_call_repeated(scripted_server, tmp_path):
    keys = tmp_path / "k.json"
    client = TorchServeClient(scripted_server, scripted_server, write_keys(keys, -1))
    Scripted.script[:] = [REJECTED, (200, "{}"), (200, json.dumps({"status": "Healthy"}))]
    original = Scripted._answer

    def answer(self):  # /token rewrites the key file, as TorchServe does
        if self.path.startswith("/token"):
            doc = json.loads(keys.read_text())
            doc["inference"] = {"key": "renewed", "expiration time": "2999-01-01T00:00:00.0Z"}
            keys.write_text(json.dumps(doc))
        original(self)
    Scripted.do_GET = answer
    try:
        assert client.ping() == {"status": "Healthy"}
    finally:
        Scripted.do_GET = original
    assert [(p.split("?")[0], auth) for _, p, auth in Scripted.seen] == [
        ("/ping", "Bearer i"), ("/token", "Bearer a"), ("/ping", "Bearer renewed")]


def test_unregister_and_wait_polls_until_the_model_is_gone(scripted_server, monkeypatch):
    monkeypatch.setattr("tskit.client.time.sleep", lambda s: None)
    Scripted.script[:] = [(200, json.dumps({"status": "ok"})), (200, json.dumps([{"modelVersion": "1.0"}])),
                          (404, json.dumps({"code": 404, "type": "ModelNotFoundException", "message": "gone"}))]
    TorchServeClient(scripted_server, scripted_server).unregister_and_wait("m")
    assert len(Scripted.seen) == 3


def test_register_passes_the_response_timeout(scripted_server):
    Scripted.script[:] = [(200, json.dumps({"status": "ok"}))]
    TorchServeClient(scripted_server, scripted_server).register("m.mar", model_name="m", response_timeout=90)
    assert "response_timeout=90" in str(Scripted.seen[0])


def test_infer_returns_any_status_with_the_token_and_the_tools_read_urls_and_metrics_from_the_client(
        scripted_server, tmp_path):
    Scripted.script[:] = [(503, json.dumps({"code": 503, "type": "ServiceUnavailableException", "message": "full"})),
                          (200, "# HELP CacheHits\n")]
    client = TorchServeClient(scripted_server, scripted_server, write_keys(tmp_path / "keys.json", 3600),
                              metrics_url=scripted_server)
    assert client.infer("m", b"x", "text/plain", version="2.0").status_code == 503  # not raised: the caller judges
    twin = client.with_session()
    assert twin.session is not client.session and twin.key("inference") == "i"
    assert twin.metrics() == "# HELP CacheHits\n"
    assert client.prediction_url("m") == f"{scripted_server}/predictions/m"
    assert [(method, path, auth) for method, path, auth in Scripted.seen] == [
        ("POST", "/predictions/m/2.0", "Bearer i"), ("GET", "/metrics", None)]
    with pytest.raises(ClientError, match="no metrics address"):
        TorchServeClient(scripted_server, scripted_server).metrics()


def test_ports_are_read_from_the_config_with_torchserves_defaults(tmp_path):
    """tskit.addresses: one reader of where a server listens; the CLI's and the client's defaults are the
    repo's config.properties, whatever ports it names."""
    from tskit import addresses
    from tskit.cli import DEFAULT_INFERENCE, DEFAULT_MANAGEMENT
    from tskit.properties import read_properties

    props = read_properties(addresses.CONFIG)
    served = addresses.served()
    assert served.inference == props["inference_address"] and served.management == props["management_address"]
    assert served.grpc_inference == f"{props['grpc_inference_address']}:{props['grpc_inference_port']}"
    assert TorchServeClient().inference_url == served.inference
    if "TS_INFERENCE_URL" not in os.environ and "TS_MANAGEMENT_URL" not in os.environ:
        assert (DEFAULT_INFERENCE, DEFAULT_MANAGEMENT) == (served.inference, served.management)
    other = addresses.of({"inference_address": "http://127.0.0.1:9080/", "grpc_inference_port": "9070"})
    assert (other.inference, other.management, other.grpc_inference) == \
        ("http://127.0.0.1:9080", "http://127.0.0.1:8081", "127.0.0.1:9070")
