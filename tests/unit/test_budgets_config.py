"""The server's limits against the machine and the models' budgets (README "Limits and budgets"):
the worst case of queued bodies fits the frontend's heap, and no model's answer budget is above
max_response_size (`make config` refuses such a declaration)."""

import os
import re

import pytest

from support import REPO
from ts_server import read_properties
from tskit import declaration as declarations
from tskit.declaration import DeclarationError
from tskit.server_config import TORCHSERVE_MAX_RESPONSE_SIZE, check_response_budgets, max_response_size

CONFIG = os.path.join(REPO, "config.properties")
PROPS = read_properties(CONFIG)
UNITS = {"k": 2**10, "m": 2**20, "g": 2**30}


def heap_bytes() -> int:
    (xmx,) = re.findall(r"-Xmx(\d+)([kmg])", PROPS["vmargs"], flags=re.IGNORECASE)
    return int(xmx[0]) * UNITS[xmx[1].lower()]


def test_the_worst_case_of_queued_and_batched_bodies_fits_the_frontends_heap():
    served = declarations.served()
    body = int(PROPS["max_request_size"])
    queued = int(PROPS["job_queue_size"]) * body * len(served)
    in_workers = sum(d.torchserve["maxWorkers"] * d.torchserve["batchSize"] for d in served) * body
    assert queued + in_workers <= 0.75 * heap_bytes(), (queued, in_workers, heap_bytes())


def test_every_served_models_answer_budget_fits_max_response_size():
    limit = int(PROPS["max_response_size"])
    for d in declarations.served():
        assert d.settings().maxResponseBytes <= limit, d.name
    with open(CONFIG, encoding="utf-8") as f:
        check_response_budgets(f.read(), declarations.served())


def test_make_config_refuses_a_model_whose_answers_the_server_cannot_send():
    decl = declarations.load("minilm_embedding")
    decl.handler = dict(decl.handler, maxResponseBytes=TORCHSERVE_MAX_RESPONSE_SIZE + 1)
    with pytest.raises(DeclarationError, match=r"minilm_embedding/model.yaml: handler.maxResponseBytes 6553501 is above"):
        check_response_budgets("max_response_size=6553500\n", [decl])


def test_max_response_size_is_read_or_torchserves_default():
    assert max_response_size("a=1\n max_response_size = 1234\n") == 1234
    assert max_response_size("# nothing set\n") == TORCHSERVE_MAX_RESPONSE_SIZE == 6_553_500
