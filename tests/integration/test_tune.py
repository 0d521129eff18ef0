"""`make tune QUICK=1`: the sweep runs, and the config it writes loads in TorchServe and gives
about the throughput it recorded when benchmarked again on a fresh server."""

import json
import os
import subprocess
import sys
import tempfile

import yaml

from support import REPO
from ts_server import private_server, read_properties, running

MODEL = "mobilenet_v2"


def test_quick_tune_writes_a_config_that_loads_and_reproduces(tmp_path):
    out = tmp_path / "tune"
    result = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "tune.py"), "--model", MODEL,
                             "--p99-ms", "5000", "--quick", "--out", str(out)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((out / "results.json").read_text())
    best = report["best"]
    assert len(report["rows"]) >= 3 and all(r["errors"] == 0 for r in report["rows"])
    assert best["throughput"] == max(r["throughput"] for r in report["rows"] if r["p99_ms"] <= 5000)
    assert (out / "frontier.png").stat().st_size > 1000

    fragment = read_properties(str(out / "config-fragment.properties"))
    entry = json.loads(fragment["models"])[MODEL]["1.0"]
    values = yaml.safe_load((out / "model-config-values.yaml").read_text())
    assert entry["batchSize"] == values["batchSize"] == best["batch"]
    assert entry["maxBatchDelay"] == values["maxBatchDelay"] == best["delay"]
    assert entry["minWorkers"] == values["minWorkers"] == best["workers"]

    # What a user does with it: the values into model-config.yaml (the archive's values win in
    # TorchServe), the entry into config.properties; then a fresh server and a fresh measurement.
    from bench import load_point, make_inputs
    from tune import variant_archive

    workdir = tempfile.mkdtemp(dir=tmp_path)
    store = os.path.join(workdir, "model_store")
    os.makedirs(store)
    frontend = {k: values[k] for k in ("minWorkers", "maxWorkers", "batchSize", "maxBatchDelay")}
    variant_archive(MODEL, values["handler"]["intraOpThreads"], store, frontend, name=MODEL)
    server = private_server(workdir, model_store=store, load_models=f"{MODEL}.mar", models=fragment["models"])
    with running(server, [MODEL]):
        import requests

        described = requests.get(f"{server.management_url}/models/{MODEL}", headers=server.auth_headers("management"),
                                 timeout=30).json()[0]
        assert (described["batchSize"], described["maxBatchDelay"], len(described["workers"])) == \
            (best["batch"], best["delay"], best["workers"])
        workload = make_inputs(os.path.join(workdir, "inputs"))[report["workload"]]
        load_point(server, MODEL, workload, report["concurrency"], 1)  # warm-up
        again = load_point(server, MODEL, workload, report["concurrency"], 4)
    assert again.errors == 0
    # within noise: on this shared 2-core machine one setting measured twice a minute apart has
    # differed by up to ~1.5x (seen while other work ran); a wrong config is off by far more
    ratio = again.throughput / best["throughput"]
    print(f"tuned {best['throughput']:.1f} req/s, fresh run {again.throughput:.1f} req/s ({ratio:.2f}x)")
    assert 0.5 <= ratio <= 2.0, ratio
