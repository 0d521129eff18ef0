"""make bench's run (scripts/bench.py is its command): stock TorchServe vs this package vs every serving format
vs the job in process vs a peer.

One run, one machine, side by side, so that the ratios mean something even when absolute times drift.
Every model comes from its declaration (models/<name>/model.yaml); its kind picks its inputs
(image-classifier: JPEGs; text kinds: texts).
  (A) stock TorchServe: its `image_classifier` handler serving the plainly scripted image model with
      the same real weights (the TorchServe README recipe; needs captum), 1 worker, batch 8, 10 ms;
  (A2) the same stock archive in (B)'s worker layout (the declaration's workers, batch size and delay):
      like for like with (B). (A), (A2) and (B) run interleaved, point by point for each input
      (benchkit.plan), so that the machine's drift hits them alike;
  (B) this package's archives (model_store/, as `make archives` built them): the served models and the
      declared variants (e.g. minilm_topics_int8);
  (C) the file (B)'s archive serves, loaded as its worker loads it, at (B)'s batch size, with no HTTP
      and no decoding: the ceiling. Best of one process on all cores and one single-threaded process
      per core, measured right after (B)'s points for the same input;
  (P) (B)'s image archive with the model swapped for one that returns zeros, at the top concurrency:
      what TorchServe, decoding, resizing and answering cost without the model (B <= 1/(1/P + 1/C));
  (F) formats: for each served model, variant archives built with tskit into build/bench/ in every
      format it can give (torchscript, onnx, aoti; int8: onnx for image classifiers, the declared or a
      torchscript one for text classifiers), served by the same server with the declaration's workers
      and batching, at the top concurrency (rounds in alternating order), with their build time and
      their AGREEMENT with the fp32 TorchScript variant, from the served answers: top-1 agreement and
      largest probability change on >= 100 real photos (image classifiers) or the 48 labelled headlines
      (text classifier), smallest cosine for embeddings. The variant to serve: the fastest that keeps
      top-1 agreement (embeddings: cosine) >= 99%;
  (J) the whole job in process for the variant served (the declaration's format and precision; the chosen
      one when that is not in the run): decode + preprocess + model (+ top-k) at the same batch size, best
      of 1 process x 2 threads and 2 processes x 1 thread; on the main input, and for a text model on every
      text length (B) measured (the per-length targets);
  (L) a peer: LitServe serving the same file with the same batch size, batch timeout and workers,
      decoding with the same handler modules (JSON bodies: LitServe's way), beside the same variant on
      TorchServe with the same JSON bodies.
(A), (B), (P) and (F) run in one TorchServe started for the bench (own ports, working dir and TMPDIR),
loaded with wrk (compiled; a Python client when wrk is missing). Every load point checks its answers
(benchkit.checks): status 200 for each, and every 10th answer's top-1 label and top-k length (embeddings:
cosine with the lone answer) against an answer checked first; a wrong answer or any exception counts as
a failed request, and the answer-check table reports each row's checked, wrong and first failure.
  (G) every served text generator: streams at 1, 4, 16 beside the same weights in process and eager
      `generate`, interference and memory (benchkit.bench_generation; generation.md). --generation-only: (G) alone.
  (V) every served image model: a 10 s 640x480 clip, every frame, at 1 and 4 videos at once beside the archive's
      handler in process (benchkit.bench_video; video.md). --video-only: (V) alone.
  (K) (a tiny one in --quick; --no-cache skips it, --cache-only runs it alone): the response cache, cache off vs on
      (a tskit.respec copy with handler.cacheEntries) on a stream with ~30% repeated inputs and on an
      all-unique one, interleaved (off, on, on, off), every answer checked, hit ratio from the server's
      CacheHits / CacheMisses metrics (benchkit.cache_bench).
The report opens with the host (CPU model, cores, the CPU flags of interest: optimize_choice.host_cpu)
and has a Targets section (benchkit.targets): each target met, MISSED or not judged, with its reason.
Writes results/bench/<time>/ {results.json, table.md, bench.png}; prints the tables.
"""

import argparse
import json
import os
import shutil
import tempfile
import time
from typing import Dict, List

from tqdm import tqdm

from benchkit import cache_bench, overload, targets
from benchkit.optimize_choice import host_cpu
from benchkit.workloads import MAIN_WORKLOAD, WORKLOAD_KIND, load_url, make_inputs
from benchkit.checks import check_table, failed_rows
from benchkit.plan import interleaved
from benchkit.bench_servers import bench_server, build_stock_archive, declared, kind_of
from benchkit.bench_served import served_section
from benchkit.bench_cache import CACHE_KINDS, cache_section
from benchkit.bench_formats import formats_section
from benchkit.bench_generation import generation_section
from benchkit.bench_video import video_section
from benchkit.bench_report import formats_table, plot, ratios, table
from tskit.admission import shared_note
from tskit.load import wrk_available
from tskit.kserve_server import KServeEngine, one_shot_models
from tskit.server import REPO, free_ports, private_server
from tskit.kinds import KINDS


def main_sections(args, groups, chosen_inputs, kinds, workloads, setups, rows: List[dict], summaries: List[dict],
                  log) -> None:
    """(A)/(A2)/(B)/(P)/(C), the formats and (K) on one bench server, always stopped.
    setups: the models that get (A)/(A2), and those that get (P)."""
    workdir = tempfile.mkdtemp(prefix="bench-server-")
    server = bench_server(workdir, args.models, *setups)
    log(f"load generator {args.generator}; server in {workdir}; results in {args.out}")
    server.start()
    try:
        server.wait_ready(timeout=600)
        if not args.cache_only:
            served_section(server, args, groups, chosen_inputs, kinds, rows, log)
        if args.format_models and not args.cache_only:
            summaries += formats_section(server, args, workloads, rows, log)
        if args.cache:
            cache_section(server, args, workloads, rows, log)
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


# ---- (O): overload ------------------------------------------------------------------------------------
def overload_section(args, workloads: Dict[str, dict], log) -> List[dict]:
    """(O) on servers of its own: ours (the repo's config), the KServe engine on the same archives (--no-engine
    skips it) and, for image models, stock TorchServe's defaults."""
    decls = declared()
    models = [m for m in args.overload_models if decls[m].kind in MAIN_WORKLOAD]
    kinds = {m: decls[m].kind for m in models}
    ours_dir, stock_dir = tempfile.mkdtemp(prefix="bench-overload-"), tempfile.mkdtemp(prefix="bench-stock-")
    stock_models = [] if args.no_stock else [m for m in models if KINDS[kinds[m]].stock_handler]
    os.makedirs(os.path.join(stock_dir, "model_store"), exist_ok=True)
    stock_names = {m: build_stock_archive(m, os.path.join(stock_dir, "model_store"), os.path.join(stock_dir, "stock", m))
                   for m in stock_models}
    # every served model loaded, as `make serve` loads them: their queues share one heap budget (tskit.admission),
    # so the points measure the models' queues as they are with the others declared beside them
    loaded = sorted(set(models) | {n for n, d in decls.items() if d.serve})
    ours = private_server(ours_dir, load_models=",".join(f"{m}.mar" for m in loaded))
    stock = private_server(stock_dir, **overload.stock_config(stock_dir),
                           load_models=",".join(f"{n}.mar" for n in stock_names.values())) if stock_names else None
    load = lambda url, token, workload, c, seconds, check: load_url(url, token, workload, c, seconds, args.generator, check)
    engine, engine_rows = None, []
    try:
        for server in filter(None, (ours, stock)):
            started = time.monotonic()
            server.start()
            server.wait_ready(timeout=600)
            if server is ours:
                ready_s = time.monotonic() - started
        if not args.no_engine:  # the models this (O) loads (--quick: the image model alone: less memory)
            engine, engine_rows = start_engine(ours, models, ready_s, log)
        timeout = {m: int(decls[m].torchserve.get("responseTimeout", 120)) for m in models}
        sides = {m: [overload.torchserve_side("ours", ours, m, m, timeout[m])]
                 + ([overload.engine_side(engine, m, timeout[m])] if engine else [])
                 + ([overload.torchserve_side("stock", stock, stock_names[m], m, 120)] if m in stock_names else [])
                 for m in models}
        # what the targets depend on: how much of its stated wait each queue holds beside the other models
        queues = shared_note(ours.props, [decls[m] for m in loaded])
        log(f"O queues: {queues}")
        rows = overload.run(sides, workloads, {m: MAIN_WORKLOAD[kinds[m]] for m in models}, kinds,
                            args.tuned_concurrency, args.overload_seconds, load, args.overload_factors, log,
                            args.overload_rounds)
        if engine:  # memory after the load, the larger of idle and loaded
            one_shot = one_shot_models(models)
            for row, pids in zip(engine_rows, (overload.torchserve_pids(ours, one_shot), [engine.pid()])):
                row["rss_mb"] = max(row["rss_mb"], overload.rss_mb(pids))
        return [dict(row, queues=queues) for row in rows] + engine_rows
    finally:
        if engine:
            engine.stop()
        for server in filter(None, (ours, stock)):
            server.stop()
        shutil.rmtree(ours_dir, ignore_errors=True)
        shutil.rmtree(stock_dir, ignore_errors=True)


def start_engine(ours, models: List[str], torchserve_ready_s: float, log):
    """The KServe engine serving `models` from the same archives with the same key as `ours` (its own ports), and
    the "E" rows: time to ready and memory of each engine for those models (TorchServe: its frontend and their
    workers)."""
    one_shot = one_shot_models(models)
    engine = KServeEngine(os.path.join(REPO, "model_store"), ours.workdir, *free_ports(2),
                          max_request_size=int(ours.props["max_request_size"]))
    engine.start(one_shot)
    ready_s = engine.wait_ready(one_shot, timeout=300)
    rows = [{"setup": "E", "server": "ours", "ready_s": torchserve_ready_s, "models": one_shot,
             "rss_mb": overload.rss_mb(overload.torchserve_pids(ours, one_shot))},
            {"setup": "E", "server": "kserve", "ready_s": ready_s, "models": one_shot,
             "rss_mb": overload.rss_mb([engine.pid()])}]
    log(f"O engines: TorchServe ready in {torchserve_ready_s:.1f} s, {rows[0]['rss_mb']:.0f} MB for {one_shot}; "
        f"KServe engine ready in {ready_s:.1f} s, {rows[1]['rss_mb']:.0f} MB")
    return engine, rows


# ---- main --------------------------------------------------------------------------------------------
def settle(args, decls: Dict[str, object], served: List[str]) -> argparse.Namespace:
    """What --quick, --cache-only and --overload-only imply, on the command's options (scripts/bench.py)."""
    args.cache = not args.no_cache or args.cache_only
    if args.cache_models is None:
        args.cache_models = [next(n for n in served if decls[n].kind == k)
                             for k in CACHE_KINDS if any(decls[n].kind == k for n in served)]
    if args.quick:
        # a tiny (K): the image model, 48 requests per point, one (off, on) pair per stream
        args.cache_concurrency, args.cache_rounds = 4, 1
        args.cache_requests = min(args.cache_requests, 48)
        args.cache_models = [m for m in args.cache_models if KINDS[decls[m].kind].model_input.takes_photos][:1]
        image_models = [n for n in served if KINDS[decls[n].kind].stock_handler] or served[:1]
        args.models, args.concurrency, args.seconds, args.warmup = image_models[:1], [4], 2, 0.5
        args.no_stock, args.workloads = True, ["jpeg_640x480"]
        args.format_models = args.format_models or image_models[:1]
        args.formats, args.no_int8, args.format_rounds = args.formats or ["torchscript", "onnx"], True, 1
        args.agreement_images = min(args.agreement_images, 24)
    args.overload_models = args.overload_models or served
    if args.quick:  # a tiny (O): the image model at x1 and x4, ours and the KServe engine
        args.overload_models, args.overload_factors, args.overload_seconds = args.models[:1], [1, 4], 2
        args.overload_rounds = 1
    if args.cache_only or args.overload_only or args.generation_only or args.video_only:
        args.models, args.no_formats, args.cache = [], True, args.cache_only
    args.no_overload = args.no_overload or args.generation_only or args.video_only
    args.no_generation = args.no_generation or args.quick or args.cache_only or args.overload_only or args.video_only
    args.no_video = args.no_video or args.quick or args.cache_only or args.overload_only or args.generation_only
    args.format_models = [] if args.no_formats else [m for m in (args.format_models or served)
                                                     if decls[m].kind in WORKLOAD_KIND]
    args.generator = ("wrk" if wrk_available() else "python") if args.generator == "auto" else args.generator
    return args


def target_models(decls: Dict[str, object]) -> Dict[str, str]:
    """The models the targets cover: every served image and text model (model -> kind), in this run or not."""
    return {n: d.kind for n, d in decls.items() if d.serve and KINDS[d.kind].bench_workload}


def write_reports(args, rows: List[dict], summaries: List[dict], overload_rows: List[dict], elapsed: float,
                  host: dict, covered: Dict[str, str]) -> None:
    """results.json, table.md and bench.png in args.out; the host, the tables and the targets printed."""
    report = table(rows)
    judged = targets.judge(rows, summaries, host, max(args.concurrency), covered)
    targets_report = "\n".join(f"- {targets.line(t)}" for t in judged)
    checks_report = check_table(rows)
    formats_report = formats_table(summaries) if summaries else ""
    summary = ratios(rows, max(args.concurrency), summaries)
    cache_rows = [r for r in rows if r["setup"] == "K"]
    cache_report = cache_bench.cache_rows_table(cache_rows) if cache_rows else ""
    summary += cache_bench.cache_summary(cache_rows)
    overload_report = (overload.table(overload_rows) + "\n\n" + "\n".join(
        f"- {line}" for line in overload.verdicts(overload_rows) + overload.engine_verdicts(overload_rows))
                       + "".join(f"\n- queues: {q}" for q in sorted({r["queues"] for r in overload_rows if "queues" in r}))
                       if overload_rows else "")
    with open(os.path.join(args.out, "results.json"), "w", encoding="utf-8") as f:
        json.dump({"host": host, "targets": judged, "rows": rows, "overload": overload_rows, "formats": summaries,
                   "ratios": summary, "generator": args.generator,
                   "elapsed_s": round(elapsed, 1), "args": vars(args)}, f, indent=1, default=str)
    with open(os.path.join(args.out, "table.md"), "w", encoding="utf-8") as f:
        f.write(targets.host_line(host) + "\n\n" + report + "\n\n" + (formats_report + "\n\n" if formats_report else "")
                + ("## Response cache\n\n" + cache_report + "\n\n" if cache_report else "")
                + ("## Overload\n\n" + overload_report + "\n\n" if overload_report else "")
                + "## Answer checks\n\n" + checks_report + "\n\n"
                + "\n".join(f"- {line}" for line in summary) + "\n\n## Targets\n\n" + targets_report
                + f"\n\nbench took {elapsed:.0f} s\n")
    plot(rows, os.path.join(args.out, "bench.png"), summaries)
    print(targets.host_line(host))
    if rows:
        print(report)
    if formats_report:
        print("\n" + formats_report)
    if cache_report:
        print("\n" + cache_report)
    if overload_report:
        print("\n## Overload (O)\n" + overload_report)
    print("\n".join(summary))
    if rows:
        print("\n" + checks_report)
    print("\n## Targets\n" + targets_report)
    print(f"bench took {elapsed:.0f} s; written: {args.out}/table.md, bench.png, results.json")


def run(args) -> int:
    """The whole bench on the command's options (settled: see `settle`): the sections, then the report; 1 when
    a load point of this package or the overload section failed."""
    decls = declared()
    os.makedirs(args.out, exist_ok=True)
    started = time.monotonic()
    host = host_cpu()

    def log(message: str) -> None:
        tqdm.write(f"[{time.monotonic() - started:6.0f} s] {message}")

    log(targets.host_line(host))
    workloads = make_inputs(os.path.join(args.out, "inputs"))
    chosen_inputs = {k: v for k, v in workloads.items() if not v.get("json")}
    if args.workloads:
        chosen_inputs = {k: v for k, v in chosen_inputs.items() if k in args.workloads}
    kinds = {m: kind_of(m, decls) for m in args.models}
    unknown = [m for m in args.models if kinds[m] not in WORKLOAD_KIND]
    if unknown:  # a kind the bench has no inputs or answer checks for: said, not silently measured
        log(f"skipped (no bench inputs for their kind): {', '.join(f'{m} ({kinds[m]})' for m in unknown)}")
        args.models = [m for m in args.models if m not in unknown]
        kinds = {m: kinds[m] for m in args.models}
    image_models = [m for m in args.models if KINDS[kinds[m]].stock_handler and decls.get(m) and decls[m].serve]
    stock_for = [] if args.no_stock else image_models
    pipeline_for = [] if args.no_raw else image_models
    inputs = {name: w["kind"] for name, w in chosen_inputs.items()}
    groups = interleaved(args.models, inputs, {m: WORKLOAD_KIND[k] for m, k in kinds.items()}, args.concurrency,
                         stock_for, pipeline_for)

    rows: List[dict] = []
    summaries: List[dict] = []
    if args.models or args.cache or args.format_models:
        main_sections(args, groups, chosen_inputs, kinds, workloads, (stock_for, pipeline_for), rows, summaries, log)
    overload_rows = [] if args.no_overload else overload_section(args, workloads, log)
    if not args.no_generation:  # (G): its own report, generation.md (benchkit.bench_generation)
        generation_section(args.out, args.generation_concurrency, args.generation_streams, log,
                           peer=not args.no_llamacpp, engine=not args.no_engine)
    if not args.no_video:  # (V): its own report, video.json and docs/video.md (benchkit.bench_video)
        video_section(args.out, args.video_concurrency, args.video_seconds, log)

    write_reports(args, rows, summaries, overload_rows, time.monotonic() - started, host, target_models(decls))
    # a variant that does not build (e.g. AOTInductor on some model) is reported, not a failure of the bench
    broken = [r for r in overload_rows if r["setup"] == "O" and r["server"] in ("ours", "kserve")
              and (r["restarts"] or r["other_errors"] or r["refused_bad"])]
    return 1 if failed_rows(rows, stock_stalls=False) or broken else 0

