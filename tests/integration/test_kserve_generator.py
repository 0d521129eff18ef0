"""smollm2_chat on the KServe engine (`make serve ENGINE=kserve`): the archive TorchServe serves, its handler
stepped as TorchServe's continuous batching steps it (tskit.kserve_engine.StepBatcher). The same checks as
against TorchServe (tests/generator_checks.py): greedy answers equal transformers' generate alone and beside
other streams, NDJSON lines as they are made, the `openai` client's chat, completions, SSE streams and models,
every bad option a 4xx before any token, a client that leaves freed at the next step, KServe v2, `tsctl generate`,
the generator's fuzz run (tests/generator_fuzzing.py); and over the engine's gRPC v2 (KServe's SDK) a whole
answer, as TorchServe's gRPC gives."""

import asyncio

import psutil
import pytest

import generator_checks as checks
from generator_checks import MODEL, NEW, PROMPTS, expected
from generator_fuzzing import SEED, fuzzed


@pytest.fixture(scope="module")
def engine(kserve_generator):
    return kserve_generator


@pytest.fixture(scope="module")
def reference(generator_reference):
    return generator_reference


def test_greedy_answers_equal_generate_alone_and_beside_other_streams(engine, reference):
    checks.greedy_alone_and_beside_other_streams(engine, reference)


def test_stream_lines_arrive_as_made_and_join_to_the_whole_answer(engine, reference):
    checks.stream_lines_arrive_as_made(engine, reference)


def test_the_openai_client_chats_streams_and_completes(engine, reference):
    checks.openai_client_chats_streams_and_completes(engine, reference)


def test_every_bad_option_is_a_4xx_json_before_any_token_and_the_engine_lives(engine, reference):
    pid = engine.pid()
    checks.every_bad_option_is_a_4xx_before_any_token(engine, reference)
    assert engine.pid() == pid and psutil.pid_exists(pid)


def test_a_client_that_leaves_frees_its_place(engine):
    checks.a_client_that_leaves_frees_its_place(engine, engine.log_file)


def test_kserve_v2_answers_whole(engine, reference):
    checks.kserve_v2_answers_whole(engine, reference)


def test_grpc_v2_gets_a_whole_answer(engine, reference):
    from kserve import InferenceGRPCClient, InferInput, InferRequest

    async def ask():
        client = InferenceGRPCClient(engine.grpc_address, timeout=120)
        text = InferInput("text", [1], "BYTES", [PROMPTS[1]["prompt"]])
        request = InferRequest(MODEL, [text], parameters={"max_tokens": NEW, "temperature": 0})
        try:
            return await client.infer(request, headers=[("authorization", engine.auth_headers("inference")
                                                                           ["Authorization"])])
        finally:
            await client.close()

    answer = asyncio.run(ask())
    outputs = {o.name: o.as_numpy()[0] for o in answer.outputs}  # numbers and bytes, raw as Triton answers
    assert outputs == {"text": expected(reference, PROMPTS[1]).encode(), "finish_reason": b"length",
                       "completion_tokens": NEW}


def test_a_seed_repeats_a_sampled_answer_and_stop_cuts_it(engine, reference):
    checks.a_seed_repeats_a_sampled_answer_and_stop_cuts_it(engine, reference)


def test_tsctl_generate_prints_the_text_as_it_comes(engine, reference):
    checks.tsctl_generate_prints_the_text_as_it_comes(engine, reference)


def test_generator_routes_fuzzed_on_the_engine(engine):
    pid = engine.pid()
    failures, statuses, sent = fuzzed(engine)
    print(f"\n[generator fuzz, KServe engine] seed {SEED}, {sent} requests, statuses {statuses}, "
          f"{len(failures)} failures")
    assert not failures, "\n".join(failures[:20])
    assert engine.pid() == pid
