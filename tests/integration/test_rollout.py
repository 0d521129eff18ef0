"""Rollout of mobilenet_v2 2.0 with `tsctl.py rollout` while load runs: zero failed requests.

The 2.0 archive is built by the Makefile (`make archive-version MOBILENET_VERSION=2.0`, once per run into the
run's temp dir: conftest's mobilenet_2_0) and served by a server of this module's own, beside 1.0; `rollout`
registers it, makes it the default and unregisters 1.0. A second rollout, of an archive whose
handler cannot start, must fail and leave the serving version alone, again without a failed request.
"""

import json
import os
import re
import subprocess
import sys
import time

import pytest

from conftest import Client
from own_server import build_broken_archive, own_server, wait_until
from tskit.checked_load import LoadClient, default_specs
from support import REPO

MODEL = "mobilenet_v2"


@pytest.fixture(scope="module")
def rollout_server(tmp_path_factory, mobilenet_2_0):
    base = str(tmp_path_factory.mktemp("rollout"))
    archive = mobilenet_2_0
    with own_server(base, models=[MODEL], extra={"mobilenet_v2_v2.0.mar": archive}) as server:
        client = Client(server)
        wait_until(lambda: all(w["status"] == "READY" for w in client.describe(MODEL)["workers"])
                   and len(client.describe(MODEL)["workers"]) == client.describe(MODEL)["minWorkers"],
                   300, what="mobilenet_v2 workers READY")
        yield base, server


def tsctl(server, *args):
    cmd = [sys.executable, os.path.join(REPO, "scripts", "tsctl.py"), "--inference-url", server.inference_url,
           "--management-url", server.management_url, "--key-file", server.key_file, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def versions(client):
    response = client.manage("GET", f"/models/{MODEL}/all")
    return sorted(v["modelVersion"] for v in response.json())


def batches_by_version(server):
    with open(server.model_log, encoding="utf-8", errors="replace") as f:
        log = f.read()
    found = re.findall(rf"-{MODEL}_([0-9.]+)-stdout MODEL_LOG - handled batch size=(\d+)", log)
    totals = {}
    for version, size in found:
        totals[version] = totals.get(version, 0) + int(size)
    return totals


def rollout_under_load(server, tmp_path, archive):
    """Run `tsctl.py rollout` while 8 clients send checked requests to mobilenet_v2 (no version in the
    path: whatever is the default answers). Returns (CLI result, outcomes)."""
    client = Client(server)
    specs = default_specs([MODEL])
    for spec in specs:
        spec.reference = client.predict(spec.model, spec.body, spec.content_type).json()
    probe = tmp_path / "probe.jpg"
    probe.write_bytes(specs[0].body)
    load = LoadClient(server.inference_url, lambda: server.keys()["inference"])
    with load.background(specs, concurrency=8) as traffic:
        traffic.wait_for(30)
        result = tsctl(server, "rollout", MODEL, archive, "--probe", str(probe))
        seen = len(traffic.snapshot())
        traffic.wait_for(seen + 30)  # and some more, on whatever serves now
    return result, traffic.outcomes


def test_rollout_to_2_0_under_load_has_zero_failed_requests(rollout_server, tmp_path):
    _, server = rollout_server
    client = Client(server)
    assert versions(client) == ["1.0"]
    before = batches_by_version(server)
    started = time.monotonic()
    result, outcomes = rollout_under_load(server, tmp_path, "mobilenet_v2_v2.0.mar")
    failed = [o for o in outcomes if o.error]
    served = {v: n - before.get(v, 0) for v, n in batches_by_version(server).items()}
    print(f"\n[rollout 1.0 -> 2.0] {len(outcomes)} requests during {time.monotonic() - started:.1f} s, "
          f"{len(failed)} failed; requests answered by version: {served}\n{result.stderr}")

    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["default"] == "2.0" and summary["previous"] == "1.0" and summary["unregistered"] == ["1.0"]
    assert not failed, [(o.status, o.error) for o in failed[:5]]
    assert versions(client) == ["2.0"]
    described = client.describe(MODEL)
    assert described["modelVersion"] == "2.0" and described["workers"]
    assert all(w["status"] == "READY" for w in described["workers"])
    # both versions answered part of the load: the switch happened while it ran
    wait_until(lambda: batches_by_version(server).get("2.0", 0) - before.get("2.0", 0) >= 30, 15,
               what="2.0's batches in the model log")
    served = {v: n - before.get(v, 0) for v, n in batches_by_version(server).items()}
    assert served.get("1.0", 0) > 0 and served["2.0"] >= 30, served


def test_rollout_of_an_archive_that_cannot_start_leaves_the_serving_version(rollout_server, tmp_path):
    base, server = rollout_server
    client = Client(server)
    serving = client.describe(MODEL)["modelVersion"]
    archive = build_broken_archive(str(tmp_path / "broken"), MODEL, "9.0", "mobilenet_v2 9.0 cannot start")
    os.replace(archive, os.path.join(base, "model_store", "mobilenet_v2_v9.0.mar"))
    result, outcomes = rollout_under_load(server, tmp_path, "mobilenet_v2_v9.0.mar")
    failed = [o for o in outcomes if o.error]
    print(f"\n[rollout to a broken 9.0] exit {result.returncode}: {result.stderr.strip().splitlines()[-1]}; "
          f"{len(outcomes)} requests, {len(failed)} failed")

    assert result.returncode == 1
    assert "registering mobilenet_v2_v9.0.mar failed" in result.stderr and f"{serving} keeps serving" in result.stderr
    assert "Traceback" not in result.stderr
    assert not failed, [(o.status, o.error) for o in failed[:5]]
    assert versions(client) == [serving] and client.describe(MODEL)["modelVersion"] == serving
