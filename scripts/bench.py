"""make bench: stock TorchServe vs this package vs every serving format vs the job in process vs a peer.

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
  (J) the whole job in process for that variant: decode + preprocess + model (+ top-k) at the same batch
      size, best of 1 process x 2 threads and 2 processes x 1 thread;
  (L) a peer: LitServe serving the same file with the same batch size, batch timeout and workers,
      decoding with the same handler modules (JSON bodies: LitServe's way), beside the same variant on
      TorchServe with the same JSON bodies.
(A), (B), (P) and (F) run in one TorchServe started for the bench (own ports, working dir and TMPDIR),
loaded with wrk (compiled; a Python client when wrk is missing). Every load point checks its answers
(benchkit.checks): status 200 for each, and every 10th answer's top-1 label and top-k length (embeddings:
cosine with the lone answer) against an answer checked first; a wrong answer or any exception counts as
a failed request, and the answer-check table reports each row's checked, wrong and first failure.
  (K) (a tiny one in --quick; --no-cache skips it, --cache-only runs it alone): the response cache, cache off vs on
      (a tskit.respec copy with handler.cacheEntries) on a stream with ~30% repeated inputs and on an
      all-unique one, interleaved (off, on, on, off), every answer checked, hit ratio from the server's
      CacheHits / CacheMisses metrics (benchkit.cache_bench).
Writes results/bench/<time>/ {results.json, table.md, bench.png}; prints the tables.

    python scripts/bench.py [--seconds 8] [--concurrency 1 4 16] [--quick] [--no-formats] [--no-peer] [--no-cache] [--cache-only]
"""

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from typing import Callable, Dict, List, Optional

import psutil
import torch
import yaml
from PIL import Image
from tqdm import tqdm

from benchkit import agreement, cache_bench, inprocess, overload, variants
from benchkit.archives import copy_archive, unpack
from benchkit.workloads import MAIN_WORKLOAD, TEXTS, WORKLOAD_KIND, load_point, load_url, make_inputs
from benchkit.checks import answer_check, check_table, failed_rows
from benchkit.plan import PIPELINE_SUFFIX, STOCK_PREFIX, base_of, interleaved, stock_b_layout_name
from benchkit.litserve_peer import LitServePeer
from load_generators import AnswerCheck, LoadResult, wrk_available
from tskit import declaration as declarations
from tskit.respec import with_settings
from tskit.client import ClientError
from ts_server import REPO, TorchServe, free_ports, private_server

STORE = os.path.join(REPO, "model_store")
BENCH_BUILD = os.path.join(REPO, "build", "bench")

PIPELINE = "mobilenet_v2_without_model"


# ---- declarations ---------------------------------------------------------------------------------
def declared() -> Dict[str, declarations.Declaration]:
    return {d.name: d for d in declarations.declared()}


def kind_of(model: str, decls: Dict[str, declarations.Declaration]) -> str:
    base = base_of(model)
    return decls[base].kind if base in decls else unpack_kind(base)


def unpack_kind(model: str) -> str:
    unpacked = unpack(os.path.join(STORE, f"{model}.mar"))
    unpacked.cleanup()
    return unpacked.kind


# ---- the bench server -------------------------------------------------------------------------------
def free_port() -> int:
    return free_ports(1)[0]


def build_stock_archive(model: str, store: str, work: str) -> str:
    """The stock recipe for an image classifier: torch-model-archiver --handler image_classifier on the
    plainly scripted model (its declared source, real weights) and its labels."""
    from tskit.formats import to_torchscript
    from tskit.sources import load_source

    decl = declarations.load(model)
    loaded = load_source(decl.source, decl.kind, decl.folder)
    os.makedirs(work, exist_ok=True)
    model_file, labels_file = os.path.join(work, "model.pt"), os.path.join(work, "index_to_name.json")
    settings = decl.settings()
    example = (torch.randn(1, 3, settings.cropSize, settings.cropSize),)
    to_torchscript(loaded.module.eval(), decl.kind, example).save(model_file)
    with open(labels_file, "w", encoding="utf-8") as f:
        json.dump({str(i): name for i, name in enumerate(loaded.labels or [])}, f)
    name = STOCK_PREFIX + model
    subprocess.run([os.path.join(os.path.dirname(sys.executable), "torch-model-archiver"), "--force",
                    "--model-name", name, "--version", "1.0", "--serialized-file", model_file,
                    "--handler", "image_classifier", "--extra-files", labels_file,
                    "--export-path", store], check=True, capture_output=True)
    return name


class _NoModel(torch.nn.Module):
    """Logits of zeros: what is left of (B) when the model costs nothing."""

    def __init__(self, classes: int):
        super().__init__()
        self.classes = classes

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.zeros(images.shape[0], self.classes)


def build_pipeline_archive(model: str, store: str) -> str:
    """(P): model_store/<model>.mar byte for byte, but for its model file (a TorchScript _NoModel, whatever
    the declared format: model-config.yaml says torchscript) and its name: TorchServe, decode, resize,
    collate, postprocess and JSON as (B) runs them, without the model."""
    with zipfile.ZipFile(os.path.join(STORE, f"{model}.mar")) as mar:
        manifest = json.loads(mar.read("MAR-INF/MANIFEST.json"))["model"]
        classes = len(json.loads(mar.read("index_to_name.json")))
    no_model = io.BytesIO()
    torch.jit.save(torch.jit.script(_NoModel(classes)), no_model)

    def torchscript_config(data: bytes) -> bytes:
        config = yaml.safe_load(data)
        config["handler"]["modelFormat"] = "torchscript"
        return yaml.safe_dump(config, sort_keys=False).encode()

    name = model + PIPELINE_SUFFIX
    copy_archive(model, store, name, {manifest["serializedFile"]: lambda _: no_model.getvalue(),
                                      manifest["configFile"]: torchscript_config})
    return name


def bench_server(workdir: str, models: List[str], stock_for: List[str], pipeline_for: List[str]) -> TorchServe:
    """One TorchServe: (B)'s archives, (A) stock archives in the stock recipe's layout, the same stock
    archives again as (A2) in (B)'s layout, and (P) pipeline archives in (B)'s; (F) variants are
    registered later."""
    store = os.path.join(workdir, "model_store")
    os.makedirs(store, exist_ok=True)
    decls = declared()
    settings = {}
    for name in models:
        shutil.copy(os.path.join(STORE, f"{name}.mar"), store)
        settings[name] = {"1.0": dict(decls[name].registration(), marName=f"{name}.mar")}
    for model in stock_for:
        name = build_stock_archive(model, store, os.path.join(workdir, "stock", model))
        # the stock route as measured in ../shared/notes-performance.md: 1 worker, batch 8, 10 ms.
        # (Our 2-worker setting may hurt it: the stock handler leaves torch at one thread per core
        # in each worker, and 2 x 2 OpenMP threads on 2 cores collapse; (A2) measures exactly that.)
        settings[name] = {"1.0": {"marName": f"{name}.mar", "minWorkers": 1, "maxWorkers": 1,
                                  "batchSize": 8, "maxBatchDelay": 10, "responseTimeout": 60}}
        # (A2): like for like with (B): the declaration's workers, batch size and delay (threads stay
        # the stock handler's own: it sets none)
        like_b = stock_b_layout_name(model)
        copy_archive(name, store, like_b, source_store=store)
        settings[like_b] = {"1.0": dict(decls[model].registration(), marName=f"{like_b}.mar")}
    for model in pipeline_for:
        name = build_pipeline_archive(model, store)
        settings[name] = {"1.0": dict(decls[model].registration(), marName=f"{name}.mar")}
    return private_server(workdir, model_store=store, load_models=",".join(f"{m}.mar" for m in settings),
                          models=json.dumps(settings))


def server_cpu_seconds(server: TorchServe) -> float:
    """CPU time of the frontend and all its worker processes so far."""
    try:
        root = psutil.Process(server.pid())
        total = 0.0
        for proc in [root] + root.children(recursive=True):
            try:
                times = proc.cpu_times()
                total += times.user + times.system
            except psutil.Error:
                pass
        return total
    except (psutil.Error, TypeError, ValueError):
        return float("nan")


def _run(run: Callable[[], LoadResult]) -> dict:
    try:
        return run().as_dict()
    except Exception as err:  # the generator itself failed: a failed point, not a crash
        return {"errors": 1, "throughput": 0.0, "requests": 0, "first_error": f"{type(err).__name__}: {err}"[:300]}


def measure(rows: List[dict], row: dict, run: Callable[[], LoadResult], server: Optional[TorchServe] = None,
            check: Optional[AnswerCheck] = None, warmup: Optional[Callable[[], LoadResult]] = None) -> dict:
    """One load point: its result as a row. The warm-up's answers are checked too: its failed requests
    are kept in the row (warmup_errors), never dropped with its timings."""
    warm = _run(warmup) if warmup else {}
    cpu_before, wall_before = (server_cpu_seconds(server) if server else float("nan")), time.monotonic()
    result = _run(run)
    wall = time.monotonic() - wall_before
    if not result.get("requests"):  # nothing answered within the point: a failed point, not 0 req/s
        result["errors"] = max(1, result.get("errors", 0))
        result["first_error"] = result.get("first_error") or "no request was answered within the load point"
        result["stalled"] = True
    row = dict(result, **row)
    row["check"] = check.describe() if check else "status 200"
    if warmup:
        row["warmup_errors"] = warm.get("errors", 0)
        if warm.get("errors") and not row.get("first_error"):
            row["first_error"] = f"warm-up: {warm.get('first_error', '')}"
    if server is not None:
        row["server_cores"] = (server_cpu_seconds(server) - cpu_before) / wall
    if "client_cpu_s" in result:
        row["client_cores"] = result["client_cpu_s"] / wall
    rows.append(row)
    return row


def checked_point(rows: List[dict], row: dict, go: Callable[[float], LoadResult], args, check: AnswerCheck,
                  server: Optional[TorchServe] = None) -> dict:
    """A warm-up of args.warmup s and a timed point of args.seconds s, both with `go(seconds)`, both
    checked with `check`: one row."""
    warmup = (lambda: go(args.warmup)) if args.warmup else None
    return measure(rows, row, lambda: go(args.seconds), server, check, warmup)


# ---- (A), (A2), (B), (P), (C) -----------------------------------------------------------------------
def served_section(server: TorchServe, args, groups, inputs: Dict[str, dict], kinds: Dict[str, str],
                   rows: List[dict], log) -> None:
    """Each group's points in benchkit.plan's interleaved order, every one checked; then (C) for that
    input, right after, so that drift between (B) and (C) stays small (the server idles meanwhile)."""
    headers = server.auth_headers("inference")
    decls = declared()
    progress = tqdm(total=sum(len(g.points) for g in groups), desc="bench", unit="point")
    for group in groups:
        workload = inputs[group.workload]
        checks = {}
        for point in group.points:
            if point.model not in checks:
                try:
                    checks[point.model] = answer_check(
                        f"{server.inference_url}/predictions/{point.model}", headers, group.workload, workload,
                        kinds[group.base], stock=point.setup in ("A", "A2"), pipeline=point.setup == "P")
                except Exception as err:  # wrong even alone: each of its points is a failed row, not timed
                    checks[point.model] = f"the lone answer is wrong: {type(err).__name__}: {err}"[:300]
            check = checks[point.model]
            what = {"setup": point.setup, "model": point.model, "workload": group.workload,
                    "concurrency": point.concurrency}
            if isinstance(check, str):
                row = dict(what, errors=1, requests=0, throughput=0.0, first_error=check, check="lone answer")
                rows.append(row)
            else:
                row = checked_point(rows, what, lambda seconds, p=point, c=check: load_point(
                    server, p.model, workload, p.concurrency, seconds, args.generator, c), args, check, server)
            progress.update(1)
            if row.get("errors") or row.get("warmup_errors"):
                log(f"{point.setup} {point.model} c={point.concurrency}: {row.get('errors')} failed requests "
                    f"(+{row.get('warmup_errors', 0)} in warm-up): {row.get('first_error')}")
            with open(os.path.join(args.out, "rows.partial.json"), "w", encoding="utf-8") as f:
                json.dump(rows, f)  # a crash later keeps what was measured
        if not args.no_raw:
            with open(workload["path"], "rb") as f:
                body = f.read()
            model = group.base
            raw = inprocess.best_rate("C", os.path.join(STORE, f"{model}.mar"), body, max(2.0, args.seconds / 2))
            rows.append(dict(raw, setup="C", model=model, workload=group.workload, concurrency=None,
                             batch=int(decls[model].torchserve.get("batchSize", 1)) if model in decls else None,
                             input="tensor_224" if kinds[model] == "image-classifier" else group.workload))
    progress.close()


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
    """(O) on servers of its own: ours (the repo's config) and, for image models, stock TorchServe's defaults."""
    decls = declared()
    models = [m for m in args.overload_models if decls[m].kind in MAIN_WORKLOAD]
    kinds = {m: decls[m].kind for m in models}
    ours_dir, stock_dir = tempfile.mkdtemp(prefix="bench-overload-"), tempfile.mkdtemp(prefix="bench-stock-")
    stock_models = [] if args.no_stock else [m for m in models if kinds[m] == "image-classifier"]
    os.makedirs(os.path.join(stock_dir, "model_store"), exist_ok=True)
    stock_names = {m: build_stock_archive(m, os.path.join(stock_dir, "model_store"), os.path.join(stock_dir, "stock", m))
                   for m in stock_models}
    ours = private_server(ours_dir, load_models=",".join(f"{m}.mar" for m in models))
    stock = private_server(stock_dir, **overload.stock_config(stock_dir),
                           load_models=",".join(f"{n}.mar" for n in stock_names.values())) if stock_names else None
    load = lambda url, token, workload, c, seconds, check: load_url(url, token, workload, c, seconds, args.generator, check)
    try:
        for server in filter(None, (ours, stock)):
            server.start()
            server.wait_ready(timeout=600)
        sides = {m: [overload.Side("ours", ours, m, m, int(decls[m].torchserve.get("responseTimeout", 120)))]
                 + ([overload.Side("stock", stock, stock_names[m], m, 120)] if m in stock_names else [])
                 for m in models}
        return overload.run(sides, workloads, {m: MAIN_WORKLOAD[kinds[m]] for m in models}, kinds,
                            args.tuned_concurrency, args.overload_seconds, load, args.overload_factors, log,
                            args.overload_rounds)
    finally:
        for server in filter(None, (ours, stock)):
            server.stop()
        shutil.rmtree(ours_dir, ignore_errors=True)
        shutil.rmtree(stock_dir, ignore_errors=True)


# ---- (K): the response cache -------------------------------------------------------------------------
CACHE_KINDS = ("image-classifier", "text-classifier")  # inputs with a known right answer for every variant


def cache_section(server: TorchServe, args, workloads: Dict[str, dict], rows: List[dict], log) -> None:
    """(K): for each model of args.cache_models, `<model>_nocache` (as built) and `<model>_cache` (a copy
    with handler.cacheEntries, tskit.respec), both registered with the declaration's layout; each stream
    of benchkit.cache_bench in rounds of (off, on) alternating with (on, off), all at one concurrency."""
    decls = declared()
    manage = Management(server)
    store = server.props["model_store"]
    headers = server.auth_headers("inference")
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
            cache_points(server, args, base, decl.kind, {"off": off, "on": on}, workloads, headers, rows, log)
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
                 headers: Dict[str, str], rows: List[dict], log) -> None:
    workload_name = "jpeg_640x480" if kind == "image-classifier" else "text_medium"
    workload = workloads[workload_name]
    checks = {side: answer_check(f"{server.inference_url}/predictions/{name}", headers, workload_name, workload, kind)
              for side, name in names.items()}
    for side, name in names.items():  # warm-up: the lone input, which no stream sends again
        with open(workload["path"], "rb") as f:
            cache_bench.run_stream(f"{server.inference_url}/predictions/{name}", headers, workload["content_type"],
                                   cache_bench.Stream([f.read()], [0] * 2 * args.cache_concurrency),
                                   args.cache_concurrency, checks[side])
    # the warm-up's counts in before the first point reads its "before"
    cache_bench.settled_counts(server.metrics_url, names["on"], 2 * args.cache_concurrency)
    salt = 0
    for stream_index, (stream_name, share) in enumerate(cache_bench.STREAMS.items()):
        for round_index in range(args.cache_rounds):
            for side in (("off", "on") if round_index % 2 == 0 else ("on", "off")):
                salt += 1  # new inputs for every point: nothing an earlier point stored can hit
                if kind == "image-classifier":
                    new = cache_bench.photo_variant(Image.open(workload["path"]).convert("RGB"), salt)
                else:
                    with open(workload["path"], encoding="utf-8") as f:
                        new = cache_bench.text_variant(f.read(), salt)
                # off and on of a round: the same order of new and repeated inputs (the seed), new inputs
                stream = cache_bench.make_stream(args.cache_requests, share, new, seed=100 * stream_index + round_index)
                name = names[side]
                before = cache_bench.cache_counts(server.metrics_url, name) if side == "on" else (0, 0)
                cpu = server_cpu_seconds(server)
                result = cache_bench.run_stream(f"{server.inference_url}/predictions/{name}", headers,
                                                workload["content_type"], stream, args.cache_concurrency, checks[side])
                row = dict(result, setup="K", model=name, base=base, workload=f"{workload_name} {stream_name}",
                           stream=stream_name, cache=side, round=round_index + 1,
                           concurrency=args.cache_concurrency, check=checks[side].describe() + " (every answer)",
                           server_cores=(server_cpu_seconds(server) - cpu) / result["seconds"])
                if side == "on":
                    hits, misses = cache_bench.settled_counts(server.metrics_url, name, sum(before) + len(stream.order))
                    row.update(hits=hits - before[0], misses=misses - before[1])
                    looked = row["hits"] + row["misses"]
                    row["hit_ratio"] = row["hits"] / looked if looked else None
                rows.append(row)
                log(f"(K) {name} {stream_name} round {round_index + 1}: {row['throughput']:.1f} req/s, "
                    f"p99 {row['p99_ms']:.0f} ms, {row['errors']} failed"
                    + (f", hit ratio {row['hit_ratio']:.1%}" if row.get("hit_ratio") is not None else ""))


# ---- (F): formats -----------------------------------------------------------------------------------
class Management:
    """(F)'s registrations through tskit.client (its tokens; its bounded, logged retries of transient
    management failures)."""

    def __init__(self, server: TorchServe):
        self.client = server.client(timeout=900)

    def register(self, name: str, decl: declarations.Declaration) -> None:
        ts = decl.torchserve
        self.client.register(f"{name}.mar", model_name=name, initial_workers=ts.get("minWorkers", 1),
                             batch_size=ts.get("batchSize", 1), max_batch_delay=ts.get("maxBatchDelay", 100),
                             response_timeout=ts.get("responseTimeout", 120))

    def unregister(self, name: str) -> None:
        """A failure is left to the caller's report, not raised (the bench's server is stopped at the end anyway)."""
        try:
            self.client.unregister_and_wait(name)
        except ClientError:
            pass


def formats_section(server: TorchServe, args, workloads: Dict[str, dict], rows: List[dict], log) -> List[dict]:
    """(F), (J) and (L) for each served model in args.format_models; returns one summary per model."""
    decls = declared()
    manage = Management(server)
    store = server.props["model_store"]
    headers = server.auth_headers("inference")
    top = max(args.concurrency)
    summaries = []
    for base in args.format_models:
        decl = decls[base]
        kind = decl.kind
        plan = variants.plan(decl, formats=args.formats, int8=not args.no_int8, all_declared=list(decls.values()))
        log(f"formats: {base}: building {', '.join(v.name for v in plan)} (reused while unchanged)")
        for variant in plan:
            started = time.monotonic()
            variants.build(variant, args.build_root, timeout_s=args.build_timeout, reuse=not args.rebuild)
            log(f"  {variant.name}: " + (variant.error or
                f"{'cached' if variant.cached else 'built'} in {time.monotonic() - started:.0f} s"))
        built = [v for v in plan if v.archive]
        workload_name = MAIN_WORKLOAD[kind]
        workload = workloads[workload_name]
        registered, checks, answers = [], {}, {}
        probes = agreement.probes(kind, args.agreement_images,
                                  {f"text_{k}": t for k, t in TEXTS.items()})
        try:
            for variant in built:
                shutil.copy(variant.archive, os.path.join(store, f"{variant.name}.mar"))
                try:
                    manage.register(variant.name, variant.declaration)
                    registered.append(variant.name)
                    url = f"{server.inference_url}/predictions/{variant.name}"
                    checks[variant.name] = answer_check(url, headers, workload_name, workload, kind)
                    answers[variant.name] = agreement.collect(url, headers, probes)
                except Exception as err:
                    variant.error = f"serving failed: {type(err).__name__}: {err}"[:300]
                    log(f"  {variant.name}: {variant.error}")
            serving = [v for v in built if v.name in checks]
            reference = next((v for v in serving if v.is_reference), None)
            results = {}
            for variant in serving:
                results[variant.name] = (agreement.compare(kind, probes, answers[reference.name], answers[variant.name])
                                         if reference else {})
            # the load points: every variant at the top concurrency, in alternating order per round
            points: Dict[str, List[dict]] = {v.name: [] for v in serving}
            for round_index in range(args.format_rounds):
                order = serving if round_index % 2 == 0 else serving[::-1]
                for variant in order:
                    row = checked_point(rows, {"setup": "F", "model": variant.name, "workload": workload_name,
                                               "concurrency": top, "round": round_index + 1,
                                               "format": variant.format, "precision": variant.precision},
                                        lambda seconds, v=variant: load_point(server, v.name, workload, top, seconds,
                                                                              args.generator, checks[v.name]),
                                        args, checks[variant.name], server)
                    points[variant.name].append(row)
            table_rows = []
            for variant in plan:
                mine = points.get(variant.name, [])
                entry = {"model": base, "variant": variant.name, "format": variant.format,
                         "precision": variant.precision, "error": variant.error, "cached": variant.cached,
                         "build_s": (variant.build or {}).get("build_s"), "build_total_s": (variant.build or {}).get("total_s"),
                         "max_abs_diff": (variant.build or {}).get("max_abs_diff"),
                         "agreement": results.get(variant.name, {}), "workload": workload_name, "concurrency": top}
                if mine:
                    entry.update(throughput=sum(r["throughput"] for r in mine) / len(mine),
                                 p99_ms=sum(r.get("p99_ms", float("nan")) for r in mine) / len(mine),
                                 errors=sum(r.get("errors", 0) for r in mine),
                                 rounds=[round(r["throughput"], 1) for r in mine])
                table_rows.append(entry)
            ref_entry = next((e for e in table_rows if e["variant"] == (reference.name if reference else None)), None)
            eligible = [e for e in table_rows if e.get("throughput") and not e.get("errors")
                        and agreement.keeps_agreement(e["agreement"], kind, args.min_agreement)]
            chosen = max(eligible, key=lambda e: e["throughput"]) if eligible else None
            for e in table_rows:
                e["speedup"] = (e["throughput"] / ref_entry["throughput"]
                                if ref_entry and ref_entry.get("throughput") and e.get("throughput") else None)
                e["chosen"] = e is chosen
            summary = {"model": base, "kind": kind, "variants": table_rows,
                       "chosen": chosen["variant"] if chosen else None,
                       "speedup": chosen["speedup"] if chosen else None}
            if chosen:
                variant = next(v for v in plan if v.name == chosen["variant"])
                summary.update(references(server, args, variant, workload_name, workloads, rows, checks, log))
            summaries.append(summary)
        finally:
            for name in registered:
                manage.unregister(name)
                try:
                    os.remove(os.path.join(store, f"{name}.mar"))
                except OSError:
                    pass
    return summaries


def references(server: TorchServe, args, variant: variants.Variant, workload_name: str, workloads: Dict[str, dict],
               rows: List[dict], checks: Dict[str, AnswerCheck], log) -> dict:
    """(J) and (L) for the chosen variant, with the same variant on TorchServe with LitServe's JSON body."""
    out = {}
    top = max(args.concurrency)
    workload = workloads[workload_name]
    json_name = f"json_{workload_name}"
    with open(workload["path"], "rb") as f:
        body = f.read()
    if not args.no_inprocess:
        log(f"  (J) {variant.name}: the whole job in process")
        try:
            best = inprocess.best_rate("J", variant.archive, body, max(2.0, args.seconds / 2))
            row = {"setup": "J", "model": variant.name, "workload": workload_name, "concurrency": None,
                   "batch": unpack_batch(variant.archive), **best}
        except Exception as err:
            row = {"setup": "J", "model": variant.name, "workload": workload_name, "throughput": 0.0, "errors": 1,
                   "first_error": f"{type(err).__name__}: {err}"[:300]}
        rows.append(row)
        out["J"] = row
    if not args.no_peer:
        json_workload = workloads[json_name]
        kind = variant.declaration.kind
        headers = server.auth_headers("inference")
        url = f"{server.inference_url}/predictions/{variant.name}"
        check = answer_check(url, headers, json_name, json_workload, kind)
        out["F_json"] = checked_point(rows, {"setup": "F", "model": variant.name, "workload": json_name,
                                             "concurrency": top},
                                      lambda seconds: load_point(server, variant.name, json_workload, top, seconds,
                                                                 args.generator, check), args, check, server)
        log(f"  (L) {variant.name}: LitServe peer")
        peer = LitServePeer(variant.archive, free_port(), os.path.join(args.out, f"litserve-{variant.name}.log"))
        try:
            peer.start()
            check = answer_check(peer.url, {}, json_name, json_workload, kind)
            out["L"] = checked_point(rows, {"setup": "L", "model": f"litserve:{variant.name}", "workload": json_name,
                                            "concurrency": top},
                                     lambda seconds: load_url(peer.url, None, json_workload, top, seconds,
                                                              args.generator, check), args, check)
        except Exception as err:
            out["L"] = {"setup": "L", "model": f"litserve:{variant.name}", "workload": json_name, "throughput": 0.0,
                        "errors": 1, "first_error": f"{type(err).__name__}: {err}"[:300]}
            rows.append(out["L"])
            log(f"  (L) failed: {out['L']['first_error']}")
        finally:
            peer.stop()
    return out


def unpack_batch(mar: str) -> int:
    unpacked = unpack(mar)
    unpacked.cleanup()
    return unpacked.batch_size


# ---- report ----------------------------------------------------------------------------------------
def fmt(value: Optional[float], digits: int = 1) -> str:
    return "" if value is None or value != value else f"{value:.{digits}f}"


def table(rows: List[dict]) -> str:
    lines = ["| setup | model | input | conc | req/s | p50 ms | p90 ms | p99 ms | errors (checked) | server CPU (cores) | client CPU (cores) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        where = r["workload"] if r.get("input", r["workload"]) == r["workload"] else f"{r['input']} (next to {r['workload']})"
        how = r.get("concurrency") or f"batch {r.get('batch')}, {r.get('layout')}"
        if r.get("round"):
            how = f"{how} (round {r['round']})"
        errors = "" if "errors" not in r else f"{r['errors']}" + (f" ({r['checked']})" if r.get("checked") is not None else "")
        lines.append(f"| {r['setup']} | {r['model']} | {where} | {how} "
                     f"| {fmt(r['throughput'])} | {fmt(r.get('p50_ms'))} | {fmt(r.get('p90_ms'))} | {fmt(r.get('p99_ms'))} "
                     f"| {errors} | {fmt(r.get('server_cores'), 2)} | {fmt(r.get('client_cores'), 2)} |")
    return "\n".join(lines)


def formats_table(summaries: List[dict]) -> str:
    lines = ["| model | variant | format | precision | build s (export / total) | req/s | p99 ms | vs torchscript "
             "| top-1 agreement | largest prob change | min cosine | accuracy | errors | serve |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for s in summaries:
        for e in s["variants"]:
            a = e["agreement"]
            build = "" if e["build_s"] is None else f"{e['build_s']:.1f} / {e['build_total_s']:.0f}" + (" (reused)" if e["cached"] else "")
            accuracy = f"{a['right']}/{a['labelled']}" if "labelled" in a else ""
            speedup = "" if e.get("speedup") is None else f"{e['speedup']:.2f}x"
            agree = "" if "top1_agreement" not in a else f"{a['top1_agreement']:.1%} of {a['probes'] - a['failed']}"
            lines.append(
                f"| {s['model']} | {e['variant']} | {e['format']} | {e['precision']} | {build} | {fmt(e.get('throughput'))} "
                f"| {fmt(e.get('p99_ms'))} | {speedup} | {agree} "
                f"| {fmt(a.get('max_prob_change'), 3)} | {fmt(a.get('min_cosine'), 5)} | {accuracy} "
                f"| {e.get('errors', '') if not e['error'] else e['error'][:120]} | {'**yes**' if e['chosen'] else ''} |")
    return "\n".join(lines)


def ratios(rows: List[dict], top_concurrency: int, summaries: Optional[List[dict]] = None) -> List[str]:
    def find(setup, model, workload, concurrency=None):
        for r in rows:
            if r["setup"] == setup and r["model"] == model and r["workload"] == workload and \
                    (concurrency is None or r.get("concurrency") == concurrency):
                return r
        return None

    out = []
    models = sorted({r["model"] for r in rows if r["setup"] == "B"})
    for model in models:
        for workload in sorted({r["workload"] for r in rows if r["setup"] == "B" and r["model"] == model}):
            b = find("B", model, workload, top_concurrency)
            c = find("C", model, workload)
            a = find("A", STOCK_PREFIX + model, workload, top_concurrency)
            a2 = find("A2", stock_b_layout_name(model), workload, top_concurrency)
            p = find("P", model + PIPELINE_SUFFIX, workload, top_concurrency)
            vision = workload.startswith("jpeg")
            label = f"{model} {workload} c={top_concurrency}"
            if a and b and a["throughput"] > 0:
                out.append(f"{label}: B/A throughput {b['throughput'] / a['throughput']:.2f}x "
                           f"(target >= 3), p99 B {b['p99_ms']:.0f} ms vs A {a['p99_ms']:.0f} ms (target: no worse)")
            if a2 and b and a2["throughput"] > 0:
                out.append(f"{label}: B/A2 (stock in B's worker layout) throughput "
                           f"{b['throughput'] / a2['throughput']:.2f}x, p99 B {b['p99_ms']:.0f} ms vs A2 "
                           f"{a2['p99_ms']:.0f} ms")
            if b and c and c["throughput"] > 0:
                out.append(f"{label}: B/C {b['throughput'] / c['throughput']:.0%} (target >= {75 if vision else 70}%)")
            if b and c and p and p["throughput"] > 0:
                # per request, (B) pays the pipeline's CPU and the model's: at best 1 / (1/P + 1/C)
                cap = 1 / (1 / p["throughput"] + 1 / c["throughput"])
                out.append(f"{label}: without the model (P) {p['throughput']:.0f} req/s, so "
                           f"(B) can reach about 1/(1/P+1/C) = {cap:.0f} req/s = {cap / c['throughput']:.0%} of (C) here; "
                           f"(B) is at {b['throughput'] / cap:.0%} of that estimate")
    for s in summaries or []:
        ref = next((e for e in s["variants"] if e["format"] == "torchscript" and e["precision"] == "fp32"), None)
        chosen = next((e for e in s["variants"] if e["chosen"]), None)
        if not chosen:
            out.append(f"{s['model']} formats: no variant kept agreement >= 99% with fp32 and answered without errors")
            continue
        line = (f"{s['model']} formats ({chosen['workload']}, c={chosen['concurrency']}): serve {chosen['variant']} "
                f"({chosen['format']} {chosen['precision']}): {chosen['throughput']:.1f} req/s, "
                f"{chosen['speedup']:.2f}x the TorchScript fp32 archive ({ref['throughput']:.1f} req/s), p99 "
                f"{chosen['p99_ms']:.0f} vs {ref['p99_ms']:.0f} ms")
        if s["kind"] == "image-classifier":
            line += " (target >= 1.3x)"
        out.append(line)
        a = find("A", STOCK_PREFIX + s["model"], chosen["workload"], top_concurrency)
        if a and a["throughput"] > 0:
            out.append(f"{s['model']}: chosen variant / A (stock) {chosen['throughput'] / a['throughput']:.2f}x")
        j = s.get("J")
        if j and j.get("throughput"):
            out.append(f"{s['model']}: chosen variant served / whole job in process (J, {j.get('layout')}, "
                       f"{j['throughput']:.1f}/s) = {chosen['throughput'] / j['throughput']:.0%}")
        f_json, peer = s.get("F_json"), s.get("L")
        if f_json and peer and peer.get("throughput"):
            out.append(f"{s['model']}: JSON bodies, TorchServe {f_json['throughput']:.1f} req/s (p99 "
                       f"{fmt(f_json.get('p99_ms'), 0)} ms) vs LitServe {peer['throughput']:.1f} req/s (p99 "
                       f"{fmt(peer.get('p99_ms'), 0)} ms): {f_json['throughput'] / peer['throughput']:.2f}x")
    return out


def plot(rows: List[dict], path: str, summaries: Optional[List[dict]] = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({(r["model"], r["workload"]) for r in rows if r["setup"] in ("A", "A2", "B")})
    workloads = sorted({w for _, w in groups})
    panels = len(workloads) + (1 if summaries else 0)
    fig, axes = plt.subplots(1, max(1, panels), figsize=(4.2 * max(1, panels), 3.8), squeeze=False)
    for ax, workload in zip(axes[0], workloads):
        for model, w in groups:
            if w != workload:
                continue
            points = sorted((r["concurrency"], r["throughput"]) for r in rows
                            if r["model"] == model and r["workload"] == w and r["setup"] in ("A", "A2", "B"))
            setup = next(r["setup"] for r in rows if r["model"] == model)
            ax.plot(*zip(*points), marker="o", label=f"{setup}: {model}")
        for r in rows:
            if r["setup"] == "C" and r["workload"] == workload:
                ax.axhline(r["throughput"], linestyle="--", color="gray")
                ax.text(1, r["throughput"], f"C: {r['model']}", fontsize=7, va="bottom")
        ax.set_title(workload, fontsize=9)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrency")
        ax.set_ylabel("req/s")
        ax.legend(fontsize=7)
    if summaries:
        ax = axes[0][-1]
        names, values = [], []
        for s in summaries:
            for e in s["variants"]:
                if e.get("throughput"):
                    names.append(e["variant"])
                    values.append(e["throughput"])
        ax.barh(names, values, color="tab:blue")
        ax.set_title("formats at the top concurrency (req/s)", fontsize=9)
        ax.tick_params(axis="y", labelsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# ---- main --------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    decls = declared()
    served = [d.name for d in decls.values() if d.serve]
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
    parser.add_argument("--formats", nargs="+", choices=list(variants.FORMAT_ORDER), help="default: every format")
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
    parser.add_argument("--overload-only", action="store_true", help="(O) alone")
    parser.add_argument("--overload-models", nargs="+", help="models loaded in (O) (default: every served model)")
    parser.add_argument("--overload-seconds", type=float, default=10)
    parser.add_argument("--overload-factors", type=int, nargs="+", default=list(overload.FACTORS))
    parser.add_argument("--overload-rounds", type=int, default=2, help="passes over the factors, alternating direction")
    parser.add_argument("--tuned-concurrency", type=int, default=16, help="the concurrency the models were tuned at")
    parser.add_argument("--cache-models", nargs="+",
                        help="default: the first served image classifier and the first served text classifier")
    parser.add_argument("--cache-requests", type=int, default=400, help="requests per (K) point")
    parser.add_argument("--cache-concurrency", type=int, default=8)
    parser.add_argument("--cache-rounds", type=int, default=2, help="(off, on) pairs per stream, alternating order")
    args = parser.parse_args(argv)
    args.cache = not args.no_cache or args.cache_only
    if args.cache_models is None:
        args.cache_models = [next(n for n in served if decls[n].kind == k)
                             for k in CACHE_KINDS if any(decls[n].kind == k for n in served)]
    if args.quick:
        # a tiny (K): the image model, 48 requests per point, one (off, on) pair per stream
        args.cache_concurrency, args.cache_rounds = 4, 1
        args.cache_requests = min(args.cache_requests, 48)
        args.cache_models = [m for m in args.cache_models if decls[m].kind == "image-classifier"][:1]
        image_models = [n for n in served if decls[n].kind == "image-classifier"] or served[:1]
        args.models, args.concurrency, args.seconds, args.warmup = image_models[:1], [4], 2, 0.5
        args.no_stock, args.workloads = True, ["jpeg_640x480"]
        args.format_models = args.format_models or image_models[:1]
        args.formats, args.no_int8, args.format_rounds = args.formats or ["torchscript", "onnx"], True, 1
        args.agreement_images = min(args.agreement_images, 24)
    args.overload_models = args.overload_models or served
    if args.quick:  # a tiny (O): the image model at x1 and x4, ours only
        args.overload_models, args.overload_factors, args.overload_seconds = args.models[:1], [1, 4], 2
        args.overload_rounds = 1
    if args.cache_only or args.overload_only:
        args.models, args.no_formats, args.cache = [], True, args.cache_only
    args.format_models = [] if args.no_formats else [m for m in (args.format_models or served)
                                                     if decls[m].kind in WORKLOAD_KIND]
    args.generator = ("wrk" if wrk_available() else "python") if args.generator == "auto" else args.generator
    os.makedirs(args.out, exist_ok=True)
    started = time.monotonic()

    def log(message: str) -> None:
        tqdm.write(f"[{time.monotonic() - started:6.0f} s] {message}")

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
    image_models = [m for m in args.models if kinds[m] == "image-classifier" and decls.get(m) and decls[m].serve]
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

    report = table(rows)
    checks_report = check_table(rows)
    formats_report = formats_table(summaries) if summaries else ""
    summary = ratios(rows, max(args.concurrency), summaries)
    cache_rows = [r for r in rows if r["setup"] == "K"]
    cache_report = cache_bench.cache_rows_table(cache_rows) if cache_rows else ""
    summary += cache_bench.cache_summary(cache_rows)
    overload_report = (overload.table(overload_rows) + "\n\n" + "\n".join(f"- {line}" for line in overload.verdicts(overload_rows))
                       if overload_rows else "")
    elapsed = time.monotonic() - started
    with open(os.path.join(args.out, "results.json"), "w", encoding="utf-8") as f:
        json.dump({"rows": rows, "overload": overload_rows, "formats": summaries, "ratios": summary, "generator": args.generator,
                   "elapsed_s": round(elapsed, 1), "args": vars(args)}, f, indent=1, default=str)
    with open(os.path.join(args.out, "table.md"), "w", encoding="utf-8") as f:
        f.write(report + "\n\n" + (formats_report + "\n\n" if formats_report else "")
                + ("## Response cache\n\n" + cache_report + "\n\n" if cache_report else "")
                + ("## Overload\n\n" + overload_report + "\n\n" if overload_report else "")
                + "## Answer checks\n\n" + checks_report + "\n\n"
                + "\n".join(f"- {line}" for line in summary) + f"\n\nbench took {elapsed:.0f} s\n")
    plot(rows, os.path.join(args.out, "bench.png"), summaries)
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
    print(f"bench took {elapsed:.0f} s; written: {args.out}/table.md, bench.png, results.json")
    # a variant that does not build (e.g. AOTInductor on some model) is reported, not a failure of the bench
    broken = [r for r in overload_rows if r["server"] == "ours" and (r["restarts"] or r["other_errors"] or r["refused_bad"])]
    return 1 if failed_rows(rows, stock_stalls=False) or broken else 0


if __name__ == "__main__":
    sys.exit(main())
