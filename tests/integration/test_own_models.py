"""`make model` on models that are not in this repo, every kind x format, served by `make serve` beside the
bundled three: seventeen models on one TorchServe, their queues sharing one heap budget.

The models are made on the spot (tests/own_models.py: a random ResNet-18 with 10 classes as .pt, .pt2
and .onnx; a tiny BertForSequenceClassification; a tiny BertModel). A folder of the test's own plays the
user's clone: models/ holds copies of the bundled declarations, model_store/ their archives, and a
config.properties on free loopback ports follows them (CONFIG=). Each archive is built by ONE
`make model ... CONFIG=...` (which shares the heap budget anew and stamps every served archive's queue),
then ONE `make serve` serves all seventeen (nothing is written into the repo). Answers must equal the
eager model run in process on real photos and real texts:
    classifiers  the same top-1 label, and every class probability within PROBABILITY_TOLERANCE
    embeddings   cosine >= EMBEDDING_MIN_COSINE with the reference, the model's width, unit length
the bundled models answer as on their own server, each model's queue is its share of the budget
(tskit.admission), and with all seventeen loaded 4x the tuned concurrency is answered and a flood of
maximum-size bodies leaves the frontend alive (tests/overload_checks.py). One more archive, built
elsewhere, is registered by file name with `tsctl.py register` (a version registered by hand: the
budget's reserve). `make model`'s error paths: test_make_model_errors.py.
"""

import base64
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
import torch.nn.functional as F

import own_models
import text_reference
from conftest import Client
from overload_checks import check_4x_answered, check_flood, is_cat, torchserve
from support import MODEL_STORE, REPO, encode, photo
from tskit import admission
from tskit.declaration import served
from tskit.properties import read_properties
from tskit.real_images import _matplotlib_grace_hopper, to_jpeg
from tskit.server import TorchServe, private_config

pytestmark = pytest.mark.heavy(seconds=190)  # seconds in a one-process run on 2 cores (tests/suite_order.py)

PROBABILITY_TOLERANCE = 1e-3  # fp32: largest |served - reference| of any class probability
EMBEDDING_MIN_COSINE = 0.9999

# (archive name, kind, source, format): one `make model` each. AOTInductor builds first (the slow ones).
BUILDS = [
    ("img_pt2_aoti", "image-classifier", "pt2", "aoti"),
    ("cls_aoti", "text-classifier", "cls", "aoti"),
    ("emb_aoti", "text-embedding", "emb", "aoti"),
    ("img_pt_torchscript", "image-classifier", "pt", "torchscript"),
    ("img_pt_onnx", "image-classifier", "pt", "onnx"),
    ("img_pt2_torchscript", "image-classifier", "pt2", "torchscript"),
    ("img_pt2_onnx", "image-classifier", "pt2", "onnx"),
    ("img_onnx_onnx", "image-classifier", "onnx", "onnx"),
    ("cls_torchscript", "text-classifier", "cls", "torchscript"),
    ("cls_onnx", "text-classifier", "cls", "onnx"),
    ("emb_torchscript", "text-embedding", "emb", "torchscript"),
    ("emb_onnx", "text-embedding", "emb", "onnx"),
    ("img_pt_openvino", "image-classifier", "pt", "openvino"),
    ("cls_openvino", "text-classifier", "cls", "openvino"),
    ("emb_openvino", "text-embedding", "emb", "openvino"),
]
REGISTERED_LATER = "img_onnx_onnx"  # built elsewhere, not loaded at start: registered by file name with tsctl.py
# the repo's served one-shot models, beside the user's (the text generator has tests of its own)
BUNDLED = tuple(d.name for d in served() if not d.torchserve.get("continuousBatching"))
PARALLEL_BUILDS = 2                  # 2 cores; an AOTInductor compile holds ~1 GB
IMAGE_MODELS = [b[0] for b in BUILDS if b[1] == "image-classifier"]
CLASSIFIER_MODELS = [b[0] for b in BUILDS if b[1] == "text-classifier"]
EMBEDDING_MODELS = [b[0] for b in BUILDS if b[1] == "text-embedding"]
PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "grace_hopper")

measured = {"parity": {}}  # printed at the end of the module (run with -s to see it)


@pytest.fixture(scope="module", autouse=True)
def report():
    """The build times and parity numbers of this run, printed once the module's tests are done (a
    report, not a test: it asserts nothing, so it is not one)."""
    yield
    print("\n[own models] " + json.dumps(measured, indent=1))


def photos():
    images = {name: to_jpeg(photo(name)) for name in PHOTOS if name != "grace_hopper"}
    images["grace_hopper"] = to_jpeg(_matplotlib_grace_hopper())
    return images


def texts():
    with open(os.path.join(REPO, "tests", "data", "topic_headlines.json"), encoding="utf-8") as f:
        headlines = json.load(f)["headlines"]
    chosen = {f"{topic} {i}": lines[i] for topic, lines in headlines.items() for i in (0, 5)}
    chosen["accented"] = "Crème brûlée à la façon d'un chef: naïve, coöperative, São Paulo, Zürich."
    chosen["long"] = " ".join(["Researchers measured how the new battery chemistry ages over cycles"] * 30)
    return chosen


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("own_sources"))
    started = time.monotonic()
    image = own_models.make_image_classifier(os.path.join(folder, "image"))
    made = {"pt": image.pt, "pt2": image.pt2, "onnx": image.onnx, "labels": image.labels, "image": image,
            "cls": own_models.make_text_classifier(os.path.join(folder, "text_classifier")),
            "emb": own_models.make_text_embedder(os.path.join(folder, "text_embedder"))}
    measured["sources_s"] = round(time.monotonic() - started, 1)
    return made


def users_clone(base: str) -> str:
    """base/ as a user's clone with the bundled models: models/ (copies of their declarations, times kept so
    make sees their archives as up to date), model_store/ (links to the archives `make archives` built) and a
    config.properties on free loopback ports; returns that config's path."""
    for name in BUNDLED:
        shutil.copytree(os.path.join(REPO, "models", name), os.path.join(base, "models", name))
        os.makedirs(os.path.join(base, "model_store"), exist_ok=True)
        os.symlink(os.path.join(MODEL_STORE, f"{name}.mar"), os.path.join(base, "model_store", f"{name}.mar"))
    private_config(os.path.join(base, "server"), model_store=os.path.join(base, "model_store"))
    return os.path.join(base, "server", "config.properties")


def make(base: str, target: str, timeout: float = 900) -> subprocess.CompletedProcess:
    """`make serve` or `make stop` for the clone in base/ (its models, store, config and server dir)."""
    args = ["make", "--no-print-directory", target, f"MODELS_DIR={base}/models", f"STORE={base}/model_store",
            f"BUILD={base}/build", f"CONFIG={base}/server/config.properties", f"SERVER_DIR={base}/server",
            "SERVE_TIMEOUT=600"]
    return subprocess.run(args, cwd=REPO, env=own_models.make_env(), capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def built(sources, tmp_path_factory):
    """Every BUILDS archive, by one `make model` each, PARALLEL_BUILDS at a time; {name: build.json}."""
    base = str(tmp_path_factory.mktemp("own_models"))
    config = users_clone(base)

    def one(build):
        name, kind, source, model_format = build
        labels = sources["labels"] if kind == "image-classifier" else None
        if name == REGISTERED_LATER:  # built into a folder of its own, with no config: an archive from elsewhere
            return own_models.make_model(base, name, kind, sources[source], model_format, labels,
                                         models_dir=os.path.join(base, "elsewhere"))
        return own_models.make_model(base, name, kind, sources[source], model_format, labels, config=config)

    # `make model` depends on the venv: bring it up to date once, so parallel builds never reinstall it at once
    venv = subprocess.run(["make", "--no-print-directory", "venv"], cwd=REPO, env=own_models.make_env(),
                          capture_output=True, text=True, timeout=1800)
    assert venv.returncode == 0, venv.stdout + venv.stderr
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=PARALLEL_BUILDS) as pool:
        results = list(pool.map(one, BUILDS))
    measured["builds_wall_s"] = round(time.monotonic() - started, 1)
    failed = [f"{b[0]}: exit {r.returncode}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
              for b, (r, _) in zip(BUILDS, results) if r.returncode != 0]
    assert not failed, "\n\n".join(failed)
    reports = {}
    for (name, *_), (_, seconds) in zip(BUILDS, results):
        with open(os.path.join(base, "build", name, "build.json"), encoding="utf-8") as f:
            reports[name] = dict(json.load(f), make_s=round(seconds, 1))
    measured["builds"] = {n: {k: r[k] for k in ("format", "build_s", "max_abs_diff", "total_s", "make_s")}
                          for n, r in reports.items()}
    return base, reports


@pytest.fixture(scope="module")
def server(built):
    """ONE `make serve` of the clone: the bundled models and every BUILDS model but REGISTERED_LATER."""
    base, _ = built
    started = time.monotonic()
    try:
        result = make(base, "serve")
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        measured["server_ready_s"] = round(time.monotonic() - started, 1)
        config = os.path.join(base, "server", "config.properties")
        yield TorchServe(config, workdir=os.path.join(base, "server"), tmpdir=os.path.join(base, "server", "tmp"))
    finally:
        stopped = make(base, "stop", timeout=300)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr


@pytest.fixture(scope="module")
def client(server):
    return Client(server)


def tsctl(server, *args):
    cmd = [sys.executable, os.path.join(REPO, "scripts", "tsctl.py"), "--inference-url", server.inference_url,
           "--management-url", server.management_url, "--key-file", server.key_file, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def registered(server):
    """`tsctl.py register img_onnx_onnx.mar` on the running server (the archive is in its store)."""
    return tsctl(server, "register", f"{REGISTERED_LATER}.mar", "--workers", "1")


@pytest.fixture(scope="module")
def image_reference(sources):
    reference = own_models.ImageReference(sources["image"].eager, own_models.IMAGE_CLASSES)
    images = photos()
    return images, dict(zip(images, reference.answers(list(images.values()))))


@pytest.fixture(scope="module")
def text_references(sources):
    return {"text-classifier": own_models.TextReference(sources["cls"], "text-classifier",
                                                        own_models.CLASSIFIER_MAX_POSITIONS),
            "text-embedding": own_models.TextReference(sources["emb"], "text-embedding",
                                                       own_models.EMBEDDING_MAX_TOKENS)}


# ---- the builds --------------------------------------------------------------------------------
def test_every_kind_and_format_builds_with_one_make_model(built):
    base, reports = built
    for name, kind, _, model_format in BUILDS:
        report = reports[name]
        assert report["format"] == model_format and report["kind"] == kind
        assert os.path.isfile(os.path.join(base, "model_store", f"{name}.mar"))
        assert report["max_abs_diff"] < 1e-3, report  # the build's own parity check, on logits / embeddings
        folder = "elsewhere" if name == REGISTERED_LATER else "models"
        with open(os.path.join(base, folder, name, "model.yaml"), encoding="utf-8") as f:
            assert f"format: {model_format}" in f.read()
    # nothing was written into the repo
    assert not any(os.path.exists(os.path.join(REPO, "models", name)) for name, *_ in BUILDS)
    assert not any(os.path.exists(os.path.join(REPO, "model_store", f"{name}.mar")) for name, *_ in BUILDS)


# ---- served answers == in-process reference ---------------------------------------------------------
def predict_image(client, model, jpeg, topk):
    body = json.dumps({"image": base64.b64encode(jpeg).decode("ascii"), "topk": topk})
    return client.predict(model, body, "application/json")


@pytest.mark.parametrize("model", IMAGE_MODELS)
def test_image_classifier_answers_equal_the_eager_model(model, client, image_reference, request):
    if model == REGISTERED_LATER:
        result = request.getfixturevalue("registered")
        assert result.returncode == 0, result.stderr
    images, expected = image_reference
    assert len({max(e, key=e.get) for e in expected.values()}) >= 2  # the photos do not all get one class
    worst = 0.0
    for name, jpeg in images.items():
        response = predict_image(client, model, jpeg, len(own_models.IMAGE_CLASSES))
        assert response.status_code == 200, response.text
        predictions = response.json()["predictions"]
        served = {p["label"]: p["probability"] for p in predictions}
        assert set(served) == set(own_models.IMAGE_CLASSES)
        assert [p["probability"] for p in predictions] == sorted(served.values(), reverse=True)
        assert predictions[0]["label"] == max(expected[name], key=expected[name].get), (name, predictions[:2])
        assert predictions[0]["index"] == own_models.IMAGE_CLASSES.index(predictions[0]["label"])
        worst = max(worst, max(abs(served[c] - expected[name][c]) for c in served))
    measured["parity"][model] = {"max_probability_diff": worst}
    assert worst <= PROBABILITY_TOLERANCE, worst


def predict_text(client, model, text):
    return client.predict(model, text.encode("utf-8"), "text/plain; charset=utf-8")


@pytest.mark.parametrize("model", CLASSIFIER_MODELS)
def test_text_classifier_answers_equal_the_eager_model(model, client, text_references):
    reference = text_references["text-classifier"]
    worst, top1 = 0.0, set()
    for name, text in texts().items():
        expected = reference.answer(text)
        response = predict_text(client, model, text)
        assert response.status_code == 200, response.text
        answer = response.json()
        served = {p["label"]: p["probability"] for p in answer["predictions"]}
        assert set(served) == set(own_models.TEXT_LABELS)
        probabilities = expected["probabilities"]
        assert answer["predictions"][0]["label"] == max(probabilities, key=probabilities.get), name
        assert answer["truncated"] is expected["truncated"] is (name == "long"), name
        worst = max(worst, max(abs(served[c] - probabilities[c]) for c in served))
        top1.add(answer["predictions"][0]["label"])
    measured["parity"][model] = {"max_probability_diff": worst, "top1_labels": sorted(top1)}
    assert worst <= PROBABILITY_TOLERANCE, worst
    assert len(top1) >= 2  # the texts do not all get one label


@pytest.mark.parametrize("model", EMBEDDING_MODELS)
def test_text_embedding_answers_equal_the_eager_model(model, client, text_references):
    reference = text_references["text-embedding"]
    width = reference.model.config.hidden_size
    lowest, served_all = 1.0, []
    for name, text in texts().items():
        expected = reference.answer(text)
        response = predict_text(client, model, text)
        assert response.status_code == 200, response.text
        answer = response.json()
        served = torch.tensor(answer["embedding"])
        assert served.shape == (width,)
        assert abs(served.norm().item() - 1) < 1e-4
        assert answer["truncated"] is expected["truncated"] is (name == "long"), name
        lowest = min(lowest, F.cosine_similarity(served, torch.tensor(expected["embedding"]), dim=0).item())
        served_all.append(served)
    stacked = torch.stack(served_all)
    pairwise = (stacked @ stacked.T - 2 * torch.eye(len(served_all))).max().item()
    measured["parity"][model] = {"min_cosine": lowest, "max_cosine_between_texts": pairwise}
    assert lowest >= EMBEDDING_MIN_COSINE, lowest
    assert pairwise < 0.99  # different texts are far apart: the cosine bound means something


# ---- a batch with a corrupt image; registration by file name -----------------------------------------
def test_corrupt_image_in_a_batch_gets_400_and_the_others_200(client, image_reference):
    model = "img_pt_torchscript"
    images, expected = image_reference
    good = [images["chelsea"], images["rocket"]]
    bodies = [good[0], good[0][: len(good[0]) // 3], good[1]]
    for attempt in range(3):  # until the three land in one batch (maxBatchDelay 20 ms, batchSize 4)
        before = len(client.batch_sizes(model))
        barrier = threading.Barrier(len(bodies))

        def send(body):
            barrier.wait()
            return client.predict(model, body, "image/jpeg")

        with ThreadPoolExecutor(max_workers=len(bodies)) as pool:
            answers = list(pool.map(send, bodies))
        for name, response in zip(("chelsea", "rocket"), (answers[0], answers[2])):
            assert response.status_code == 200, response.text
            assert response.json()["predictions"][0]["label"] == max(expected[name], key=expected[name].get)
        assert answers[1].status_code == 400, answers[1].text
        error = answers[1].json()
        assert set(error) == {"code", "type", "message"}
        assert error["code"] == 400 and error["type"] == "CorruptImage"
        sizes = client.batches_since(model, before, len(bodies))
        if max(sizes) == len(bodies):
            break
    measured["corrupt_batch_sizes"] = sizes
    assert max(sizes) == len(bodies), f"the three requests never shared a batch: {sizes}"
    assert all(w["status"] == "READY" for w in client.describe(model)["workers"])


def test_registration_by_file_name_with_tsctl(registered, client):
    assert registered.returncode == 0, registered.stderr
    assert REGISTERED_LATER in registered.stdout  # TorchServe's "Model ... registered" status
    described = client.describe(REGISTERED_LATER)
    assert described["modelVersion"] == "1.0"
    assert [w["status"] for w in described["workers"]] == ["READY"]
    names = {m["modelName"] for m in client.manage("GET", "/models").json()["models"]}
    assert names == {name for name, *_ in BUILDS} | set(BUNDLED)
    # no queue stamped into an archive from elsewhere: TorchServe's job_queue_size, which the budget reserves
    job_queue_size = int(read_properties(os.path.join(REPO, "config.properties"))["job_queue_size"])
    assert described["jobQueueStatus"]["remainingCapacity"] == job_queue_size


# ---- seventeen models on one server: the bundled ones beside the user's, one heap budget -----------------
def test_the_bundled_models_answer_right_beside_the_users_models(client):
    cat = client.predict("mobilenet_v2", encode(photo("chelsea")), "image/jpeg")
    assert cat.status_code == 200 and is_cat(cat.json()), cat.text
    text = text_reference.TEXTS["plain"]
    topic = predict_text(client, "minilm_topics", text)
    assert topic.status_code == 200 and topic.json()["predictions"][0]["label"] == "Sports", topic.text
    embedding = predict_text(client, "minilm_embedding", text)
    assert embedding.status_code == 200, embedding.text
    tokenizer, model = text_reference.load_reference()
    expected = text_reference.reference_embeddings(tokenizer, model, [text])[0]
    cosine = F.cosine_similarity(torch.tensor(embedding.json()["embedding"]), expected, dim=0).item()
    assert cosine >= EMBEDDING_MIN_COSINE, cosine


def test_each_models_queue_is_its_share_of_the_one_heap_budget(built, client):
    """What TorchServe applies (describe's remaining queue capacity, idle) is what tskit.admission shares out:
    every model keeps the same fraction of the queue it asks for, and the whole fits the heap budget."""
    base, _ = built
    config = read_properties(os.path.join(base, "server", "config.properties"))
    declarations = served(os.path.join(base, "models"))
    assert len(declarations) == len(BUNDLED) + len(BUILDS) - 1
    shares = {a.name: a for a in admission.admissions(config, declarations)}
    applied = {name: client.describe(name)["jobQueueStatus"]["remainingCapacity"] for name in shares}
    assert applied == {name: a.queue for name, a in shares.items()}
    bundled = [shares[name] for name in BUNDLED]
    assert all(a.floor < a.queue < a.want for a in bundled), bundled  # shrunk, not refused, not at the floor
    fractions = [a.queue / a.want for a in shares.values()]
    assert max(fractions) - min(fractions) < 0.05, fractions  # the same share of each stated wait
    plan = admission.budget(config, declarations)
    assert admission.worst_case_bytes(config, declarations) <= admission.HEAP_SHARE * plan.heap
    measured["queues"] = {name: a.queue for name, a in shares.items()}


def test_4x_the_tuned_concurrency_is_answered_right_with_seventeen_models_loaded(server):
    check_4x_answered(torchserve(server), "mobilenet_v2", encode(photo("chelsea")), "image/jpeg", is_cat)


def test_a_flood_of_maximum_size_bodies_leaves_the_seventeen_model_server_alive(server):
    measured["flood"] = check_flood(torchserve(server), "mobilenet_v2")
