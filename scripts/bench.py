"""make bench: throughput and latency of (A) stock TorchServe, (B) this package, (C) the raw model.

One run, one machine, side by side, so that the ratios mean something even when absolute times drift:
  (A) stock TorchServe: its `image_classifier` handler serving the plainly scripted MobileNetV2
      with the same real weights (the TorchServe README recipe; needs captum), 1 worker, batch 8,
      10 ms delay (the stock figures of ../shared/notes-performance.md);
  (B) this package's archives: mobilenet_v2, minilm_topics, minilm_embedding;
  (C) the raw TorchScript model, optimised as the handler does, at (B)'s batch size, with no HTTP
      and no decoding: the ceiling. The best of one process on all cores and one single-threaded
      process per core, measured right after (B)'s points for the same input;
  (P) (B)'s mobilenet_v2 archive with the model swapped for one that returns zeros, at the top
      concurrency: what TorchServe, decoding, resizing and answering cost without the model. Per
      request (B) pays both, so it can reach at most 1 / (1/P + 1/C): the report says how close.
(A), (B) and (P) run in one TorchServe started for the bench (own ports, working dir and TMPDIR) and
are loaded with wrk (compiled; a Python client when wrk is missing) at each concurrency.
Writes results/bench/<time>/ {results.json, table.md, bench.png}; prints the table.

    python scripts/bench.py [--seconds 8] [--concurrency 1 4 16] [--quick]
"""

import argparse
import io
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from typing import Callable, Dict, List, Optional

import psutil
import requests
import torch
import yaml
from PIL import Image
from tqdm import tqdm

sys.path[:0] = [os.path.dirname(os.path.abspath(__file__)),
                os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "handlers")]

from load_generators import LoadResult, run_python, run_wrk, wrk_available  # noqa: E402
from ts_server import REPO, TorchServe, free_ports, private_server, read_properties  # noqa: E402

STOCK = "stock_mobilenet_v2"
PIPELINE = "mobilenet_v2_without_model"
STORE = os.path.join(REPO, "model_store")
BUILD = os.path.join(REPO, "build")

TEXTS = {
    "short": "The striker scored twice in the final",
    "medium": ("Central bank officials signalled on Tuesday that interest rates would stay higher for longer, "
               "sending bond yields to their highest level in a decade while stocks in Asia and Europe slipped "
               "and the dollar strengthened against most major currencies."),
    "long": " ".join(["Researchers measured how the new battery chemistry ages over thousands of charge cycles, "
                      "reporting that capacity loss slowed markedly after the first few hundred cycles."] * 12),
}


# ---- inputs ---------------------------------------------------------------------------------------
def make_inputs(directory: str) -> Dict[str, dict]:
    """Request bodies on disk: real photos at realistic sizes, and texts of three lengths."""
    from skimage import data as skimage_data

    os.makedirs(directory, exist_ok=True)
    workloads = {}
    photo = Image.fromarray(skimage_data.chelsea())
    for name, size in (("jpeg_640x480", (640, 480)), ("jpeg_2048x1536", (2048, 1536))):
        path = os.path.join(directory, f"{name}.jpg")
        photo.resize(size, Image.Resampling.LANCZOS).save(path, "JPEG", quality=90)
        workloads[name] = {"path": path, "content_type": "image/jpeg", "kind": "vision"}
    for name, text in TEXTS.items():
        path = os.path.join(directory, f"text_{name}.txt")
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        workloads[f"text_{name}"] = {"path": path, "content_type": "text/plain; charset=utf-8", "kind": "text"}
    return workloads


# ---- the bench server -------------------------------------------------------------------------------
def free_port() -> int:
    return free_ports(1)[0]


def build_stock_archive(store: str) -> None:
    """The stock recipe: torch-model-archiver --handler image_classifier on the plainly scripted model."""
    subprocess.run([os.path.join(os.path.dirname(sys.executable), "torch-model-archiver"), "--force",
                    "--model-name", STOCK, "--version", "1.0",
                    "--serialized-file", os.path.join(BUILD, "mobilenet_v2", "model.pt"),
                    "--handler", "image_classifier",
                    "--extra-files", os.path.join(BUILD, "mobilenet_v2", "index_to_name.json"),
                    "--export-path", store], check=True, capture_output=True)


def copy_archive(model: str, store: str, name: str,
                 edits: Optional[Dict[str, Callable[[bytes], bytes]]] = None) -> str:
    """model_store/<model>.mar copied to <store>/<name>.mar and renamed to model `name`, each file
    named in `edits` passed through its function on the way; returns the copy's path."""
    target = os.path.join(store, f"{name}.mar")
    with zipfile.ZipFile(os.path.join(STORE, f"{model}.mar")) as source, zipfile.ZipFile(target, "w") as copy:
        for info in source.infolist():
            data = source.read(info)
            if info.filename == "MAR-INF/MANIFEST.json":
                manifest = json.loads(data)
                manifest["model"]["modelName"] = name
                data = json.dumps(manifest, indent=2).encode()
            if info.filename in (edits or {}):
                data = edits[info.filename](data)
            copy.writestr(info, data)
    return target


class _NoModel(torch.nn.Module):
    """Logits of zeros: what is left of (B) when the model costs nothing."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.zeros(images.shape[0], 1000)


def build_pipeline_archive(store: str) -> None:
    """(P): the mobilenet_v2 archive `make archives` built, byte for byte, but for model.pt (a
    TorchScript _NoModel) and the model name: TorchServe, decode, resize, collate, postprocess and
    JSON as (B) runs them, without the model."""
    no_model = io.BytesIO()
    torch.jit.save(torch.jit.script(_NoModel()), no_model)
    copy_archive("mobilenet_v2", store, PIPELINE, {"model.pt": lambda _: no_model.getvalue()})


def bench_server(workdir: str, models: List[str], with_stock: bool, with_pipeline: bool) -> TorchServe:
    store = os.path.join(workdir, "model_store")
    os.makedirs(store, exist_ok=True)
    for name in models:
        shutil.copy(os.path.join(STORE, f"{name}.mar"), store)
    settings = json.loads(read_properties(os.path.join(REPO, "config.properties"))["models"])
    for variant, base in CONFIG_OF.items():
        settings[variant] = {"1.0": dict(settings[base]["1.0"], marName=f"{variant}.mar")}
    loaded = list(models)
    if with_stock:
        build_stock_archive(store)
        # the stock route as measured in ../shared/notes-performance.md: 1 worker, batch 8, 10 ms.
        # (Our 2-worker setting would hurt it: the stock handler leaves torch at one thread per
        # core in each worker, and 2 x 2 OpenMP threads on 2 cores collapse.)
        settings[STOCK] = {"1.0": {"marName": f"{STOCK}.mar", "minWorkers": 1, "maxWorkers": 1,
                                   "batchSize": 8, "maxBatchDelay": 10, "responseTimeout": 60}}
        loaded.append(STOCK)
    if with_pipeline:
        build_pipeline_archive(store)
        settings[PIPELINE] = {"1.0": dict(settings["mobilenet_v2"]["1.0"], marName=f"{PIPELINE}.mar")}
        loaded.append(PIPELINE)
    return private_server(workdir, model_store=store, load_models=",".join(f"{m}.mar" for m in loaded),
                          models=json.dumps({m: settings[m] for m in loaded}))


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


def load_point(server: TorchServe, model: str, workload: dict, concurrency: int, seconds: float,
               generator: str = "auto") -> LoadResult:
    """Load `model` with one of the bench's inputs; generator "auto" is wrk when installed."""
    if generator == "auto":
        generator = "wrk" if wrk_available() else "python"
    url = f"{server.inference_url}/predictions/{model}"
    token = server.keys()["inference"]
    if generator == "wrk":
        return run_wrk(url, workload["path"], workload["content_type"], token, concurrency, seconds)
    with open(workload["path"], "rb") as f:
        body = f.read()
    return run_python(url, body, workload["content_type"], token, concurrency, seconds)


def check_answer(server: TorchServe, model: str, workload: dict) -> None:
    """One request before timing: the answer must be right, not just fast."""
    with open(workload["path"], "rb") as f:
        response = requests.post(f"{server.inference_url}/predictions/{model}", data=f.read(), timeout=60,
                                 headers={"Content-Type": workload["content_type"], **server.auth_headers("inference")})
    response.raise_for_status()
    answer = response.json()
    if model == PIPELINE:  # all-zero logits: no right label, but a whole answer
        assert len(answer["predictions"]) == model_config("mobilenet_v2")["handler"]["topk"], answer
    elif workload["kind"] == "vision":
        top = answer[0] if isinstance(answer, list) else answer
        label = top["predictions"][0]["label"] if "predictions" in top else next(iter(top))
        assert label in ("Egyptian cat", "tabby", "tiger cat"), f"{model} answered {label}"


# ---- (C): the raw model in process -----------------------------------------------------------------
# Variant archives built from another model's config (Makefile): minilm_topics_int8.
CONFIG_OF = {"minilm_topics_int8": "minilm_topics"}


def model_config(name: str) -> dict:
    with open(os.path.join(REPO, "models", CONFIG_OF.get(name, name), "model-config.yaml"), encoding="utf-8") as f:
        return yaml.safe_load(f)


def _raw_inputs(model: str, workload_name: str):
    """The optimised model as the handler loads it, and one (B)-sized batch for `workload_name`:
    a 224x224 tensor batch for the vision model (no decode), padded token ids for text."""
    from batch_handler import load_torchscript

    config = model_config(model)
    batch = int(config["batchSize"])
    net = load_torchscript(os.path.join(BUILD, model, "model.pt"), torch.device("cpu"),
                           optimize=bool(config["handler"].get("optimizeForInference", True)))
    if model == "mobilenet_v2":
        return net, (torch.randn(batch, 3, 224, 224),), batch
    from text_tokenization import collate_padded, load_tokenizer, tokenize

    max_tokens = int(config["handler"]["maxTokens"])
    tokenizer = load_tokenizer(os.path.join(BUILD, model, "tokenizer.json"), max_tokens)
    item = tokenize(tokenizer, TEXTS[workload_name.removeprefix("text_")], max_tokens)
    return net, collate_padded([item] * batch, tokenizer.token_to_id("[PAD]"), torch.device("cpu")), batch


def _raw_rate(model: str, workload_name: str, threads: int, seconds: float, ready, start, out) -> None:
    """One process of (C): load, warm up, say ready, wait for the common start, run `seconds`,
    put (items/s, ms per batch) on `out`."""
    torch.set_num_threads(threads)
    net, inputs, batch = _raw_inputs(model, workload_name)
    with torch.inference_mode():
        for _ in range(3):
            net(*inputs)
        ready.put(True)
        start.wait()
        runs, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            net(*inputs)
            runs += 1
    elapsed = time.perf_counter() - started
    out.put((runs * batch / elapsed, elapsed / runs * 1e3))


def raw_model_throughput(model: str, workload_name: str, seconds: float) -> dict:
    """(C): requests/s of the optimised TorchScript model alone at (B)'s batch size, with no HTTP
    and no decode: the best of the layouts (B) could use on this machine, all cores in one
    process or one single-threaded process per core (as (B)'s workers run), each process started
    fresh and all of them running at once."""
    cores = psutil.cpu_count(logical=True)
    layouts = [(1, cores)] + ([(cores, 1)] if cores > 1 else [])
    context = multiprocessing.get_context("spawn")
    best = None
    for processes, threads in layouts:
        ready, start, out = context.Queue(), context.Event(), context.Queue()
        workers = [context.Process(target=_raw_rate, args=(model, workload_name, threads, seconds, ready, start, out))
                   for _ in range(processes)]
        for worker in workers:
            worker.start()
        for _ in workers:
            ready.get(timeout=300)
        start.set()
        rates = [out.get(timeout=seconds + 300) for _ in workers]
        for worker in workers:
            worker.join()
        row = {"setup": "C", "model": model, "workload": workload_name, "concurrency": None,
               "batch": int(model_config(model)["batchSize"]), "layout": f"{processes}x{threads}",
               "throughput": sum(rate for rate, _ in rates), "p50_ms": sum(ms for _, ms in rates) / len(rates)}
        if best is None or row["throughput"] > best["throughput"]:
            best = row
    return best


# ---- report ----------------------------------------------------------------------------------------
def fmt(value: Optional[float], digits: int = 1) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def table(rows: List[dict]) -> str:
    lines = ["| setup | model | input | conc | req/s | p50 ms | p90 ms | p99 ms | errors | server CPU (cores) | client CPU (cores) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        where = r["workload"] if r.get("input", r["workload"]) == r["workload"] else f"{r['input']} (next to {r['workload']})"
        how = r.get("concurrency") or f"batch {r.get('batch')}, {r.get('layout')}"
        lines.append(f"| {r['setup']} | {r['model']} | {where} | {how} "
                     f"| {fmt(r['throughput'])} | {fmt(r.get('p50_ms'))} | {fmt(r.get('p90_ms'))} | {fmt(r.get('p99_ms'))} "
                     f"| {r.get('errors', '')} | {fmt(r.get('server_cores'), 2)} | {fmt(r.get('client_cores'), 2)} |")
    return "\n".join(lines)


def ratios(rows: List[dict], top_concurrency: int) -> List[str]:
    def find(setup, model, workload, concurrency=None):
        for r in rows:
            if r["setup"] == setup and r["model"] == model and r["workload"] == workload and \
                    (concurrency is None or r.get("concurrency") == concurrency):
                return r
        return None

    out = []
    for workload in ("jpeg_640x480", "jpeg_2048x1536"):
        a = find("A", STOCK, workload, top_concurrency)
        b = find("B", "mobilenet_v2", workload, top_concurrency)
        c = find("C", "mobilenet_v2", workload)
        if a and b and a["throughput"] > 0:
            out.append(f"vision {workload} c={top_concurrency}: B/A throughput {b['throughput'] / a['throughput']:.2f}x "
                       f"(target >= 3), p99 B {b['p99_ms']:.0f} ms vs A {a['p99_ms']:.0f} ms (target: no worse)")
        if b and c and c["throughput"] > 0:
            out.append(f"vision {workload} c={top_concurrency}: B/C {b['throughput'] / c['throughput']:.0%} (target >= 75%)")
        p = find("P", PIPELINE, workload, top_concurrency)
        if b and c and p and p["throughput"] > 0:
            # per request, (B) pays the pipeline's CPU and the model's: at best 1 / (1/P + 1/C)
            cap = 1 / (1 / p["throughput"] + 1 / c["throughput"])
            out.append(f"vision {workload} c={top_concurrency}: without the model (P) {p['throughput']:.0f} req/s, so "
                       f"(B) can reach about 1/(1/P+1/C) = {cap:.0f} req/s = {cap / c['throughput']:.0%} of (C) here; "
                       f"(B) is at {b['throughput'] / cap:.0%} of that estimate")
    for model in ("minilm_topics", "minilm_embedding", "minilm_topics_int8"):
        for length in TEXTS:
            b = find("B", model, f"text_{length}", top_concurrency)
            c = find("C", model, f"text_{length}")
            if b and c and c["throughput"] > 0:
                out.append(f"{model} {length} c={top_concurrency}: B/C {b['throughput'] / c['throughput']:.0%} (target >= 70%)")
    return out


def plot(rows: List[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({(r["model"], r["workload"]) for r in rows if r["setup"] in ("A", "B")})
    workloads = sorted({w for _, w in groups})
    fig, axes = plt.subplots(1, len(workloads), figsize=(4.2 * len(workloads), 3.8), squeeze=False)
    for ax, workload in zip(axes[0], workloads):
        for model, w in groups:
            if w != workload:
                continue
            points = sorted((r["concurrency"], r["throughput"]) for r in rows
                            if r["model"] == model and r["workload"] == w and r["setup"] in ("A", "B"))
            setup = "A" if model == STOCK else "B"
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
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# ---- main --------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--warmup", type=float, default=2)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--models", nargs="+",
                        default=["mobilenet_v2", "minilm_topics", "minilm_embedding", "minilm_topics_int8"])
    parser.add_argument("--no-stock", action="store_true", help="skip (A)")
    parser.add_argument("--no-raw", action="store_true", help="skip (C)")
    parser.add_argument("--workloads", nargs="+", help="only these inputs (e.g. jpeg_640x480 text_short)")
    parser.add_argument("--generator", choices=["auto", "wrk", "python"], default="auto")
    parser.add_argument("--out", default=os.path.join(REPO, "results", "bench", time.strftime("%Y%m%d-%H%M%S")))
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: mobilenet_v2 only, one input, concurrency 4, 2 s, no (A)")
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.concurrency, args.seconds, args.warmup = ["mobilenet_v2"], [4], 2, 0.5
        args.no_stock, args.workloads = True, ["jpeg_640x480"]
    generator = ("wrk" if wrk_available() else "python") if args.generator == "auto" else args.generator
    os.makedirs(args.out, exist_ok=True)

    workloads = make_inputs(os.path.join(args.out, "inputs"))
    if args.workloads:
        workloads = {k: v for k, v in workloads.items() if k in args.workloads}
    with_stock = "mobilenet_v2" in args.models and not args.no_stock
    with_pipeline = "mobilenet_v2" in args.models and not args.no_raw
    plan = []
    for model in args.models + ([STOCK] if with_stock else []):
        kind = "vision" if model in ("mobilenet_v2", STOCK) else "text"
        for name, workload in workloads.items():
            if workload["kind"] == kind:
                plan += [(model, name, c) for c in args.concurrency]
                if model == "mobilenet_v2" and with_pipeline:  # (P) next to (B), at the top concurrency
                    plan.append((PIPELINE, name, max(args.concurrency)))

    rows: List[dict] = []
    workdir = tempfile.mkdtemp(prefix="bench-server-")
    server = bench_server(workdir, args.models, with_stock, with_pipeline)
    print(f"bench: load generator {generator}; server in {workdir}; results in {args.out}")
    server.start()
    try:
        server.wait_ready(timeout=300)
        for model, name in sorted({(m, n) for m, n, _ in plan}):
            check_answer(server, model, workloads[name])
        for index, (model, name, concurrency) in enumerate(tqdm(plan, desc="bench", unit="point")):
            if args.warmup:
                load_point(server, model, workloads[name], concurrency, args.warmup, generator)
            cpu_before, wall_before = server_cpu_seconds(server), time.monotonic()
            result = load_point(server, model, workloads[name], concurrency, args.seconds, generator)
            wall = time.monotonic() - wall_before
            setup = {STOCK: "A", PIPELINE: "P"}.get(model, "B")
            rows.append(dict(result.as_dict(), setup=setup, model=model, workload=name,
                             server_cores=(server_cpu_seconds(server) - cpu_before) / wall,
                             client_cores=result.client_cpu_s / wall))
            # (C) for this input right after (B)'s points for it, so that drift between the two stays
            # small; the server idles meanwhile (its idle frontend and workers take next to no CPU)
            last_for_input = index + 1 == len(plan) or plan[index + 1][:2] != (model, name)
            if last_for_input and model not in (STOCK, PIPELINE) and not args.no_raw:
                raw = raw_model_throughput(model, name, max(2.0, args.seconds / 2))
                rows.append(dict(raw, input="tensor_224" if model == "mobilenet_v2" else name))
            with open(os.path.join(args.out, "rows.partial.json"), "w", encoding="utf-8") as f:
                json.dump(rows, f)  # a crash later keeps what was measured
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    report = table(rows)
    summary = ratios(rows, max(args.concurrency))
    with open(os.path.join(args.out, "results.json"), "w", encoding="utf-8") as f:
        json.dump({"rows": rows, "ratios": summary, "generator": generator, "args": vars(args)}, f, indent=1)
    with open(os.path.join(args.out, "table.md"), "w", encoding="utf-8") as f:
        f.write(report + "\n\n" + "\n".join(f"- {line}" for line in summary) + "\n")
    plot(rows, os.path.join(args.out, "bench.png"))
    print(report)
    print("\n".join(summary))
    print(f"written: {args.out}/table.md, bench.png, results.json")
    errors = sum(r.get("errors", 0) for r in rows)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
