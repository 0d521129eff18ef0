"""make bench's section (G) for every served text generator (benchkit.generation_bench has the pieces):
the served streams on a TorchServe of the bench's own loaded with that model alone; with the server stopped,
the same streams on the KServe engine (K, tskit.kserve_engine) and llama.cpp's server on the same GGUF (P,
benchkit.llamacpp_peer); then the same archive in process (J), the
same engine over eager PyTorch (J eager) and eager `generate` (E) with the worker's threads."""

import json
import os
from typing import Dict, List, Optional

import torch

from benchkit import generation_bench as gb
from benchkit.bench_servers import declared
from benchkit.llamacpp_peer import LlamaCppPeer, ensure_built
from handlers.decoders import TorchDecoder
from tskit import kinds
from tskit.causal_lm import load_causal_lm, resolve_source
from tskit.declaration import REPO
from tskit.kserve_server import KServeEngine
from tskit.server import free_ports, private_server, running

STORE = os.path.join(REPO, "model_store")


def generators() -> List[str]:
    """Served models whose kind generates text, every answer a stream of tokens (not a kind's name)."""
    return [n for n, d in declared().items() if d.serve and kinds.kind(d.kind).streams_every_request]


def streams_at(label: str, url: str, headers: dict, concurrency: List[int], log) -> dict:
    """After a warm-up stream, gb.served_point at each concurrency (NDJSON streams to `url`), logged."""
    gb.stream(url, headers, {"prompt": "warm up", "max_tokens": 8})
    points = {}
    for c in concurrency:
        points[c] = point = gb.served_point(url, headers, c)
        log(f"{label} x{c}: {point['tok_s']} tok/s, TTFT p50 {point['ttft_p50_ms']} ms, "
            f"TPOT p50 {point['tpot_p50_ms']} ms, failed {point['failed']}")
    return points


def served_part(name: str, work: str, concurrency: List[int], streams: int, log) -> dict:
    server = private_server(os.path.join(work, "server"), load_models=f"{name}.mar")
    with running(server, timeout=300):
        url = f"{server.inference_url}/predictions/{name}"
        headers = server.auth_headers("inference")
        pid = server.client().describe(name)[0]["workers"][0]["pid"]
        g = streams_at(f"(G) {name}", url, headers, concurrency, log)
        i = gb.interference(url, headers)
        log(f"(I) {name}: {i}")
        m = gb.memory_growth(url, headers, pid, streams)
        log(f"(M) {name}: {m}")
    return {"G": g, "I": i, "M": m}


def engine_part(name: str, work: str, concurrency: List[int], log) -> dict:
    """(K): the same archive on the KServe engine (tskit.kserve_engine) alone, the same streams as (G)."""
    engine = KServeEngine(STORE, os.path.join(work, "engine"), *free_ports(2))
    os.makedirs(engine.workdir, exist_ok=True)
    engine.start([name])
    try:
        ready_s = engine.wait_ready([name], timeout=300)
        k = streams_at(f"(K) KServe engine {name}", f"{engine.inference_url}/predictions/{name}",
                       engine.auth_headers("inference"), concurrency, log)
    finally:
        engine.stop()
    return {"K": k, "K_note": f"the KServe engine, ready in {ready_s:.1f} s"}


def gguf_source(name: str) -> Optional[str]:
    """The GGUF file a generator is built from, if it is one (llama.cpp serves nothing else)."""
    declaration = declared()[name]
    path, _ = resolve_source(declaration.source, declaration.folder)
    return path if path.endswith(".gguf") else None


def peer_part(name: str, work: str, concurrency: List[int], threads: int, log) -> dict:
    gguf = gguf_source(name)
    if gguf is None:
        return {"P": {}, "P_note": "not measured: the model's source is not a GGUF file"}
    ensure_built(log)
    peer = LlamaCppPeer(gguf, free_ports(1)[0], threads, os.path.join(work, "llamacpp.log"))
    peer.start()
    try:
        gb.openai_stream(peer.url, {}, {"messages": gb.chat(0), "max_tokens": 8, "temperature": 0})
        p = {}
        for c in concurrency:
            p[c] = gb.served_point(peer.url, {}, c, reader=gb.openai_stream)
            log(f"(P) llama.cpp {name} x{c}: {p[c]['tok_s']} tok/s, TTFT p50 {p[c]['ttft_p50_ms']} ms, "
                f"TPOT p50 {p[c]['tpot_p50_ms']} ms, failed {p[c]['failed']}")
    finally:
        peer.stop()
    return {"P": p, "P_note": f"llama-cpp-python's server, {os.path.basename(gguf)}, {threads} threads"}


def in_process_part(name: str, work: str, batches: List[int], threads: int, log) -> dict:
    declaration = declared()[name]
    before = torch.get_num_threads()
    torch.set_num_threads(threads)  # as the worker runs it
    try:
        decoder, tokenizer = gb.load_archive(os.path.join(STORE, f"{name}.mar"), os.path.join(work, "folder"))
        model = load_causal_lm(declaration.source, declaration.folder).model  # the same weights, eager
        eager = None if declaration.format == "transformers" else TorchDecoder(model)
        j, j_eager, e = {}, {}, {}
        for b in batches:
            prompts = gb.prompt_ids(tokenizer, b)
            j[b], e[b] = gb.in_process(decoder, prompts), gb.eager_generate(model, tokenizer, prompts)
            if eager is not None:
                j_eager[b] = gb.in_process(eager, prompts)
            log(f"(J) {name} batch {b}: {j[b]}; (J eager): {j_eager.get(b)}; (E) eager generate: {e[b]}")
    finally:
        torch.set_num_threads(before)
    return {"J": j, "J_eager": j_eager, "E": e, "threads": threads, "format": declaration.format}


def generation_section(out: str, concurrency: List[int], streams: int, log, peer: bool = True,
                       engine: bool = True) -> Dict[str, dict]:
    """Every served generator measured; writes out/generation.md and generation.json; returns the results."""
    results, report = {}, []
    for name in generators():
        work = os.path.join(out, f"generation-{name}")
        threads = declared()[name].handler.get("intraOpThreads", 2)
        result = served_part(name, work, concurrency, streams, log)
        result.update(engine_part(name, work, concurrency, log) if engine
                      else {"K": {}, "K_note": "not measured (--no-engine)"})
        result.update(peer_part(name, work, concurrency, threads, log) if peer
                      else {"P": {}, "P_note": "not measured (--no-llamacpp)"})
        result.update(in_process_part(name, work, concurrency, threads, log))
        result["targets"] = gb.judge(result)
        results[name] = result
        report += [f"## Generation (G): {name}", "", f"prompts ~30 tokens (chat), {gb.NEW} new tokens, greedy; "
                   f"served as {result['format']}; in process with {threads} threads; (P): {result['P_note']}; "
                   f"(K): {result['K_note']}",
                   "", gb.table(result), "", f"- (I) {result['I']}", f"- (M) {result['M']}", "",
                   gb.faster_step(result), "", "Targets:", ""]
        report += [f"- {t}" for t in result["targets"]] + [""]
    if results:
        with open(os.path.join(out, "generation.md"), "w", encoding="utf-8") as f:
            f.write("\n".join(report))
        with open(os.path.join(out, "generation.json"), "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1, default=str)
        print("\n".join(report))
    return results
