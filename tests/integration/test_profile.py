"""`make profile`'s engine (benchkit.profiling) on a real TorchServe: every worker of the model writes its
Chrome trace and top-operator table after N batches, under the phases the handler labels."""

import json
import os
import zipfile

import yaml

from support import MODEL_STORE
from tskit import declaration as declarations
from benchkit.profiling import profile

MODEL = "minilm_topics"


def test_every_worker_writes_a_trace_and_a_table(tmp_path):
    tables = profile(MODEL, batches=3, work=str(tmp_path / "profile"), store=MODEL_STORE, concurrency=4, timeout=300)
    workers = int(declarations.load(MODEL).torchserve.get("minWorkers", 1))
    assert len(tables) == workers
    for table in tables:
        text = open(table, encoding="utf-8").read()
        for phase in ("batch", "decode", "collate", "model", "postprocess"):
            assert f" {phase} " in text, (phase, text[:400])
        trace = json.load(open(table[: -len(".top.txt")] + ".trace.json", encoding="utf-8"))
        assert sum(event.get("name") == "batch" for event in trace["traceEvents"]) == 3
    # profiling lives only in the copy: the archive `make serve` serves keeps it off
    with zipfile.ZipFile(os.path.join(MODEL_STORE, f"{MODEL}.mar")) as archive:
        config = yaml.safe_load(archive.read("model-config.yaml"))
    assert config["handler"].get("profileBatches", 0) == 0
