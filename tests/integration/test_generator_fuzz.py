"""The text generator's routes fuzzed on TorchServe (tests/generator_fuzzing.py): no 5xx, every 4xx the
contract's body, every good request the greedy answer, none unanswered, and no worker restarted."""

from generator_fuzzing import MODEL, SEED, fuzzed


def test_generator_routes_fuzzed(generator_client, generator_server):
    pids = {w["pid"] for w in generator_client.describe(MODEL)["workers"]}
    failures, statuses, sent = fuzzed(generator_server)  # the generator's own server (conftest)
    print(f"\n[generator fuzz] seed {SEED}, {sent} requests, statuses {statuses}, {len(failures)} failures")
    assert not failures, "\n".join(failures[:20])
    assert {w["pid"] for w in generator_client.describe(MODEL)["workers"]} == pids
