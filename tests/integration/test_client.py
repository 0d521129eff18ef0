"""The one client (tskit.client) and tsctl against a real TorchServe of this module's own: keys are
renewed only on expiry or on request (renewing rotates the key for every client), and `register`
refuses anything but a bare archive name of the model store.

A server of its own because these tests rotate its keys; it serves one model to start quickly.
"""

import json
import os
import subprocess
import sys
import zipfile

import pytest

from own_server import own_server
from support import REPO

MODEL = "minilm_topics"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with own_server(str(tmp_path_factory.mktemp("client")), models=[MODEL]) as server:
        yield server


def tsctl(server, key_file, *args):
    cmd = [sys.executable, os.path.join(REPO, "scripts", "tsctl.py"), "--inference-url", server.inference_url,
           "--management-url", server.management_url, "--key-file", key_file, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def key_file_copy(server, path, kind, key, expiration):
    doc = json.loads(open(server.key_file, encoding="utf-8").read())
    doc[kind] = {"key": key, "expiration time": expiration}
    path.write_text(json.dumps(doc))
    return str(path)


def test_a_rejected_key_that_has_not_expired_is_not_renewed(server, tmp_path):
    before = server.keys()
    stale = key_file_copy(server, tmp_path / "keys.json", "inference", "stale-key", "2999-01-01T00:00:00.000000000Z")
    result = tsctl(server, stale, "ping")
    assert result.returncode == 1 and "has not expired" in result.stderr, result.stderr
    assert server.keys() == before  # nobody else's key was rotated


def test_an_expired_key_is_renewed_and_the_call_answered(server, tmp_path):
    before = server.keys()
    expired = key_file_copy(server, tmp_path / "keys.json", "inference", "old-key", "2000-01-01T00:00:00.000000000Z")
    result = tsctl(server, expired, "ping")
    # TorchServe writes the new key into its own key file (its working dir), not into this copy
    assert server.keys()["inference"] != before["inference"]
    assert server.keys()["management"] == before["management"]
    assert result.returncode == 1 and "rejected the inference token" in result.stderr
    assert tsctl(server, server.key_file, "ping").returncode == 0


def test_a_key_is_renewed_on_request(server):
    before = server.keys()
    result = tsctl(server, server.key_file, "token", "management")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["key"] == server.keys()["management"] != before["management"]
    assert server.keys()["inference"] == before["inference"]
    listed = tsctl(server, server.key_file, "list")
    assert listed.returncode == 0 and MODEL in listed.stdout


@pytest.mark.parametrize("name", ["unpacked_dir", "absolute.mar", "https://127.0.0.1:9/x.mar"])
def test_register_refuses_paths_and_urls(server, tmp_path, name):
    # an unpacked archive directory anywhere on disk: TorchServe 0.12 itself would load it
    unpacked = tmp_path / "unpacked"
    with zipfile.ZipFile(os.path.join(REPO, "model_store", f"{MODEL}.mar")) as archive:
        archive.extractall(unpacked)
    target = {"unpacked_dir": str(unpacked), "absolute.mar": os.path.join(REPO, "model_store", f"{MODEL}.mar")}
    result = tsctl(server, server.key_file, "register", target.get(name, name), "--model-name", "intruder")
    assert result.returncode == 1 and "archive file name of the model store" in result.stderr, result.stderr
    assert "intruder" not in tsctl(server, server.key_file, "list").stdout
