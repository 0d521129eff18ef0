"""smollm2_chat on the real server (continuous batching, the archive `make archives` built): greedy answers equal
transformers' generate in process on the same weights (its declared source, the GGUF), alone and beside other
streams, whichever format the archive serves; NDJSON lines
arrive as they are made; the official `openai` client, gRPC, KServe v2 and `tsctl generate` get right answers;
every bad option is a 4xx before any token; a client that leaves frees its place."""

import json
import os
import subprocess
import sys
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
import torch

from own_server import wait_until
from support import REPO
from tskit.causal_lm import load_causal_lm
from tskit.declaration import load as load_declaration
from tskit.grpc_client import STUBS, generate_stubs

MODEL = "smollm2_chat"
NEW = 16
PROMPTS = [{"prompt": "The capital of France is"}, {"prompt": "def fibonacci(n):"},
           {"messages": [{"role": "user", "content": "Write a haiku about the sea."}]},
           {"messages": [{"role": "system", "content": "Answer briefly."},
                         {"role": "user", "content": "List three fruits."}]}]


@pytest.fixture(scope="module")
def server(generator_server):
    """The generator's own server (conftest: the shared one serves the one-shot models)."""
    return generator_server


@pytest.fixture(scope="module")
def client(generator_client):
    return generator_client

@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """transformers' greedy generate in process on the model's declared source (the GGUF, dequantised as the
    build does) with the archive's tokenizer: the archive serves ONNX, so its own folder holds no eager weights."""
    from transformers import AutoTokenizer

    folder = tmp_path_factory.mktemp("smollm2_archive")
    with zipfile.ZipFile(os.path.join(REPO, "model_store", f"{MODEL}.mar")) as archive:
        archive.extractall(folder, [n for n in archive.namelist() if not n.endswith((".py", ".onnx", ".data"))])
    declaration = load_declaration(MODEL)
    model = load_causal_lm(declaration.source, declaration.folder).model
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)

    def generate(request: dict, new: int = NEW) -> str:
        if "messages" in request:
            ids = tokenizer.apply_chat_template(request["messages"], add_generation_prompt=True, tokenize=True,
                                                return_dict=False)
        else:
            ids = tokenizer(request["prompt"])["input_ids"]
        with torch.inference_mode():
            out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                 max_new_tokens=new, do_sample=False)
        return tokenizer.decode(out[0, len(ids):], skip_special_tokens=True)

    return {json.dumps(p): generate(p) for p in PROMPTS} | {"generate": generate}


def post(client, body, path="", **kwargs):
    url = f"/predictions/{MODEL}" + (f"/1.0/{path}" if path else "")
    return client.infer("POST", url, json=body, **kwargs)


def greedy(request, new=NEW, **extra):
    return dict(request, max_tokens=new, temperature=0, **extra)


def test_greedy_answers_equal_generate_alone_and_beside_other_streams(client, reference):
    for request in PROMPTS:
        answer = post(client, greedy(request))
        assert answer.status_code == 200, answer.text
        assert answer.json()["text"] == reference[json.dumps(request)], request
    sampled = [dict(PROMPTS[i % 4], max_tokens=32, temperature=1.0, stream=True) for i in range(4)]
    with ThreadPoolExecutor(max_workers=10) as pool:
        noise = [pool.submit(lambda b: post(client, b).text, b) for b in sampled]
        time.sleep(0.5)  # the greedy requests join a running batch of sampled streams
        answers = list(pool.map(lambda r: post(client, greedy(r)).json()["text"], PROMPTS))
        assert all(len(f.result()) > 0 for f in noise)
    assert answers == [reference[json.dumps(r)] for r in PROMPTS]


def test_stream_lines_arrive_as_made_and_join_to_the_whole_answer(client, server, reference):
    request = greedy(PROMPTS[2], stream=True)
    started = time.perf_counter()
    response = requests.post(f"{server.inference_url}/predictions/{MODEL}", json=request, stream=True, timeout=120,
                             headers=server.auth_headers("inference"))
    assert response.status_code == 200 and response.headers["Content-Type"] == "application/x-ndjson"
    lines, arrivals = [], []
    for line in response.iter_lines(chunk_size=1):  # each line as it arrives, not 512 bytes at a time
        lines.append(json.loads(line))
        arrivals.append(time.perf_counter() - started)
    assert len(lines) >= NEW // 2 and arrivals[-1] - arrivals[0] > 0.25  # one line a step, not one at the end
    assert "".join(line["text"] for line in lines) == reference[json.dumps(PROMPTS[2])]
    assert lines[-1]["finish_reason"] == "length" and lines[-1]["usage"]["completion_tokens"] == NEW
    assert all(set(line) == {"text"} for line in lines[:-1])


def test_the_openai_client_chats_streams_and_completes(server, reference):
    import openai

    api = openai.OpenAI(base_url=f"{server.inference_url}/predictions/{MODEL}/1.0/v1",
                        api_key=server.keys()["inference"], max_retries=0)
    chat = PROMPTS[3]
    whole = api.chat.completions.create(model=MODEL, messages=chat["messages"], max_tokens=NEW, temperature=0)
    assert whole.choices[0].message.content == reference[json.dumps(chat)]
    assert whole.choices[0].finish_reason == "length" and whole.usage.completion_tokens == NEW
    pieces = list(api.chat.completions.create(model=MODEL, messages=chat["messages"], max_tokens=NEW,
                                              temperature=0, stream=True))
    assert "".join(p.choices[0].delta.content or "" for p in pieces if p.choices) == reference[json.dumps(chat)]
    completion = api.completions.create(model=MODEL, prompt=PROMPTS[0]["prompt"], max_tokens=NEW, temperature=0)
    assert completion.choices[0].text == reference[json.dumps(PROMPTS[0])]
    streamed = list(api.completions.create(model=MODEL, prompt=PROMPTS[0]["prompt"], max_tokens=NEW, temperature=0,
                                           stream=True))
    assert "".join(p.choices[0].text for p in streamed if p.choices) == reference[json.dumps(PROMPTS[0])]
    assert [m.id for m in api.models.list()] == [MODEL]
    with pytest.raises(openai.BadRequestError, match="temperature"):
        api.chat.completions.create(model=MODEL, messages=chat["messages"], temperature=3)


BAD = [
    ({"prompt": "hi", "temperature": -1}, 400, "InvalidField"), ({"prompt": "hi", "top_p": 1.5}, 400, "InvalidField"),
    ({"prompt": "hi", "max_tokens": 10**9}, 400, "InvalidField"), ({"prompt": "hi", "max_tokens": 0}, 400, "InvalidField"),
    ({"prompt": ""}, 400, "EmptyText"), ({"messages": [{"role": "robot", "content": "hi"}]}, 400, "InvalidField"),
    ({"prompt": "hi", "stop": 5}, 400, "InvalidField"), ({"prompt": "a\ud800b"}, 400, "InvalidUTF8"),
    ({"prompt": "word " * 3000}, 413, "PromptTooLong"), ({"prompt": "hi", "stream": True, "top_k": -2}, 400, "InvalidField"),
]


def test_every_bad_option_is_a_4xx_json_before_any_token_and_the_worker_lives(client, reference):
    pids = {w["pid"] for w in client.describe(MODEL)["workers"]}
    for body, status, kind in BAD:
        raw = json.dumps(body).encode("utf-8", "surrogatepass")  # a lone surrogate as JSON sends it: \\ud800
        answer = client.infer("POST", f"/predictions/{MODEL}", data=raw, headers={"Content-Type": "application/json"})
        assert (answer.status_code, answer.json()["type"]) == (status, kind), (body, answer.text)
    unknown = post(client, {"prompt": "hi"}, path="v1/embeddings")
    assert unknown.status_code == 404 and unknown.json()["type"] == "UnknownRoute"
    assert post(client, greedy(PROMPTS[0])).json()["text"] == reference[json.dumps(PROMPTS[0])]
    assert {w["pid"] for w in client.describe(MODEL)["workers"]} == pids


def test_a_client_that_leaves_frees_its_place(client, server):
    gone = []
    for _ in range(3):
        response = requests.post(f"{server.inference_url}/predictions/{MODEL}", stream=True, timeout=120,
                                 json=greedy(PROMPTS[2], 400, stream=True), headers=server.auth_headers("inference"))
        lines = response.iter_lines(chunk_size=1)  # each line as it arrives
        next(lines), next(lines)
        gone.append(response.headers["x-request-id"])
        response.close()
    assert post(client, {"prompt": "Hello", "max_tokens": 4}).status_code == 200  # the next step frees them
    def freed_lines():
        with open(server.model_log, encoding="utf-8", errors="replace") as f:
            lines = [line for line in f if "whose clients left" in line]
        return all(any(i in line for line in lines) for i in gone) and lines

    wait_until(freed_lines, 30, what="the handler's log of the three sequences it freed")


@pytest.fixture(scope="module")
def grpc_api(server):
    if not os.path.exists(os.path.join(STUBS, "__init__.py")):
        generate_stubs()
    return server.client().grpc(server.listening.grpc_inference, server.listening.grpc_management)


def test_grpc_gets_a_whole_answer_never_a_hang(grpc_api, reference):
    body = json.dumps(greedy(PROMPTS[0], stream=True)).encode()
    assert grpc_api.predict(MODEL, body)["text"] == reference[json.dumps(PROMPTS[0])]
    started = time.perf_counter()
    messages = grpc_api.stream(MODEL, body)
    assert time.perf_counter() - started < 30 and len(messages) == 1
    assert messages[0]["text"] == reference[json.dumps(PROMPTS[0])] and messages[0]["finish_reason"] == "length"


def test_kserve_v2_answers_whole(client, reference):
    request = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [PROMPTS[1]["prompt"]]}],
               "parameters": {"max_tokens": NEW, "temperature": 0}}
    answer = client.infer("POST", f"/v2/models/{MODEL}/infer", json=request)
    outputs = {o["name"]: o["data"][0] for o in answer.json()["outputs"]}
    assert outputs == {"text": reference[json.dumps(PROMPTS[1])], "finish_reason": "length", "completion_tokens": NEW}


def test_a_seed_repeats_a_sampled_answer_and_stop_cuts_it(client, reference):
    sampled = {"prompt": "Once upon a time", "max_tokens": 16, "temperature": 0.9, "seed": 1234}
    first, again = (post(client, sampled).json()["text"] for _ in range(2))
    assert first == again
    whole = reference[json.dumps(PROMPTS[0])]
    stop = whole.split()[1]  # a word in the middle of the greedy answer
    cut = post(client, greedy(PROMPTS[0], stop=[stop])).json()
    assert cut == {"text": whole[:whole.index(stop)], "finish_reason": "stop", "usage": cut["usage"]}


def test_tsctl_generate_prints_the_text_as_it_comes(server, reference):
    expected = reference[json.dumps(PROMPTS[0])]
    for before, after in (([], []), ([], ["--stream"]), (["--grpc"], [])):
        cmd = [sys.executable, os.path.join(REPO, "scripts", "tsctl.py"), "--inference-url", server.inference_url,
               "--key-file", server.key_file, "--grpc-inference", server.listening.grpc_inference, *before,
               "generate", MODEL, PROMPTS[0]["prompt"], "--max-tokens", str(NEW), "--temperature", "0", *after]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert done.stdout == expected + "\n", (before, after)
        assert json.loads(done.stderr.splitlines()[-1])["finish_reason"] == "length"
