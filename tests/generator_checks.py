"""What `smollm2_chat` must do on either engine (tests/integration/test_generator.py against TorchServe,
test_kserve_generator.py against the KServe engine): the same checks, each request sent to a `target` that has
`inference_url` and `auth_headers(kind)` (tskit.server.TorchServe and tskit.kserve_server.KServeEngine both do).
The answers are held against transformers' greedy `generate` in process on the same weights (`reference`:
tests/integration/conftest.py's generator_reference, made once per run)."""

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from own_server import wait_until
from support import REPO

MODEL = "smollm2_chat"
NEW = 16
LONG = 48  # the streamed check's answer: long enough that its lines' spread is measurable
PROMPTS = [{"prompt": "The capital of France is"}, {"prompt": "def fibonacci(n):"},
           {"messages": [{"role": "user", "content": "Write a haiku about the sea."}]},
           {"messages": [{"role": "system", "content": "Answer briefly."},
                         {"role": "user", "content": "List three fruits."}]}]
BAD = [
    ({"prompt": "hi", "temperature": -1}, 400, "InvalidField"), ({"prompt": "hi", "top_p": 1.5}, 400, "InvalidField"),
    ({"prompt": "hi", "max_tokens": 10**9}, 400, "InvalidField"), ({"prompt": "hi", "max_tokens": 0}, 400, "InvalidField"),
    ({"prompt": ""}, 400, "EmptyText"), ({"messages": [{"role": "robot", "content": "hi"}]}, 400, "InvalidField"),
    ({"prompt": "hi", "stop": 5}, 400, "InvalidField"), ({"prompt": "a\ud800b"}, 400, "InvalidUTF8"),
    ({"prompt": "word " * 3000}, 413, "PromptTooLong"), ({"prompt": "hi", "stream": True, "top_k": -2}, 400, "InvalidField"),
]


def key(target) -> str:
    return target.auth_headers("inference")["Authorization"].split(" ", 1)[1]


def post(target, body, path="", **kwargs):
    url = f"{target.inference_url}/predictions/{MODEL}" + (f"/1.0/{path}" if path else "")
    return requests.post(url, json=body, headers=target.auth_headers("inference"), timeout=120, **kwargs)


def greedy(request, new=NEW, **extra):
    return dict(request, max_tokens=new, temperature=0, **extra)


def expected(reference, request) -> str:
    return reference[json.dumps(request)]


def greedy_alone_and_beside_other_streams(target, reference) -> None:
    for request in PROMPTS:
        answer = post(target, greedy(request))
        assert answer.status_code == 200, answer.text
        assert answer.json()["text"] == expected(reference, request), request
    sampled = [dict(PROMPTS[i % 4], max_tokens=32, temperature=1.0, stream=True) for i in range(4)]
    with ThreadPoolExecutor(max_workers=10) as pool:
        noise = [pool.submit(lambda b: post(target, b).text, b) for b in sampled]
        time.sleep(0.5)  # the greedy requests join a running batch of sampled streams
        answers = list(pool.map(lambda r: post(target, greedy(r)).json()["text"], PROMPTS))
        assert all(len(f.result()) > 0 for f in noise)
    assert answers == [expected(reference, r) for r in PROMPTS]


def stream_lines_arrive_as_made(target, reference) -> None:
    """Streamed, the first line comes soon and the rest step by step: from the first line to the last passes
    most of the answer's time (a server that sent the lines at the end would send them all at once)."""
    started = time.perf_counter()
    response = post(target, greedy(PROMPTS[1], LONG, stream=True), stream=True)  # code: it runs to LONG tokens
    assert response.status_code == 200 and response.headers["Content-Type"] == "application/x-ndjson"
    lines, arrivals = [], []
    for line in response.iter_lines(chunk_size=1):  # each line as it arrives, not 512 bytes at a time
        lines.append(json.loads(line))
        arrivals.append(time.perf_counter() - started)
    assert len(lines) >= LONG // 2 and arrivals[-1] - arrivals[0] > 0.5 * arrivals[-1], arrivals
    assert "".join(line["text"] for line in lines) == reference["long"]
    assert lines[-1]["finish_reason"] == "length" and lines[-1]["usage"]["completion_tokens"] == LONG
    assert all(set(line) == {"text"} for line in lines[:-1])


def openai_client_chats_streams_and_completes(target, reference) -> None:
    import openai

    api = openai.OpenAI(base_url=f"{target.inference_url}/predictions/{MODEL}/1.0/v1", api_key=key(target),
                        max_retries=0)
    chat = PROMPTS[3]
    whole = api.chat.completions.create(model=MODEL, messages=chat["messages"], max_tokens=NEW, temperature=0)
    assert whole.choices[0].message.content == expected(reference, chat)
    assert whole.choices[0].finish_reason == "length" and whole.usage.completion_tokens == NEW
    pieces = list(api.chat.completions.create(model=MODEL, messages=chat["messages"], max_tokens=NEW,
                                              temperature=0, stream=True))
    assert "".join(p.choices[0].delta.content or "" for p in pieces if p.choices) == expected(reference, chat)
    completion = api.completions.create(model=MODEL, prompt=PROMPTS[0]["prompt"], max_tokens=NEW, temperature=0)
    assert completion.choices[0].text == expected(reference, PROMPTS[0])
    streamed = list(api.completions.create(model=MODEL, prompt=PROMPTS[0]["prompt"], max_tokens=NEW, temperature=0,
                                           stream=True))
    assert "".join(p.choices[0].text for p in streamed if p.choices) == expected(reference, PROMPTS[0])
    assert [m.id for m in api.models.list()] == [MODEL]
    with pytest.raises(openai.BadRequestError, match="temperature"):
        api.chat.completions.create(model=MODEL, messages=chat["messages"], temperature=3)


def every_bad_option_is_a_4xx_before_any_token(target, reference) -> None:
    for body, status, kind in BAD:
        raw = json.dumps(body).encode("utf-8", "surrogatepass")  # a lone surrogate as JSON sends it: \\ud800
        answer = requests.post(f"{target.inference_url}/predictions/{MODEL}", data=raw, timeout=60,
                               headers={"Content-Type": "application/json", **target.auth_headers("inference")})
        assert (answer.status_code, answer.json()["type"]) == (status, kind), (body, answer.text)
    unknown = post(target, {"prompt": "hi"}, path="v1/embeddings")
    assert unknown.status_code == 404 and unknown.json()["type"] == "UnknownRoute"
    assert post(target, greedy(PROMPTS[0])).json()["text"] == expected(reference, PROMPTS[0])


def a_client_that_leaves_frees_its_place(target, log_file: str) -> None:
    """Three streams closed after two lines each; the handler logs their ids as freed at its next step."""
    gone = []
    for _ in range(3):
        response = post(target, greedy(PROMPTS[2], 400, stream=True), stream=True)
        lines = response.iter_lines(chunk_size=1)  # each line as it arrives
        next(lines), next(lines)
        gone.append(response.headers["x-request-id"])
        response.close()
    assert post(target, {"prompt": "Hello", "max_tokens": 4}).status_code == 200  # the next step frees them

    def freed_lines():
        with open(log_file, encoding="utf-8", errors="replace") as f:
            lines = [line for line in f if "whose clients left" in line]
        return all(any(i in line for line in lines) for i in gone) and lines

    wait_until(freed_lines, 30, what="the handler's log of the three sequences it freed")


def kserve_v2_answers_whole(target, reference) -> None:
    request = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [PROMPTS[1]["prompt"]]}],
               "parameters": {"max_tokens": NEW, "temperature": 0}}
    answer = requests.post(f"{target.inference_url}/v2/models/{MODEL}/infer", json=request, timeout=120,
                           headers=target.auth_headers("inference"))
    outputs = {o["name"]: o["data"][0] for o in answer.json()["outputs"]}
    assert outputs == {"text": expected(reference, PROMPTS[1]), "finish_reason": "length", "completion_tokens": NEW}


def a_seed_repeats_a_sampled_answer_and_stop_cuts_it(target, reference) -> None:
    sampled = {"prompt": "Once upon a time", "max_tokens": 16, "temperature": 0.9, "seed": 1234}
    first, again = (post(target, sampled).json()["text"] for _ in range(2))
    assert first == again
    whole = expected(reference, PROMPTS[0])
    stop = whole.split()[1]  # a word in the middle of the greedy answer
    cut = post(target, greedy(PROMPTS[0], stop=[stop])).json()
    assert cut == {"text": whole[:whole.index(stop)], "finish_reason": "stop", "usage": cut["usage"]}


def tsctl_generate_prints_the_text_as_it_comes(target, reference, *ways) -> None:
    """`tsctl generate` whole and streamed over HTTP, then each of `ways` (extra global options, e.g. gRPC)."""
    for before, after in (([], []), ([], ["--stream"]), *((way, []) for way in ways)):
        cmd = [sys.executable, os.path.join(REPO, "scripts", "tsctl.py"), "--inference-url", target.inference_url,
               "--key-file", target.key_file, *before, "generate", MODEL, PROMPTS[0]["prompt"],
               "--max-tokens", str(NEW), "--temperature", "0", *after]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert done.stdout == expected(reference, PROMPTS[0]) + "\n", (before, after)
        assert json.loads(done.stderr.splitlines()[-1])["finish_reason"] == "length"
