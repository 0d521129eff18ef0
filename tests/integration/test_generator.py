"""smollm2_chat on the real TorchServe (continuous batching, the archive `make archives` built): greedy answers
equal transformers' generate in process on the same weights (its declared source, the GGUF), alone and beside
other streams, whichever format the archive serves; NDJSON lines arrive as they are made; the official `openai`
client, gRPC, KServe v2 and `tsctl generate` get right answers; every bad option is a 4xx before any token and
the worker lives; a client that leaves frees its place. The engine-independent checks are
tests/generator_checks.py's (test_kserve_generator.py runs them against the KServe engine)."""

import json
import os
import time

import pytest

import generator_checks as checks
from generator_checks import MODEL, NEW, PROMPTS, expected, greedy
from tskit.grpc_client import STUBS, generate_stubs


@pytest.fixture(scope="module")
def server(generator_server):
    """The generator's own server (conftest: the shared one serves the one-shot models)."""
    return generator_server


@pytest.fixture(scope="module")
def reference(generator_reference):
    return generator_reference


def test_greedy_answers_equal_generate_alone_and_beside_other_streams(server, reference):
    checks.greedy_alone_and_beside_other_streams(server, reference)


def test_stream_lines_arrive_as_made_and_join_to_the_whole_answer(server, reference):
    checks.stream_lines_arrive_as_made(server, reference)


def test_the_openai_client_chats_streams_and_completes(server, reference):
    checks.openai_client_chats_streams_and_completes(server, reference)


def test_every_bad_option_is_a_4xx_json_before_any_token_and_the_worker_lives(server, generator_client, reference):
    pids = {w["pid"] for w in generator_client.describe(MODEL)["workers"]}
    checks.every_bad_option_is_a_4xx_before_any_token(server, reference)
    assert {w["pid"] for w in generator_client.describe(MODEL)["workers"]} == pids


def test_a_client_that_leaves_frees_its_place(server):
    checks.a_client_that_leaves_frees_its_place(server, server.model_log)


@pytest.fixture(scope="module")
def grpc_api(server):
    if not os.path.exists(os.path.join(STUBS, "__init__.py")):
        generate_stubs()
    return server.client().grpc(server.listening.grpc_inference, server.listening.grpc_management)


def test_grpc_gets_a_whole_answer_never_a_hang(grpc_api, reference):
    body = json.dumps(greedy(PROMPTS[0], stream=True)).encode()
    assert grpc_api.predict(MODEL, body)["text"] == expected(reference, PROMPTS[0])
    started = time.perf_counter()
    messages = grpc_api.stream(MODEL, body)
    assert time.perf_counter() - started < 30 and len(messages) == 1
    assert messages[0]["text"] == expected(reference, PROMPTS[0]) and messages[0]["finish_reason"] == "length"
    assert NEW == messages[0]["usage"]["completion_tokens"]


def test_kserve_v2_answers_whole(server, reference):
    checks.kserve_v2_answers_whole(server, reference)


def test_a_seed_repeats_a_sampled_answer_and_stop_cuts_it(server, reference):
    checks.a_seed_repeats_a_sampled_answer_and_stop_cuts_it(server, reference)


def test_tsctl_generate_prints_the_text_as_it_comes(server, reference):
    checks.tsctl_generate_prints_the_text_as_it_comes(server, reference,
                                                      ["--grpc-inference", server.listening.grpc_inference, "--grpc"])
