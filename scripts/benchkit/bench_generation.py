"""make bench's section (G) for every served text generator (benchkit.generation_bench has the pieces):
the served streams on a TorchServe of the bench's own loaded with that model alone, then, with the server
stopped, the same archive's weights in process (J) and eager `generate` (E) with the worker's threads."""

import json
import os
from typing import Dict, List

import torch

from benchkit import generation_bench as gb
from benchkit.bench_servers import declared
from tskit import kinds
from tskit.declaration import REPO
from tskit.server import private_server, running

STORE = os.path.join(REPO, "model_store")


def generators() -> List[str]:
    """Served models whose kind generates text (their family, not a kind's name)."""
    return [n for n, d in declared().items() if d.serve and kinds.family(d.kind) == "generator"]


def served_part(name: str, work: str, concurrency: List[int], streams: int, log) -> dict:
    server = private_server(os.path.join(work, "server"), load_models=f"{name}.mar")
    with running(server, timeout=300):
        url = f"{server.inference_url}/predictions/{name}"
        headers = server.auth_headers("inference")
        pid = server.client().describe(name)[0]["workers"][0]["pid"]
        gb.stream(url, headers, {"prompt": "warm up", "max_tokens": 8})
        g = {}
        for c in concurrency:
            g[c] = gb.served_point(url, headers, c)
            log(f"(G) {name} x{c}: {g[c]['tok_s']} tok/s, TTFT p50 {g[c]['ttft_p50_ms']} ms, "
                f"TPOT p50 {g[c]['tpot_p50_ms']} ms, failed {g[c]['failed']}")
        i = gb.interference(url, headers)
        log(f"(I) {name}: {i}")
        m = gb.memory_growth(url, headers, pid, streams)
        log(f"(M) {name}: {m}")
    return {"G": g, "I": i, "M": m}


def in_process_part(name: str, work: str, batches: List[int], log) -> dict:
    threads = declared()[name].handler.get("intraOpThreads", 2)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)  # as the worker runs it
    try:
        model, tokenizer = gb.load_archive(os.path.join(STORE, f"{name}.mar"), os.path.join(work, "folder"))
        j, e = {}, {}
        for b in batches:
            prompts = gb.prompt_ids(tokenizer, b)
            j[b], e[b] = gb.in_process(model, prompts), gb.eager_generate(model, tokenizer, prompts)
            log(f"(J) {name} batch {b}: {j[b]}; (E) eager generate: {e[b]}")
    finally:
        torch.set_num_threads(before)
    return {"J": j, "E": e, "threads": threads}


def generation_section(out: str, concurrency: List[int], streams: int, log) -> Dict[str, dict]:
    """Every served generator measured; writes out/generation.md and generation.json; returns the results."""
    results, report = {}, []
    for name in generators():
        work = os.path.join(out, f"generation-{name}")
        result = served_part(name, work, concurrency, streams, log)
        result.update(in_process_part(name, work, concurrency, log))
        result["targets"] = gb.judge(result["G"], result["J"], result["E"], result["I"], result["M"])
        results[name] = result
        report += [f"## Generation (G): {name}", "", f"prompts ~30 tokens (chat), {gb.NEW} new tokens, greedy; "
                   f"in process with {result['threads']} threads", "", gb.table(result["G"], result["J"], result["E"]),
                   "", f"- (I) {result['I']}", f"- (M) {result['M']}", "", "Targets:", ""]
        report += [f"- {t}" for t in result["targets"]] + [""]
    if results:
        with open(os.path.join(out, "generation.md"), "w", encoding="utf-8") as f:
            f.write("\n".join(report))
        with open(os.path.join(out, "generation.json"), "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1, default=str)
        print("\n".join(report))
    return results
