"""make bench: stock TorchServe vs this package vs every serving format vs the job in process vs a peer.

A door over benchkit.bench (the sections in order and the report; its docstring says what each section
measures and how every answer is checked):

    python scripts/bench.py [--seconds 8] [--concurrency 1 4 16] [--quick] [--no-formats] [--no-peer] [--no-cache] [--cache-only]

Writes results/bench/<time>/ {results.json, table.md, bench.png}; prints the tables.
"""

import argparse
import os
import sys
import time
from typing import Dict

from benchkit import bench
from benchkit.bench_servers import BENCH_BUILD, declared
from benchkit.overload import FACTORS
from benchkit.variants import FORMAT_ORDER
from tskit.server import REPO


def build_parser(decls: Dict[str, object]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--warmup", type=float, default=2)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--models", nargs="+", default=list(decls),
                        help="(B) archives of model_store/ (default: every declared model)")
    parser.add_argument("--no-stock", action="store_true", help="skip (A)")
    parser.add_argument("--no-raw", action="store_true", help="skip (C) and (P)")
    parser.add_argument("--workloads", nargs="+", help="only these inputs for (A), (B), (P) (e.g. jpeg_640x480 text_short)")
    parser.add_argument("--generator", choices=["auto", "wrk", "python"], default="auto")
    parser.add_argument("--out", default=os.path.join(REPO, "results", "bench", time.strftime("%Y%m%d-%H%M%S")))
    parser.add_argument("--no-formats", action="store_true", help="skip (F), (J) and (L)")
    parser.add_argument("--format-models", nargs="+", help="served models whose formats are compared (default: all served)")
    parser.add_argument("--formats", nargs="+", choices=list(FORMAT_ORDER), help="default: every format")
    parser.add_argument("--no-int8", action="store_true", help="no int8 variant in (F)")
    parser.add_argument("--format-rounds", type=int, default=2, help="load points per variant, in alternating order")
    parser.add_argument("--agreement-images", type=int, default=100, help="real photos (views) for image agreement")
    parser.add_argument("--min-agreement", type=float, default=0.99)
    parser.add_argument("--build-root", default=BENCH_BUILD, help="where (F)'s variant archives are built and reused")
    parser.add_argument("--build-timeout", type=float, default=900)
    parser.add_argument("--rebuild", action="store_true", help="rebuild (F)'s variants even when unchanged")
    parser.add_argument("--no-inprocess", action="store_true", help="skip (J)")
    parser.add_argument("--no-peer", action="store_true", help="skip (L), the LitServe peer")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: the first served image model, one input, concurrency 4, 2 s, no (A) or (A2) "
                             "(the stock handler's 2 OpenMP threads per worker collapse on a busy 2-core machine: a "
                             "2 s point can end before its first answer); formats torchscript and onnx, 1 round, "
                             "(J) and (L)")
    parser.add_argument("--no-cache", action="store_true",
                        help="skip (K): the response cache, off vs on, on a stream with ~30%% repeated inputs and an "
                             "all-unique one (benchkit.cache_bench)")
    parser.add_argument("--cache-only", action="store_true", help="(K) alone: no (A)/(B)/(P)/(C), no formats")
    parser.add_argument("--no-overload", action="store_true", help="skip (O), the overload section")
    parser.add_argument("--no-engine", action="store_true",
                        help="(O) without the KServe engine beside TorchServe (docs/engines.md)")
    parser.add_argument("--overload-only", action="store_true", help="(O) alone")
    parser.add_argument("--no-generation", action="store_true", help="skip (G), the text generators' section")
    parser.add_argument("--generation-only", action="store_true", help="(G) alone")
    parser.add_argument("--generation-concurrency", type=int, nargs="+", default=[1, 4, 16],
                        help="(G)'s concurrent streams and (J)'s batches")
    parser.add_argument("--generation-streams", type=int, default=1000,
                        help="(M): short streams sent (a third dropped) before the memory is read again")
    parser.add_argument("--no-llamacpp", action="store_true",
                        help="skip (P), llama.cpp's server (built from source on first use, ~15 minutes)")
    parser.add_argument("--no-video", action="store_true", help="skip (V), videos to the image models")
    parser.add_argument("--video-only", action="store_true", help="(V) alone")
    parser.add_argument("--video-concurrency", type=int, nargs="+", default=[1, 4], help="(V)'s videos at once")
    parser.add_argument("--video-seconds", type=float, default=20, help="(V): seconds per point and for (J)")
    parser.add_argument("--overload-models", nargs="+", help="models loaded in (O) (default: every served model)")
    parser.add_argument("--overload-seconds", type=float, default=10)
    parser.add_argument("--overload-factors", type=int, nargs="+", default=list(FACTORS))
    parser.add_argument("--overload-rounds", type=int, default=2, help="passes over the factors, alternating direction")
    parser.add_argument("--tuned-concurrency", type=int, default=16, help="the concurrency the models were tuned at")
    parser.add_argument("--cache-models", nargs="+",
                        help="default: the first served image classifier and the first served text classifier")
    parser.add_argument("--cache-requests", type=int, default=400, help="requests per (K) point")
    parser.add_argument("--cache-concurrency", type=int, default=8)
    parser.add_argument("--cache-rounds", type=int, default=2, help="(off, on) pairs per stream, alternating order")
    return parser


def main(argv=None) -> int:
    decls = declared()
    served = [d.name for d in decls.values() if d.serve]
    args = bench.settle(build_parser(decls).parse_args(argv), decls, served)
    return bench.run(args)


if __name__ == "__main__":
    sys.exit(main())
