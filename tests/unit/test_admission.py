"""One heap budget shared among the served models' queues (tskit.admission), stamped into their archives
(tskit.archive_queue) by `make config` (tskit.server_config), and `make model` refused before its build when
the server cannot hold it (tskit.__main__): docs/limits-and-overload.md."""

import copy
import os
import zipfile

import pytest
import yaml

from tskit import admission
from tskit import declaration as declarations
from tskit.__main__ import main as tskit_main
from tskit.admission import AdmissionError
from tskit.archive_queue import archive_queue, stamp_queue
from tskit.properties import parse_properties
from support import REPO
from tskit.server_config import write_config

PROPS = {"vmargs": "-Xmx9g", "max_request_size": str(8 * 2**20), "job_queue_size": "64"}
GIB = 2**30


def bundled():
    """The one-shot models this repo serves (a user's own declarations and the text generator, whose share
    test_the_generator_shares_the_budget checks, are left out)."""
    return [d for d in declarations.served()
            if d.source.startswith("python:tskit.bundled:") and not d.torchserve.get("continuousBatching")]


def own_models(count: int, workers: int = 1, batch: int = 4):
    """`count` declarations like a `make model` one: no jobQueueSize (asks job_queue_size), 1 worker, batch 4."""
    template = declarations.load("mobilenet_v2")
    made = []
    for i in range(count):
        d = copy.deepcopy(template)
        d.name, d.torchserve = f"own_{i}", {"minWorkers": workers, "maxWorkers": workers, "batchSize": batch}
        made.append(d)
    return made


def test_the_bundled_models_alone_get_the_queue_they_ask_for():
    rows = admission.admissions(PROPS, bundled())
    assert [(r.queue, r.want) for r in rows] == [(256, 256)] * 3
    assert admission.wait_fraction(rows) == 1.0
    # (3 x 256 queued + 3 x 8 in batches + 72 reserved) x 8 MiB = 6.75 GiB: exactly 75% of 9 GiB
    assert admission.worst_case_bytes(PROPS, bundled()) == (768 + 24 + 72) * 8 * 2**20 == 0.75 * 9 * GIB


def test_ten_more_models_shrink_every_queue_by_the_same_fraction_and_the_whole_fits():
    served = bundled() + own_models(10)
    rows = admission.admissions(PROPS, served)
    by_name = {r.name: r for r in rows}
    # room = 864 slots - 72 reserve - (24 + 40) batch slots = 728 for wants of 3 x 256 + 10 x 64 = 1408
    assert [by_name[n].queue for n in ("mobilenet_v2", "own_0")] == [132, 33]  # floor(256 x 728/1408), floor(64 x ...)
    assert admission.wait_fraction(rows) == pytest.approx(728 / 1408, abs=0.01)
    assert admission.worst_case_bytes(PROPS, served) <= admission.HEAP_SHARE * 9 * GIB


def test_a_model_that_would_fall_below_its_floor_is_held_there_and_the_others_share_the_rest():
    served = bundled() + own_models(8, workers=2, batch=8)  # each asks 64; floor 2 batches x 2 workers x 8 = 32
    rows = admission.admissions(PROPS, served)
    own = [r for r in rows if r.name.startswith("own_")]
    assert all(r.queue == r.floor == 32 for r in own)  # 64 x the common fraction (0.49) would be 31
    # room = 864 slots - (64 + 16) reserve - (24 + 8 x 16) batch slots = 632; the bundled share 632 - 8 x 32
    assert [r.queue for r in rows if not r.name.startswith("own_")] == [256 * (632 - 8 * 32) // 768] * 3 == [125] * 3


@pytest.mark.parametrize("props, what", [
    (dict(PROPS, vmargs="-Xmx2g"), "raise -Xmx to at least 14g"),  # a hundred models on a 2 GB heap: (72 + 24 + 48 + 100 x 12) x 8 MiB / 0.75
    (dict(PROPS, max_request_size=str(300 * 2**20)), "lower max_request_size to at most"),  # 300 MB bodies
])
def test_what_cannot_fit_is_refused_naming_what_to_change(props, what):
    served = bundled() + own_models(100 if "2g" in props["vmargs"] else 0)
    with pytest.raises(AdmissionError, match=what) as refused:
        admission.admissions(props, served)
    assert "or serve fewer models" in str(refused.value)


def test_the_heap_is_read_from_xmx_or_the_hosts_memory_and_never_guessed(tmp_path):
    assert admission.heap_bytes("-Dx=y -Xmx9g -XX:G1HeapRegionSize=32m") == 9 * GIB
    assert admission.heap_bytes("-Xmx512m") == 512 * 2**20
    assert admission.heap_bytes("-XX:MaxRAMPercentage=50", memory=24 * GIB) == 12 * GIB
    assert admission.heap_bytes("-Xss1m") == 0
    with pytest.raises(AdmissionError, match="sets neither -Xmx nor -XX:MaxRAMPercentage"):
        admission.admissions(dict(PROPS, vmargs="-Xss1m"), bundled())
    limit, meminfo = tmp_path / "memory.max", tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24576000 kB\nMemFree: 1 kB\n")
    limit.write_text("max\n")  # a cgroup without a limit: the host's memory
    assert admission.host_memory_bytes(str(limit), str(meminfo)) == 24576000 * 1024
    limit.write_text("8589934592\n")  # a container's limit wins
    assert admission.host_memory_bytes(str(limit), str(meminfo)) == 8 * GIB


def small_archive(path: str, config: dict) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("model.onnx", b"\x01" * 1000)
        archive.writestr("model-config.yaml", yaml.safe_dump(config, sort_keys=False))
        archive.writestr("MAR-INF/MANIFEST.json", b"{}")


def test_a_stamp_changes_only_the_queue_and_replaces_a_link_not_its_target(tmp_path):
    original = str(tmp_path / "built.mar")
    small_archive(original, {"minWorkers": 1, "handler": {"topk": 5}})
    link = str(tmp_path / "store.mar")
    os.symlink(original, link)
    assert archive_queue(link) is None
    assert stamp_queue(link, 40) is True
    assert not os.path.islink(link) and archive_queue(link) == 40 and archive_queue(original) is None
    with zipfile.ZipFile(link) as stamped, zipfile.ZipFile(original) as built:
        assert stamped.namelist() == built.namelist()
        assert stamped.read("model.onnx") == built.read("model.onnx")
        config = yaml.safe_load(stamped.read("model-config.yaml"))
    assert config == {"minWorkers": 1, "jobQueueSize": 40, "handler": {"topk": 5}}
    mtime = os.stat(link).st_mtime_ns
    assert stamp_queue(link, 40) is False and os.stat(link).st_mtime_ns == mtime
    assert [n for n in os.listdir(tmp_path) if n.startswith(".stamp-")] == []


def test_make_config_stamps_each_share_and_drops_a_model_whose_folder_is_gone(tmp_path):
    models, store = tmp_path / "models", tmp_path / "store"
    store.mkdir()
    for name in ("mobilenet_v2", "minilm_topics"):
        (models / name).mkdir(parents=True)
        (models / name / "model.yaml").write_text(open(os.path.join(declarations.MODELS_DIR, name, "model.yaml")).read())
        small_archive(str(store / f"{name}.mar"), {"batchSize": 4})
    config = tmp_path / "config.properties"
    config.write_text("vmargs=-Xmx3g\nmax_request_size=8388608\njob_queue_size=64\n")
    write_config(declarations.served(str(models)), str(config), str(store))
    # 3 GiB: 288 slots - (64 + 8) reserve - 16 batch slots = 200 for two models asking 256 each
    shares = {n: archive_queue(str(store / f"{n}.mar")) for n in ("minilm_topics", "mobilenet_v2")}
    assert shares == {"minilm_topics": 100, "mobilenet_v2": 100}
    assert "load_models=minilm_topics.mar,mobilenet_v2.mar" in config.read_text()
    for path in (models / "minilm_topics").iterdir():
        path.unlink()
    (models / "minilm_topics").rmdir()
    write_config(declarations.served(str(models)), str(config), str(store))
    assert "load_models=mobilenet_v2.mar\n" in config.read_text() and "minilm_topics" not in config.read_text()
    assert archive_queue(str(store / "mobilenet_v2.mar")) == 288 - 72 - 8  # alone: the whole room


def test_make_model_refused_by_the_budget_leaves_the_declaration_and_config_as_they_were(tmp_path, capsys):
    models, store = tmp_path / "models", tmp_path / "store"
    (models / "mine").mkdir(parents=True)
    (models / "mine" / "model.yaml").write_text("kind: image-classifier\nsource: /x.pt\n# the user's edits\n")
    config = tmp_path / "config.properties"
    config.write_text("vmargs=-Xmx16m\nmax_request_size=8388608\n")
    source = tmp_path / "model.pt"
    source.write_bytes(b"not read: refused before the build")
    code = tskit_main(["model", "--name", "mine", "--kind", "image-classifier", "--source", str(source), "--force",
                       "--models-dir", str(models), "--store", str(store), "--config", str(config)])
    assert code == 2
    assert "raise -Xmx to at least 2g" in capsys.readouterr().err  # (108 reserved + 4 + 8) x 8 MiB / 0.75
    assert (models / "mine" / "model.yaml").read_text() == "kind: image-classifier\nsource: /x.pt\n# the user's edits\n"
    assert config.read_text() == "vmargs=-Xmx16m\nmax_request_size=8388608\n"
    assert not store.exists()


def test_the_generator_shares_the_budget_with_the_bundled_models():
    """smollm2_chat asks for 32 queued + 16 running; the reserve grows to 64 + 16 (its batch is the largest):
    with -Xmx9g room = 864 - 80 - (24 + 16) = 744 for asks of 3 x 256 + 32 = 800, so every queue holds 93% of
    its ask; the shipped config's -Xmx10g (room 960 - 80 - 40 = 840) gives each its whole ask (at 93%, 16x the
    tuned concurrency cost TorchServe a third of its goodput: docs/limits-and-overload.md)."""
    served = [d for d in declarations.served() if d.source.startswith("python:tskit.bundled:")]
    rows = {r.name: r for r in admission.admissions(PROPS, served)}
    assert rows["smollm2_chat"].in_workers == 16 and rows["smollm2_chat"].want == 32
    assert round(admission.wait_fraction(list(rows.values())), 2) == 0.93
    assert [rows[m].queue for m in ("minilm_embedding", "minilm_topics", "mobilenet_v2", "smollm2_chat")] == \
        [237, 237, 237, 32]
    assert admission.worst_case_bytes(PROPS, served) <= 0.75 * 9 * GIB
    with open(os.path.join(REPO, "config.properties"), encoding="utf-8") as f:
        shipped = parse_properties(f.read())
    rows = admission.admissions(shipped, served)
    assert [r.queue for r in rows] == [r.want for r in rows] == [256, 256, 256, 32]
