"""config.properties: loopback only, auth on, and its models block written from the declarations."""

import json
import os

import pytest

from support import REPO
from tskit.properties import read_properties
from tskit import declaration as declarations
from tskit.admission import check_heap
from tskit.server_config import models_block

PROPS = read_properties(os.path.join(REPO, "config.properties"))
MODELS = json.loads(PROPS["models"])
CORES = 2


def declaration(name):
    return declarations.load(name)


def test_every_address_is_loopback():
    for key in ("inference_address", "management_address", "metrics_address"):
        assert PROPS[key].startswith("http://127.0.0.1:"), key
    assert PROPS["grpc_inference_address"] == PROPS["grpc_management_address"] == "127.0.0.1"
    assert [PROPS[k].rsplit(":", 1)[1] for k in ("inference_address", "management_address", "metrics_address")] == ["8080", "8081", "8082"]


def test_auth_stays_on_and_model_api_is_enabled():
    assert PROPS.get("disable_token_authorization", "false") == "false"
    assert int(PROPS["token_expiration_min"]) > 0
    assert PROPS["enable_model_api"] == "true"
    assert PROPS["metrics_mode"] == "prometheus"


def test_allowed_urls_refuse_every_url():
    # registration by file name from model_store/ does not consult allowed_urls; every URL is refused
    import re

    pattern = re.compile(PROPS["allowed_urls"])
    assert not pattern.match("file:///srv/app/model_store/mobilenet_v2.mar")
    assert not pattern.match("https://example.com/model_store/mobilenet_v2.mar")
    assert not pattern.match("file:///etc/passwd")


def test_models_block_is_the_one_the_declarations_give():
    # `make config` (run by make archives / serve) writes it; a hand edit or a stale block fails here
    with open(os.path.join(REPO, "config.properties"), encoding="utf-8") as f:
        text = f.read()
    assert models_block(declarations.served(), check_heap(text, declarations.served())) in text


def test_every_served_declaration_is_loaded_and_no_other():
    served = {d.name for d in declarations.served()}
    assert set(MODELS) == served
    assert set(PROPS["load_models"].split(",")) == {f"{name}.mar" for name in served}
    assert {"mobilenet_v2", "minilm_embedding", "minilm_topics"} <= served


@pytest.mark.parametrize("name", sorted(MODELS))
def test_models_entry_matches_the_declaration(name):
    [(version, entry)] = MODELS[name].items()
    decl = declaration(name)
    assert version == decl.version
    for key in ("minWorkers", "maxWorkers", "batchSize", "maxBatchDelay", "responseTimeout"):
        assert entry[key] == decl.torchserve[key], f"{name}.{key}"


@pytest.mark.parametrize("name", sorted(MODELS))
def test_a_model_does_not_oversubscribe_the_cores(name):
    decl = declaration(name)
    assert decl.torchserve["maxWorkers"] * decl.settings().intraOpThreads <= CORES


@pytest.mark.parametrize("name", sorted(MODELS))
def test_declaration_names_the_device_and_handler_settings(name):
    decl = declaration(name)
    assert decl.torchserve["deviceType"] in ("cpu", "gpu")
    assert decl.settings().optimizeForInference in (True, False)


def test_frontend_logging_config_is_used_and_drops_only_per_request_chatter():
    from xml.etree import ElementTree

    from tskit.server import absolute_log_config

    (log_config,) = [a for a in PROPS["vmargs"].split() if a.startswith("-Dlog4j.configurationFile=")]
    path = absolute_log_config(log_config).partition("=")[2]
    assert os.path.isfile(path) and os.path.dirname(path) == REPO
    loggers = {e.get("name"): e for e in ElementTree.parse(path).getroot().find("Loggers")}
    levels = {name: e.get("level") for name, e in loggers.items()}
    # every stock log file still written, none at DEBUG; the per-request classes at WARN
    assert levels["ACCESS_LOG"] == levels["MODEL_LOG"] == levels["org.pytorch.serve"] == "info"
    assert "debug" not in levels.values() and "all" not in levels.values()
    for chatty in ("org.pytorch.serve.job", "org.pytorch.serve.wlm.BatchAggregator",
                   "org.pytorch.serve.wlm.WorkerThread", "org.pytorch.serve.wlm.WorkerLifeCycle"):
        assert levels[chatty] == "warn", chatty
    # each line lands in one file only (the stock config also copies them to the console)
    assert all(loggers[n].get("additivity") == "false" for n in ("ACCESS_LOG", "MODEL_LOG", "org.pytorch.serve"))
