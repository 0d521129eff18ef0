"""The server's limits against the machine and the models' budgets (docs/limits-and-overload.md):
the worst case of queued bodies fits the frontend's heap, and no model's answer budget is above
max_response_size (`make config` refuses such a declaration)."""

import os

import pytest

from support import REPO
from tskit.properties import read_properties
from tskit import admission
from tskit import declaration as declarations
from tskit.declaration import DeclarationError
from tskit.server_config import TORCHSERVE_MAX_RESPONSE_SIZE, check_response_budgets, max_response_size

CONFIG = os.path.join(REPO, "config.properties")
PROPS = read_properties(CONFIG)


def test_the_shipped_config_holds_the_served_models_queues_and_batches_within_the_heap_budget():
    """Every queue slot (each model's share), batch slot and the reserve holding a max_request_size body
    (tests/unit/test_admission.py has the sharing itself)."""
    served = declarations.served()
    with open(CONFIG, encoding="utf-8") as f:
        queues = admission.check_heap(f.read(), served)
    plan = admission.budget(PROPS, served)
    worst = (plan.reserve + sum(q.queue + q.in_workers for q in queues)) * plan.body
    assert admission.worst_case_bytes(PROPS, served) == worst <= admission.HEAP_SHARE * plan.heap


def test_each_served_model_queues_at_least_16x_its_batch_slots():
    """Admission by time: a served model holds far more than what its workers hold (16 was the old
    global queue that refused 98% of requests at 64 connections)."""
    streamed = {d.name for d in declarations.served() if d.torchserve.get("continuousBatching")}
    for a in admission.admissions(PROPS, declarations.served()):
        # a generator's running slots hold streams of seconds to minutes: its queue is at least one batch,
        # not 8 (128 requests queued behind 16 streams of 512 tokens would wait for minutes)
        assert a.queue >= (1 if a.name in streamed else 8) * a.in_workers, a


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
