"""(K): the response cache off vs on through the served path (benchkit.cache_bench does the streams)."""

import os
import shutil
import tempfile
from typing import Dict, List

from PIL import Image

from benchkit import cache_bench
from benchkit.archives import copy_archive
from benchkit.checks import answer_check
from benchkit.bench_servers import STORE, declared, server_cpu_seconds
from benchkit.bench_formats import Management
from tskit.client import TorchServeClient
from tskit.respec import with_settings
from tskit.server import TorchServe
from tskit import kinds


# ---- (K): the response cache -------------------------------------------------------------------------
# the kinds whose bench input has a known right answer for every variant (tskit.kinds)
CACHE_KINDS = tuple(k.name for k in kinds.KINDS.values() if k.known_answers)


def cache_section(server: TorchServe, args, workloads: Dict[str, dict], rows: List[dict], log) -> None:
    """(K): for each model of args.cache_models, `<model>_nocache` (as built) and `<model>_cache` (a copy
    with handler.cacheEntries, tskit.respec), both registered with the declaration's layout; each stream
    of benchkit.cache_bench in rounds of (off, on) alternating with (on, off), all at one concurrency."""
    decls = declared()
    manage = Management(server)
    store = server.props["model_store"]
    client = server.client()
    for base in args.cache_models:
        decl = decls[base]
        off, on = base + "_nocache", base + cache_bench.CACHE_SUFFIX
        scratch = tempfile.mkdtemp(prefix="bench-cache-")
        registered = []
        try:
            copy_archive(base, store, off)
            with_settings(os.path.join(STORE, f"{base}.mar"), os.path.join(scratch, f"{on}_src.mar"),
                          handler=cache_bench.CACHE_SETTINGS)
            copy_archive(f"{on}_src", store, on, source_store=scratch)
            for name in (off, on):
                manage.register(name, decl)
                registered.append(name)
            cache_points(server, args, base, decl.kind, {"off": off, "on": on}, workloads, client, rows, log)
        except Exception as err:  # a failed setup is a failed row, not a crashed bench
            rows.append({"setup": "K", "model": on, "base": base, "workload": "cache", "stream": "setup",
                         "cache": "on", "round": 0, "concurrency": args.cache_concurrency, "requests": 0,
                         "throughput": 0.0, "errors": 1, "first_error": f"{type(err).__name__}: {err}"[:300]})
            log(f"(K) {base}: {rows[-1]['first_error']}")
        finally:
            for name in registered:
                manage.unregister(name)
            for name in (off, on):
                if os.path.exists(os.path.join(store, f"{name}.mar")):
                    os.remove(os.path.join(store, f"{name}.mar"))
            shutil.rmtree(scratch, ignore_errors=True)


def cache_points(server: TorchServe, args, base: str, kind: str, names: Dict[str, str], workloads: Dict[str, dict],
                 client: TorchServeClient, rows: List[dict], log) -> None:
    workload_name = kinds.kind(kind).bench_workload
    workload = workloads[workload_name]
    checks = {side: answer_check(client, name, workload_name, workload, kind)
              for side, name in names.items()}
    for side, name in names.items():  # warm-up: the lone input, which no stream sends again
        with open(workload["path"], "rb") as f:
            cache_bench.run_stream(client, name, workload["content_type"],
                                   cache_bench.Stream([f.read()], [0] * 2 * args.cache_concurrency),
                                   args.cache_concurrency, checks[side])
    # the warm-up's counts in before the first point reads its "before"
    cache_bench.settled_counts(client, names["on"], 2 * args.cache_concurrency)
    salt = 0
    for stream_index, (stream_name, share) in enumerate(cache_bench.STREAMS.items()):
        for round_index in range(args.cache_rounds):
            for side in (("off", "on") if round_index % 2 == 0 else ("on", "off")):
                salt += 1  # new inputs for every point: nothing an earlier point stored can hit
                if kinds.kind(kind).model_input.takes_photos:
                    new = cache_bench.photo_variant(Image.open(workload["path"]).convert("RGB"), salt)
                else:
                    with open(workload["path"], encoding="utf-8") as f:
                        new = cache_bench.text_variant(f.read(), salt)
                # off and on of a round: the same order of new and repeated inputs (the seed), new inputs
                stream = cache_bench.make_stream(args.cache_requests, share, new, seed=100 * stream_index + round_index)
                name = names[side]
                before = cache_bench.cache_counts(client, name) if side == "on" else (0, 0)
                cpu = server_cpu_seconds(server)
                result = cache_bench.run_stream(client, name, workload["content_type"], stream, args.cache_concurrency,
                                                checks[side])
                row = dict(result, setup="K", model=name, base=base, workload=f"{workload_name} {stream_name}",
                           stream=stream_name, cache=side, round=round_index + 1,
                           concurrency=args.cache_concurrency, check=checks[side].describe() + " (every answer)",
                           server_cores=(server_cpu_seconds(server) - cpu) / result["seconds"])
                if side == "on":
                    hits, misses = cache_bench.settled_counts(client, name, sum(before) + len(stream.order))
                    row.update(hits=hits - before[0], misses=misses - before[1])
                    looked = row["hits"] + row["misses"]
                    row["hit_ratio"] = row["hits"] / looked if looked else None
                rows.append(row)
                log(f"(K) {name} {stream_name} round {round_index + 1}: {row['throughput']:.1f} req/s, "
                    f"p99 {row['p99_ms']:.0f} ms, {row['errors']} failed"
                    + (f", hit ratio {row['hit_ratio']:.1%}" if row.get("hit_ratio") is not None else ""))
