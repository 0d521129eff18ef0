"""make bench (G): a text generator served, beside the same weights in process, side by side in one run.

  (G)  the served model (this package's archive on a TorchServe of the bench's own, continuous batching):
       1, 4 and 16 concurrent NDJSON streams of ~30-token chat prompts, 128 new tokens each: time to first token
       and time per output token (p50/p99, from each line's arrival), aggregate tokens/s; every answer checked
       (status 200, a last line with finish_reason and usage, its lines joined non-empty)
  (J)  the same archive and format in process, the package's own engine (handlers/generation.RunningBatch) at
       batch 1, 4, 16: prefill time (the batch's prompts together) and tokens/s, end of sequence ignored so
       each row makes 128 tokens; beside it (J eager) the same engine over eager PyTorch when the archive
       serves another format: which decode step is faster on this host
  (E)  transformers' eager `generate` on the same weights, a left-padded batch of 1, 4, 16 (the naive limit)
  (P)  llama.cpp's server on the same GGUF (benchkit.llamacpp_peer): the same chats streamed over its OpenAI
       route at 1, 4, 16 concurrent streams
  (I)  interference: a 16-token request alone, then while 8 streams of 512 tokens run
  (M)  the worker's memory with the model loaded, and its growth after 1,000 short streams of which a third
       were dropped after their first line
llama.cpp's server is the peer a CPU user would pick; when it is not measured (no GGUF source, or the bench
was told not to build it) its targets are reported "not measured".
"""

import json
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Optional

import psutil
import requests
import torch

from tskit.load import percentile

TOPICS = ["a dragon who learns to bake bread", "the history of the printing press", "a robot lost in a forest",
          "how volcanoes form and erupt", "a sailor crossing the Atlantic alone", "the life of honey bees",
          "a detective solving a mystery in Paris", "why the sky is blue", "a village that never sleeps",
          "the first journey to the Moon", "a cat who becomes a mayor", "how rivers shape valleys",
          "a musician who lost her voice", "the rise of the Roman Empire", "a garden on Mars", "a friendly ghost"]
NEW = 128


def chat(i: int) -> List[dict]:
    return [{"role": "user", "content": f"Write a long, detailed story about {TOPICS[i % len(TOPICS)]}."}]


# ---- in process: (J) and (E) -------------------------------------------------------------------------
def load_archive(mar: str, folder: str):
    """The decoder and tokenizer inside a text-generator archive, loaded as its worker loads them: the file
    its manifest names, with its handler settings (format, threads, dtype)."""
    from transformers import AutoTokenizer

    from tskit.unpacked import unpack
    from handlers.decoders import load_decoder

    unpacked = unpack(mar, folder)
    settings = unpacked.settings
    return (load_decoder(unpacked.model_file, settings.modelFormat, torch.device("cpu"), settings.intraOpThreads,
                         settings.dtype),
            AutoTokenizer.from_pretrained(unpacked.folder, local_files_only=True))


def prompt_ids(tokenizer, count: int) -> List[List[int]]:
    return [list(tokenizer.apply_chat_template(chat(i), add_generation_prompt=True, tokenize=True,
                                               return_dict=False)) for i in range(count)]


def in_process(decoder, prompts: List[List[int]], new: int = NEW) -> dict:
    """(J): the package's RunningBatch, the rows prefilled together then decoded together, `new` tokens each."""
    from handlers.generation import RunningBatch

    batch, started = RunningBatch(decoder), time.perf_counter()
    batch.last = torch.argmax(batch.prefill({str(i): ids for i, ids in enumerate(prompts)}), dim=-1)
    prefilled = time.perf_counter()
    for _ in range(new - 1):
        batch.last = torch.argmax(batch.step(), dim=-1)
    done = time.perf_counter()
    return {"batch": len(prompts), "prefill_ms": round((prefilled - started) * 1e3, 1),
            "step_ms": round((done - prefilled) / (new - 1) * 1e3, 1),
            "tok_s": round(len(prompts) * new / (done - started), 1)}


def eager_generate(model, tokenizer, prompts: List[List[int]], new: int = NEW) -> dict:
    """(E): transformers' generate on a left-padded batch, `new` tokens each."""
    width = max(map(len, prompts))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    started = time.perf_counter()
    with torch.inference_mode():
        model.generate(ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                       pad_token_id=pad)
    return {"batch": len(prompts), "tok_s": round(len(prompts) * new / (time.perf_counter() - started), 1)}


# ---- served: (G), (I), (M) -----------------------------------------------------------------------------
def stream(url: str, headers: Dict[str, str], body: dict, drop_after: Optional[int] = None) -> dict:
    """One NDJSON stream: arrival times of its lines and its last line (None when dropped on purpose)."""
    started = time.perf_counter()
    response = requests.post(url, json=dict(body, stream=True), headers=headers, stream=True, timeout=600)
    if response.status_code != 200:
        return {"ok": False, "error": f"{response.status_code} {response.text[:200]}"}
    arrivals, last, text = [], None, []
    for line in response.iter_lines(chunk_size=1):
        arrivals.append(time.perf_counter() - started)
        last = json.loads(line)
        text.append(last.get("text", ""))
        if drop_after is not None and len(arrivals) >= drop_after:
            response.close()
            return {"ok": True, "dropped": True}
    ok = last is not None and "finish_reason" in last and "usage" in last and bool("".join(text))
    tokens = last["usage"]["completion_tokens"] if ok else 0
    return {"ok": ok, "arrivals": arrivals, "tokens": tokens, "seconds": time.perf_counter() - started,
            "error": None if ok else f"bad last line {last!r}"}


def openai_stream(url: str, headers: Dict[str, str], body: dict) -> dict:
    """One OpenAI chat stream (server-sent events): arrival times of its content chunks (one token each)."""
    started = time.perf_counter()
    response = requests.post(url, json=dict(body, stream=True), headers=headers, stream=True, timeout=600)
    if response.status_code != 200:
        return {"ok": False, "error": f"{response.status_code} {response.text[:200]}"}
    arrivals, finish = [], None
    for line in response.iter_lines(chunk_size=1):
        if not line.startswith(b"data: ") or line == b"data: [DONE]":
            continue
        choice = json.loads(line[6:])["choices"][0]
        if choice.get("delta", {}).get("content"):
            arrivals.append(time.perf_counter() - started)
        finish = choice.get("finish_reason") or finish
    ok = finish is not None and bool(arrivals)
    return {"ok": ok, "arrivals": arrivals, "tokens": len(arrivals), "seconds": time.perf_counter() - started,
            "error": None if ok else "no finish_reason or no content"}


def served_point(url: str, headers: Dict[str, str], concurrency: int, rounds: int = 2, new: int = NEW,
                 reader=None) -> dict:
    """(G) at one concurrency: `rounds` streams per client, back to back (`reader`: `stream`, NDJSON, or
    `openai_stream` for a peer's server-sent events)."""
    reader = reader or stream

    def client(c: int) -> List[dict]:
        return [reader(url, headers, {"messages": chat(c * rounds + r), "max_tokens": new, "temperature": 0})
                for r in range(rounds)]

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = [r for rs in pool.map(client, range(concurrency)) for r in rs]
    elapsed = time.perf_counter() - started
    good = [r for r in results if r["ok"]]
    ttft = [r["arrivals"][0] * 1e3 for r in good]
    tpot = [(r["arrivals"][-1] - r["arrivals"][0]) / max(r["tokens"] - 1, 1) * 1e3 for r in good]
    return {"concurrency": concurrency, "streams": len(results), "failed": len(results) - len(good),
            "ttft_p50_ms": round(percentile(ttft, 50), 1), "ttft_p99_ms": round(percentile(ttft, 99), 1),
            "tpot_p50_ms": round(percentile(tpot, 50), 1), "tpot_p99_ms": round(percentile(tpot, 99), 1),
            "tok_s": round(sum(r["tokens"] for r in good) / elapsed, 1),
            "first_error": next((r["error"] for r in results if not r["ok"]), None)}


def interference(url: str, headers: Dict[str, str]) -> dict:
    """(I): a 16-token request alone, then while 8 streams of 512 tokens run."""
    short = {"prompt": "The capital of France is", "max_tokens": 16, "temperature": 0}
    alone = min(stream(url, headers, short)["seconds"] for _ in range(2))
    with ThreadPoolExecutor(9) as pool:
        longs = [pool.submit(stream, url, headers, {"messages": chat(i), "max_tokens": 512, "temperature": 0})
                 for i in range(8)]
        time.sleep(3.0)  # the long streams are decoding
        beside = stream(url, headers, short)["seconds"]
        for f in longs:
            f.result()
    return {"alone_s": round(alone, 2), "beside_8_long_s": round(beside, 2), "ratio": round(beside / alone, 2)}


def worker_rss_mb(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


def memory_growth(url: str, headers: Dict[str, str], pid: int, streams: int = 1000) -> dict:
    """(M): RSS before and after `streams` 8-token streams at concurrency 16, every third dropped after a line."""
    before = worker_rss_mb(pid)
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda i: stream(url, headers, {"prompt": f"Count to {i}:", "max_tokens": 8},
                                                 drop_after=1 if i % 3 == 0 else None), range(streams)))
    stream(url, headers, {"prompt": "Hello", "max_tokens": 4})  # the step that frees the last dropped ones
    after = worker_rss_mb(pid)
    return {"loaded_mb": round(before, 1), "after_mb": round(after, 1), "growth_mb": round(after - before, 1),
            "streams": streams, "dropped": sum(1 for r in results if r.get("dropped")),
            "failed": sum(1 for r in results if not r["ok"])}


def judge(r: dict) -> List[str]:
    """The issue's targets, each met / MISSED / not measured, with its numbers. `r`: G, J, E, I, M and P
    (llama.cpp, empty when not measured), each by concurrency or batch where it has one."""
    g, j, e, i, m, p = r["G"], r["J"], r["E"], r["I"], r["M"], r.get("P") or {}

    def line(ok: Optional[bool], text: str) -> str:
        return f"{'not measured' if ok is None else 'met' if ok else 'MISSED'}: {text}"

    top = max(g)
    lines = [
        line(g[top]["tok_s"] >= 0.8 * j[top]["tok_s"],
             f"(G) {g[top]['tok_s']} tok/s at {top} streams >= 0.8 x (J) batch {top} {j[top]['tok_s']}"),
        line(g[top]["tok_s"] >= 2 * e[top]["tok_s"],
             f"(G) {g[top]['tok_s']} tok/s at {top} streams >= 2 x eager generate batch {top} {e[top]['tok_s']}"),
        line(g[1]["ttft_p50_ms"] <= j[1]["prefill_ms"] + 30,
             f"(G) time to first token {g[1]['ttft_p50_ms']} ms at 1 stream <= (J) prefill {j[1]['prefill_ms']} + 30 ms"),
        line(i["ratio"] <= 2, f"(I) a 16-token request beside 8 long streams {i['beside_8_long_s']} s <= 2 x alone "
                              f"{i['alone_s']} s (x{i['ratio']})"),
        line(m["growth_mb"] < 50, f"(M) worker memory growth {m['growth_mb']} MB after {m['streams']} streams "
                                  f"({m['dropped']} dropped) < 50 MB"),
    ]
    k = r.get("K") or {}
    if top in k:
        lines.append(line(k[top]["tok_s"] >= 0.9 * g[top]["tok_s"] and k[top]["failed"] == 0,
                          f"(K) the KServe engine {k[top]['tok_s']} tok/s at {top} streams >= 0.9 x TorchServe's "
                          f"(G) {g[top]['tok_s']}, {k[top]['failed']} failed"))
    if top in p and 1 in p:
        lines += [line(g[top]["tok_s"] > p[top]["tok_s"], f"(G) {g[top]['tok_s']} tok/s at {top} streams ahead of "
                                                          f"llama.cpp's server {p[top]['tok_s']}"),
                  line(g[1]["tpot_p50_ms"] <= 2 * p[1]["tpot_p50_ms"],
                       f"(G) time per output token {g[1]['tpot_p50_ms']} ms at 1 stream <= 2 x llama.cpp's "
                       f"{p[1]['tpot_p50_ms']} ms")]
    else:
        lines.append(line(None, f"llama.cpp's server: {r.get('P_note', 'not run')}"))
    return lines


def table(r: dict) -> str:
    g, j, e, p, other = r["G"], r["J"], r["E"], r.get("P") or {}, r.get("J_eager") or {}
    k = r.get("K") or {}
    rows = ["| streams / batch | (G) served tok/s | TTFT p50 / p99 ms | TPOT p50 / p99 ms | failed | "
            "(J) in process tok/s | (J) prefill ms | (J) step ms | (J eager) step ms | (E) eager generate tok/s | "
            "(K) KServe engine tok/s | (K) TTFT / TPOT p50 ms | (P) llama.cpp tok/s | (P) TTFT / TPOT p50 ms |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for n in sorted(g):
        peers = " | ".join(f"{x[n]['tok_s']} | {x[n]['ttft_p50_ms']} / {x[n]['tpot_p50_ms']}" if n in x else "- | -"
                           for x in (k, p))  # (K), then (P)
        rows.append(f"| {n} | {g[n]['tok_s']} | {g[n]['ttft_p50_ms']} / {g[n]['ttft_p99_ms']} | "
                    f"{g[n]['tpot_p50_ms']} / {g[n]['tpot_p99_ms']} | {g[n]['failed']} of {g[n]['streams']} | "
                    f"{j[n]['tok_s']} | {j[n]['prefill_ms']} | {j[n]['step_ms']} | "
                    f"{other[n]['step_ms'] if n in other else '-'} | {e[n]['tok_s']} | {peers} |")
    return "\n".join(rows)


def faster_step(r: dict) -> str:
    """Which decode step is faster on this host at the largest batch: the served format or eager PyTorch."""
    if not r.get("J_eager"):
        return f"Decode step: served as {r['format']} (eager PyTorch); no other format measured."
    top = max(r["J"])
    served, eager = r["J"][top]["step_ms"], r["J_eager"][top]["step_ms"]
    verdict = "faster" if served < eager else "NOT faster: `format: transformers` would serve eager PyTorch"
    return (f"Decode step at batch {top}: {r['format']} {served} ms, eager PyTorch {eager} ms "
            f"(x{round(eager / served, 2)}): the served format is {verdict} on this host.")
