"""Faults under load, on a server of this module's own: a worker killed with SIGKILL, and an archive
whose handler raises in initialize.

kill -9: TorchServe answers the batch that was in flight on the dead worker with a 5xx ("Worker
died."), restarts the worker, and queued requests wait for it (or go to the model's other worker):
only the requests in flight on that worker fail. The time from the kill until the replacement
worker is READY and answers is measured and printed; the test waits for it with a deadline
(RECOVERY_DEADLINE_S) that only a worker which never comes back can miss.

One TorchServe 0.12 frontend limit, reproduced here (a worker killed while it waits maxBatchDelay
for its batch to fill): the requests it has already taken into that batch are never answered, not
even after the replacement is up. BatchAggregator keeps them in its job map while it polls for more;
the interrupt from the dead socket leaves WorkerThread with no request to answer "Worker died." for,
and the restarted worker clears the map. So a request in flight on the dead worker either gets a 5xx
or no answer at all; clients need a read timeout (and may retry inference, which has no side
effects). This test gives its client LOST_AFTER_S and counts such requests as failed in flight.
"""

import os
import re
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from conftest import Client
from own_server import ALL_MODELS, build_broken_archive, kill_worker, own_server, wait_until
from tskit.checked_load import LoadClient, default_specs

pytestmark = pytest.mark.heavy(seconds=90)  # seconds in a one-process run on 2 cores (tests/suite_order.py)

# Measured on the 2-core dev machine (TorchServe 0.12, CPU, load of 12 clients on): the killed worker
# is READY again after 4-9 s (minilm_*) to 12-24 s (mobilenet_v2, whose other worker keeps the cores
# busy): 1 s restart back-off, process start, model load with freeze/optimise and warm-up. Each run
# prints its own figures (pytest -s). This is a deadline for waiting, not a bound the test asserts:
# the wait ends as soon as the worker is back.
RECOVERY_DEADLINE_S = 180
# The load client's read timeout: an unanswered request (see above) fails after this. The slowest
# answer under this load has been 12 s on the loaded 2-core machine (each run prints its slowest), so
# 60 s does not cut a slow answer short.
LOST_AFTER_S = 60
# The read timeout of the one request held in a killed worker's filling batch (the last test): its
# replacements are READY 4-9 s after the kill here, and the batch would have run 8 s after it began
# filling; 30 s is past both with room, so a timeout there means "never answered", not "slow". The test
# also checks the replacements were up before the timeout ran out.
ORPHAN_TIMEOUT_S = 30


@pytest.fixture(scope="module")
def fault_server(tmp_path_factory):
    base = str(tmp_path_factory.mktemp("faults"))
    with own_server(base) as server:
        client = Client(server)
        for model in ALL_MODELS:  # every worker up, not just the first
            wait_until(lambda: all_ready(client, model), 300, what=f"{model} workers READY")
        yield base, server


def all_ready(client, model):
    described = client.describe(model)
    workers = described["workers"]
    return len(workers) == described["minWorkers"] and all(w["status"] == "READY" for w in workers)


def pids(client):
    return {m: {w["id"]: w["pid"] for w in client.describe(m)["workers"]} for m in ALL_MODELS}


def checked_specs(server):
    """The soak's requests for all three models, each with its reference answer taken alone."""
    load = LoadClient(server.inference_url, lambda: server.keys()["inference"], timeout=LOST_AFTER_S)
    specs = default_specs(ALL_MODELS)
    for spec in specs:
        spec.reference = Client(server).predict(spec.model, spec.body, spec.content_type).json()
    return load, specs


@pytest.mark.parametrize("model", ALL_MODELS)
def test_kill_9_a_worker_during_load(fault_server, model):
    _, server = fault_server
    client = Client(server)
    load, specs = checked_specs(server)
    batch_size = client.describe(model)["batchSize"]
    before = pids(client)
    worker_id, victim = sorted(before[model].items())[0]

    def victim_state():
        return {w["id"]: w for w in client.describe(model)["workers"]}.get(worker_id)

    def noticed():  # the frontend no longer takes requests for the dead worker: its state or pid changed
        state = victim_state()
        return state is None or state["pid"] != victim or state["status"] != "READY"

    def replaced():
        new = victim_state()
        return new and new["pid"] != victim and new["status"] == "READY" and new["pid"]

    with load.background(specs, concurrency=12) as traffic:
        traffic.wait_for(30, model=model)
        killed_at = time.monotonic()
        kill_worker(victim)
        wait_until(noticed, RECOVERY_DEADLINE_S, interval=0.02, what=f"the frontend seeing worker {worker_id} die")
        # requests sent after this moment never reach the dead worker: none of them may fail
        noticed_at = time.monotonic()
        new_pid = wait_until(replaced, RECOVERY_DEADLINE_S, interval=0.05, what=f"{model} worker {worker_id} back")
        ready_at = time.monotonic()
        # keep the load on until the model has answered 20 more requests after the replacement came up
        wait_until(lambda: sum(1 for o in traffic.snapshot() if o.model == model and o.started > ready_at
                               and o.error is None) >= 20, 120, what=f"{model} answering again")
    outcomes = traffic.outcomes

    failed = [o for o in outcomes if o.error]
    answered_5xx = [o for o in failed if 500 <= o.status < 600]
    unanswered = [o for o in failed if o.status == -1 and "ReadTimeout" in o.error]
    first_answer_after = min((o.ended for o in outcomes if o.model == model and o.error is None
                              and o.started > noticed_at), default=float("nan")) - killed_at
    slowest = max(o.ended - o.started for o in outcomes if o.error is None)
    print(f"\n[kill -9 {model} worker {worker_id} pid {victim}] {len(outcomes)} requests, {len(failed)} failed "
          f"({len(answered_5xx)} answered 5xx, {len(unanswered)} never answered); the frontend saw the death "
          f"{noticed_at - killed_at:.2f} s after the kill; replacement pid {new_pid} READY after "
          f"{ready_at - killed_at:.1f} s; first answer to a request sent after that {first_answer_after:.1f} s "
          f"after the kill; slowest answer {slowest:.2f} s")

    assert all(o.model == model for o in failed), [(o.model, o.error) for o in failed]
    assert len(answered_5xx) + len(unanswered) == len(failed), [(o.status, o.error) for o in failed]
    assert all(o.started < noticed_at for o in failed), "a request sent after the frontend saw the death failed"
    assert len(failed) <= batch_size, f"{len(failed)} failures: more than one batch in flight on the worker"
    # healthy again: the other workers untouched, the killed one replaced, /ping healthy
    after = pids(client)
    assert after[model][worker_id] == new_pid != victim
    assert {m: p for m, p in after.items() if m != model} == {m: p for m, p in before.items() if m != model}
    assert {i: p for i, p in after[model].items() if i != worker_id} == \
        {i: p for i, p in before[model].items() if i != worker_id}
    assert client.infer("GET", "/ping").json() == {"status": "Healthy"}


def test_a_handler_that_raises_in_initialize(fault_server, tmp_path):
    """A broken archive: registration fails with a clear error and log line; the other models serve on."""
    base, server = fault_server
    client = Client(server)
    message = "broken_model: initialize failed on purpose (fault-injection test archive)"
    archive = build_broken_archive(str(tmp_path), "broken_model", "1.0", message)
    os.replace(archive, os.path.join(base, "model_store", "broken_model.mar"))
    load, specs = checked_specs(server)
    before = pids(client)

    with load.background(specs, concurrency=8) as traffic:
        traffic.wait_for(20)
        response = client.manage("POST", "/models", params={"url": "broken_model.mar", "initial_workers": 1,
                                                             "synchronous": "true"})
        seen = len(traffic.snapshot())
        traffic.wait_for(seen + 20)
    outcomes = traffic.outcomes
    print(f"\n[broken archive] register -> {response.status_code} {response.json().get('message')!r}; "
          f"{len(outcomes)} requests to the other models meanwhile, {sum(1 for o in outcomes if o.error)} failed")

    assert response.status_code == 500, response.text
    assert response.json()["message"] == "Failed to start workers for model broken_model version: 1.0"
    with open(server.model_log, encoding="utf-8", errors="replace") as f:
        log = f.read()
    assert re.search(rf"broken_model_1\.0-stdout MODEL_LOG - Failed to load model broken_model, "
                     rf"exception {re.escape(message)}", log), "no clear log line for the failed load"
    assert not [o for o in outcomes if o.error], [o.error for o in outcomes if o.error][:5]
    assert pids(client) == before
    # TorchServe 0.12 keeps the failed model listed, with no worker; unregistering clears it
    described = client.manage("GET", "/models/broken_model")
    assert described.status_code == 200 and described.json()[0]["workers"] == []
    # a model with no worker: the frontend refuses at once, 503, before any handler is involved
    no_worker = client.predict("broken_model", b"x", "text/plain")
    assert no_worker.status_code == 503, no_worker.text
    assert no_worker.json()["type"] == "ServiceUnavailableException", no_worker.json()
    assert "has no worker to serve inference request" in no_worker.json()["message"], no_worker.json()
    assert client.manage("DELETE", "/models/broken_model").status_code == 200
    assert "broken_model" not in [m["modelName"] for m in client.manage("GET", "/models").json()["models"]]


def requests_counted(server, model):
    """The frontend's ts_inference_requests_total for `model`: counted when a request arrives, before it
    is queued."""
    text = requests.get(f"{server.metrics_url}/metrics", timeout=30).text
    return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
               if sample.name == "ts_inference_requests_total" and sample.labels.get("model_name") == model)


def taken_into_a_batch(server, client, model, counted_before):
    """A request of `model` has arrived since and none waits in its job queue: a worker's batch holds it."""
    return (requests_counted(server, model) > counted_before
            and client.describe(model)["jobQueueStatus"]["pendingRequests"] == 0)


def test_requests_in_a_filling_batch_of_a_killed_worker_are_never_answered(fault_server):
    """The TorchServe 0.12 limit the module docstring describes, pinned down so the README's advice
    (a client read timeout) rests on a measurement: a copy of minilm_embedding whose workers wait
    8 s for a batch of 8 holds one request in its filling batch when both workers are killed."""
    _, server = fault_server
    client = Client(server)
    registered = client.manage("POST", "/models", params={
        "url": "minilm_embedding.mar", "model_name": "slow_batch", "batch_size": 8, "max_batch_delay": 8000,
        "synchronous": "true"})
    assert registered.status_code == 200, registered.text
    try:
        described = client.describe("slow_batch")
        assert (described["batchSize"], described["maxBatchDelay"]) == (8, 8000)
        victims = [w["pid"] for w in described["workers"]]
        load = LoadClient(server.inference_url, lambda: server.keys()["inference"], timeout=ORPHAN_TIMEOUT_S)
        spec = next(s for s in default_specs(["minilm_embedding"]))
        counted_before = requests_counted(server, "slow_batch")
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(load.send, spec, "/predictions/slow_batch")
            # kill once the request sits in a worker's filling batch: the frontend has counted it and
            # it has left the model's job queue (a worker's batch took it; the batch runs 8 s later)
            wait_until(lambda: taken_into_a_batch(server, client, "slow_batch", counted_before), 60,
                       interval=0.02, what="the request taken into slow_batch's filling batch")
            assert not pending.done(), "the request was answered before its batch could be filled"
            for pid in victims:
                kill_worker(pid)
            wait_until(lambda: all_ready(client, "slow_batch") and not set(victims) & {
                w["pid"] for w in client.describe("slow_batch")["workers"]}, RECOVERY_DEADLINE_S,
                what="slow_batch back")
            back_at = time.monotonic()
            outcome = pending.result()
        print(f"\n[killed while its batch filled] status {outcome.status} after {outcome.ended - outcome.started:.1f} s "
              f"(replacements READY {back_at - outcome.started:.1f} s after it was sent): {outcome.error}")
        assert outcome.status == -1 and "ReadTimeout" in outcome.error, (outcome.status, outcome.error)
        assert back_at - outcome.started < ORPHAN_TIMEOUT_S - 5, "the replacements came up too late to tell"
        # the replacements serve the same request at once
        again = load.send(spec, "/predictions/slow_batch")
        assert again.error is None, again.error
    finally:
        client.manage("DELETE", "/models/slow_batch")
