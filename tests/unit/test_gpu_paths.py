"""The handlers on a GPU (skipped where CUDA is not available, as on this project's CI machine).

TorchServe gives a worker `gpu_id` when the server has number_of_gpu > 0; the handler then runs on
cuda:<gpu_id>. Each archive found (the Makefile's model_store/, the bench's format variants, and
$GPU_ARCHIVES) is loaded twice, on cuda:0 and on the CPU, and one batch of real inputs plus one bad
input goes through both: the same answers within fp32 tolerance, the bad input a 4xx alone, and the
model's output on the GPU. Times per batch are printed (run with -s), never asserted.
"""

import os
import time

import pytest
import torch
import torch.nn.functional as F

import importlib

from support import REPO, encode, extract_archive, make_context, photo, request_batch, responses
from tskit import kinds
from tskit.kinds import of_handler

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

STORES = [os.environ.get("GPU_ARCHIVES", ""), os.path.join(REPO, "model_store"),
          os.path.join(REPO, "build", "bench", "model_store")]
PROBABILITY_TOLERANCE = 5e-3  # cuDNN convolutions use TF32 on Ampere+ by default (seen: 1.1e-3 on an H100)
EMBEDDING_MIN_COSINE = 0.9999
TEXTS = ["The striker scored twice in the final minutes", "Central bank raises interest rates again",
         "New telescope images reveal a distant galaxy", "Crème brûlée à la façon d'un chef"]


def archives():
    found = {}
    for store in filter(os.path.isdir, STORES):
        for name in sorted(os.listdir(store)):
            if name.endswith(".mar") and name not in found and "int8" not in name:  # int8: CPU kernels only
                found[name] = store
    return sorted(found.items())


def load(mar, store, tmp_path, gpu):
    model_dir, manifest, config = extract_archive(mar, str(tmp_path / f"{mar}-{gpu}"), store)
    kind = config["handler"].get("kind") or _kind_of(manifest)
    module = importlib.import_module(kinds.kind(kind).handler_module)
    [cls] = [c for c in vars(module).values() if isinstance(c, type) and c.__module__ == module.__name__]
    handler = cls()
    handler.initialize(make_context(model_dir, manifest, config, gpu=gpu))
    return handler, (model_dir, manifest, config), kind


def _kind_of(manifest):
    return of_handler(os.path.basename(manifest["model"]["handler"])).name


def batch(kind):
    if kinds.kind(kind).model_input.takes_photos:
        good = [("body", encode(photo(n)), "image/jpeg") for n in ("chelsea", "coffee", "astronaut")]
        return good + [("body", b"\xff\xd8\xff\xe0 not a jpeg", "image/jpeg")]
    return [("body", t.encode(), "text/plain") for t in TEXTS] + [("body", b"\xff\xfe\xfa", "text/plain")]


def answer(handler, archive, requests):
    context = make_context(*archive)
    started = time.perf_counter()
    outputs = handler.handle(request_batch(context, requests), context)
    return responses(context, outputs), time.perf_counter() - started


@pytest.mark.parametrize("mar,store", archives())
def test_the_gpu_answers_as_the_cpu(mar, store, tmp_path):
    gpu, archive, kind = load(mar, store, tmp_path, 0)
    cpu, _, _ = load(mar, store, tmp_path, None)
    assert gpu.device == torch.device("cuda:0") and cpu.device == torch.device("cpu")
    requests = batch(kind)
    times = {}
    for name, handler in (("gpu", gpu), ("cpu", cpu)):
        answer(handler, archive, requests)  # first call: kernels load, caches warm
        runs = [answer(handler, archive, requests) for _ in range(5)]
        times[name] = sorted(t for _, t in runs)[2]
        times[name + "_answers"] = runs[-1][0]
    on_gpu, on_cpu = times["gpu_answers"], times["cpu_answers"]
    assert [s for s, _ in on_gpu] == [s for s, _ in on_cpu] and on_gpu[-1][0] in range(400, 500)
    assert all(s == 200 for s, _ in on_gpu[:-1])
    for (_, g), (_, c) in zip(on_gpu[:-1], on_cpu[:-1]):
        compare(kind, g, c)
    providers = getattr(getattr(gpu.model, "session", None), "get_providers", lambda: ["torch"])()
    print(f"\n[gpu] {mar}: batch of {len(requests)} median {times['gpu'] * 1e3:.1f} ms on cuda:0 "
          f"({torch.cuda.get_device_name(0)}, {providers[0]}) vs {times['cpu'] * 1e3:.1f} ms on the CPU")


def compare(kind, gpu_answer, cpu_answer):
    if not kinds.kind(kind).answer.labelled:  # an embedding
        cosine = F.cosine_similarity(torch.tensor(gpu_answer["embedding"]), torch.tensor(cpu_answer["embedding"]), dim=0)
        assert cosine.item() >= EMBEDDING_MIN_COSINE
        return
    key = "predictions" if "predictions" in gpu_answer else next(iter(gpu_answer))
    g, c = gpu_answer[key], cpu_answer[key]
    assert g[0]["label"] == c[0]["label"]
    cpu_probability = {p["label"]: p["probability"] for p in c}
    for p in g:
        if p["label"] in cpu_probability:
            assert abs(p["probability"] - cpu_probability[p["label"]]) <= PROBABILITY_TOLERANCE
