"""The HTTP fuzz suite's rules on the text generator's routes (the native one, OpenAI's chat/completions and
completions, KServe v2), for either engine (tests/integration/test_generator_fuzz.py: TorchServe;
test_kserve_generator.py: the KServe engine): a seeded, bounded run of mutated requests (every field given wrong types, huge, negative,
NaN-like, nested, lone-surrogate values; bodies truncated, byte-flipped, not JSON, empty; content types) with a
known-good greedy request every 10th, sent by 8 threads at once so good and bad requests share the running batch.

A failure is any 5xx, any 4xx without the contract's {"code", "type", "message"} body, any good request whose
answer is not the greedy reference, any request left unanswered (the tests add: any worker restart).
Set GEN_FUZZ_SEED / GEN_FUZZ_REQUESTS to explore beyond the fixed run."""

import json
import os
import random
from concurrent.futures import ThreadPoolExecutor

import requests

MODEL = "smollm2_chat"
SEED = int(os.environ.get("GEN_FUZZ_SEED", "20261204"))
REQUESTS = int(os.environ.get("GEN_FUZZ_REQUESTS", "120"))
ROUTES = {"native": "", "chat": "/1.0/v1/chat/completions", "completions": "/1.0/v1/completions", "v2": None}
GOOD = {"native": {"prompt": "The capital of France is"}, "chat": {"messages": [{"role": "user", "content": "Hi"}]},
        "completions": {"prompt": "The capital of France is"}}
FIELDS = ["prompt", "messages", "max_tokens", "temperature", "top_p", "top_k", "seed", "stop", "stream", "n",
          "stream_options", "max_completion_tokens"]
VALUES = [None, True, False, 0, -1, 1, 2, 3.5, -0.0, 1e308, -1e308, 10**30, 2**63, "", " ", "x" * 5000,
          "\ud800", "\udfff x", [], [1], ["a", 2], [[[]]], {}, {"a": 1}, {"include_usage": "yes"},
          [{"role": "user"}], [{"role": "user", "content": None}], [{"role": "tool", "content": "x"}],
          [{"role": "user", "content": "\ud83d"}], ["a", "b", "c", "d", "e"], "0.5", "NaN"]


def url_of(server, route: str) -> str:
    if route == "v2":
        return f"{server.inference_url}/v2/models/{MODEL}/infer"
    return f"{server.inference_url}/predictions/{MODEL}{ROUTES[route]}"


def v2_body(prompt, parameters) -> dict:
    return {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [prompt]}], "parameters": parameters}


def mutated(rng: random.Random):
    """(route, body bytes, content type) of one mutated request."""
    route = rng.choice(list(ROUTES))
    document = dict(GOOD.get(route, {}), max_tokens=2)
    how = rng.random()
    if how < 0.6:  # one or two fields set to a hostile value
        for _ in range(rng.choice((1, 2))):
            field, value = rng.choice(FIELDS), rng.choice(VALUES)
            if field == "max_tokens" and value is None:  # valid, and the default 128 tokens: not a mutation
                value = 0
            document[field] = value
        if "max_tokens" in document and isinstance(document["max_tokens"], int) and document["max_tokens"] > 4 \
                and document["max_tokens"] <= 512:
            document["max_tokens"] = 4  # valid but long: kept short so the run stays bounded
        body = document if route != "v2" else v2_body(document.pop("prompt", "hi"), document)
        raw = json.dumps(body).encode("utf-8", "surrogatepass")
    elif how < 0.8:  # the bytes broken
        raw = bytearray(json.dumps(document if route != "v2" else v2_body("hi", {"max_tokens": 2})).encode())
        for _ in range(rng.randint(1, 4)):
            raw[rng.randrange(len(raw))] = rng.randrange(256)
        raw = bytes(raw[:rng.randint(0, len(raw))]) if rng.random() < 0.5 else bytes(raw)
    else:  # not an object at all
        # (a JSON string is a valid prompt with the default 128 tokens: not a mutation, and slow on a loaded CI)
        raw = rng.choice([b"", b"null", b"[]", b"42", b"{", b"\xff\xfe\x00", json.dumps([document]).encode()])
    if how >= 0.6:  # sent as JSON: as text/plain, bytes that still decode would be a valid prompt of 128 tokens
        return route, raw, "application/json"
    return route, raw, rng.choice(["application/json", "application/octet-stream", "text/plain"])


def judged(response) -> str:
    if response is None:
        return "unanswered"
    if response.status_code >= 500:
        return f"{response.status_code}: {response.text[:200]}"
    if response.status_code >= 400:
        if response.status_code == 413 and not response.content:  # the frontend's bare 413 (max_request_size)
            return ""
        try:
            body = json.loads(response.content)
        except ValueError:
            return f"{response.status_code} without a JSON body: {response.content[:200]!r}"
        if not (isinstance(body, dict) and {"code", "type", "message"} <= set(body)):
            return f"{response.status_code} without the contract's body: {body!r}"[:300]
    return ""


def fuzzed(target) -> tuple:
    """The seeded run against `target` (`inference_url`, `auth_headers`): (failures, statuses seen, requests)."""
    headers = target.auth_headers("inference")
    good = {"prompt": "The capital of France is", "max_tokens": 6, "temperature": 0}
    reference = requests.post(url_of(target, "native"), json=good, headers=headers, timeout=120).json()["text"]
    rng = random.Random(SEED)
    jobs = [("good", json.dumps(good).encode(), "application/json") if i % 10 == 0 else mutated(rng)
            for i in range(REQUESTS)]

    def send(job):
        route, raw, content_type = job
        try:
            response = requests.post(url_of(target, "native" if route == "good" else route), data=raw, timeout=300,
                                     headers=dict(headers, **{"Content-Type": content_type}))
        except requests.RequestException:
            return job, None
        return job, response

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(send, jobs))
    failures = []
    for (route, raw, content_type), response in results:
        problem = judged(response)
        if route == "good" and not problem and (response.status_code != 200 or response.json()["text"] != reference):
            problem = f"good request answered {response.status_code} {response.text[:200]}"
        if problem:
            failures.append(f"{route} {content_type} {raw[:120]!r}: {problem}")
    return failures, sorted({r.status_code for _, r in results if r is not None}), len(jobs)
