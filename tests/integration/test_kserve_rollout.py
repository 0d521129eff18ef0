"""A rollout on the KServe engine (`tsctl --engine kserve rollout`, tskit.kserve_rollout) while load runs: zero
failed requests. The engine serves mobilenet_v2 1.0 from a store of this module's own, which also holds the 2.0
archive the Makefile builds (`make archive-version MOBILENET_VERSION=2.0`); the rollout loads 2.0 beside 1.0,
swaps it in and drains and drops 1.0. A rollout to an archive that cannot start fails and leaves the serving
version alone, again without a failed request. As on TorchServe (tests/integration/test_rollout.py)."""

import base64
import json
import os
import shutil
import subprocess
import sys

import pytest
import requests

from conftest import engine_running
from own_server import build_broken_archive
from support import REPO
from tskit.checked_load import LoadClient, default_specs

MODEL = "mobilenet_v2"


@pytest.fixture(scope="module")
def engine(tmp_path_factory, mobilenet_2_0):
    base = str(tmp_path_factory.mktemp("engine-rollout"))
    store = os.path.join(base, "store")
    os.makedirs(store)
    shutil.copy(mobilenet_2_0, store)
    shutil.copy(os.path.join(REPO, "model_store", f"{MODEL}.mar"), store)
    broken = build_broken_archive(os.path.join(base, "broken"), MODEL, "9.0", "mobilenet_v2 9.0 cannot start")
    shutil.copy(broken, os.path.join(store, f"{MODEL}_v9.0.mar"))
    with engine_running(tmp_path_factory, [MODEL], store=store) as engine:
        yield engine


def tsctl(engine, *args):
    cmd = [sys.executable, os.path.join(REPO, "scripts", "tsctl.py"), "--engine", "kserve", "--inference-url",
           engine.inference_url, "--management-url", engine.inference_url, "--key-file", engine.key_file, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def serving_version(engine) -> str:
    """The version a v2 answer names (the handler's, from its archive's manifest)."""
    image = base64.b64encode(default_specs([MODEL])[0].body).decode()
    request = {"inputs": [{"name": "input", "shape": [1], "datatype": "BYTES", "data": [image]}]}
    answer = requests.post(f"{engine.inference_url}/v2/models/{MODEL}/infer", json=request, timeout=60,
                           headers=engine.auth_headers("inference"))
    return answer.json().get("model_version") or answer.text


def rollout_under_load(engine, archive):
    """`tsctl --engine kserve rollout` while 8 clients send checked requests; (CLI result, outcomes)."""
    specs = default_specs([MODEL])
    for spec in specs:
        spec.reference = requests.post(f"{engine.inference_url}/predictions/{MODEL}", data=spec.body, timeout=60,
                                       headers={"Content-Type": spec.content_type,
                                                **engine.auth_headers("inference")}).json()
    load = LoadClient(engine.inference_url, lambda: engine.auth_headers("inference")["Authorization"].split()[1])
    with load.background(specs, concurrency=8) as traffic:
        traffic.wait_for(30)
        result = tsctl(engine, "rollout", MODEL, archive)
        seen = len(traffic.snapshot())
        traffic.wait_for(seen + 30)  # and some more, on whatever serves now
    return result, traffic.outcomes, seen


def test_rollout_to_2_0_under_load_has_zero_failed_requests(engine):
    assert serving_version(engine) == "1.0"
    result, outcomes, at_swap = rollout_under_load(engine, "mobilenet_v2_v2.0.mar")
    failed = [o for o in outcomes if o.error]
    print(f"\n[engine rollout 1.0 -> 2.0] {len(outcomes)} requests ({at_swap} before the answer), "
          f"{len(failed)} failed\n{result.stdout}{result.stderr}")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["default"], summary["previous"], summary["unregistered"]) == ("2.0", "1.0", ["1.0"])
    assert not failed, [(o.status, o.error) for o in failed[:5]]
    assert len(outcomes) >= at_swap + 30
    assert serving_version(engine) == "2.0"
    assert sorted(os.listdir(engine.unpack_dir)) == [f"{MODEL}-1"]  # 1.0's folder went with its handlers


def test_rollout_to_an_archive_that_cannot_start_leaves_the_serving_version(engine):
    serving = serving_version(engine)
    result, outcomes, _ = rollout_under_load(engine, "mobilenet_v2_v9.0.mar")
    failed = [o for o in outcomes if o.error]
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "mobilenet_v2_v9.0.mar did not start" in result.stderr, result.stderr
    assert f"version {serving} still serves" in result.stderr
    assert not failed, [(o.status, o.error) for o in failed[:5]]
    assert serving_version(engine) == serving


def test_the_rollout_route_needs_the_management_key_and_a_store_file(engine):
    url = f"{engine.inference_url}/v2/repository/models/{MODEL}/load"
    keyless = requests.post(url, json={"archive": f"{MODEL}.mar"}, timeout=60)
    inference_key = requests.post(url, json={"archive": f"{MODEL}.mar"}, timeout=60,
                                  headers=engine.auth_headers("inference"))
    outside = requests.post(url, json={"archive": "../store/x.mar"}, timeout=60,
                            headers=engine.auth_headers("management"))
    unload = requests.post(f"{engine.inference_url}/v2/repository/models/{MODEL}/unload", timeout=60,
                           headers=engine.auth_headers("management"))
    assert [(r.status_code, r.json()["type"]) for r in (keyless, inference_key, outside, unload)] == [
        (400, "InvalidKeyException"), (400, "InvalidKeyException"), (400, "RolloutRefused"),
        (404, "ResourceNotFoundException")]
