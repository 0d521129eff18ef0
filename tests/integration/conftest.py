"""A real TorchServe for the integration tests: its own ports, working dir and temp dir.

It serves the archives `make archives` built into model_store/, with the repo's config.properties
except for the addresses, so it can run beside a `make serve` server. It is always stopped.
"""

import contextlib
import json
import os
import zipfile
import shutil
import time

import pytest
from filelock import FileLock

from tskit.declaration import served
from tskit.kserve_server import KServeEngine
from tskit.server import REPO, TorchServe, free_ports, private_config, private_server, running


def test_config(workdir, **overrides):
    """config.properties for a test server: free loopback ports, the Makefile's model store."""
    return private_config(workdir, **overrides)


class Client:
    """The package's client (tskit.client) for tests: raw responses, the server's tokens; `auth=False`
    sends none (then `headers` may carry a token of the test's own)."""

    def __init__(self, server: TorchServe):
        self.server = server
        self.api = server.client(timeout=120)

    def infer(self, method, path, headers=None, auth=True, **kwargs):
        return self.api.request("inference", method, path, auth=auth, headers=headers, **kwargs)

    def manage(self, method, path, headers=None, auth=True, **kwargs):
        return self.api.request("management", method, path, auth=auth, headers=headers, **kwargs)

    def predict(self, model, body, content_type, **kwargs):
        return self.infer("POST", f"/predictions/{model}", data=body,
                          headers={"Content-Type": content_type}, **kwargs)

    def batch_sizes(self, model):
        """Sizes of the batches the model's handler reported (`handled batch size=N`), in order."""
        return self.server.batch_sizes(model)

    def batches_since(self, model, before, total, timeout=15):
        """Batch sizes logged after the first `before`, once they add up to `total` requests.
        The frontend copies worker stdout to model_log.log on its own thread, so a line can land
        a moment after the response it belongs to."""
        deadline = time.monotonic() + timeout
        while True:
            sizes = self.batch_sizes(model)[before:]
            if sum(sizes) >= total or time.monotonic() > deadline:
                return sizes
            time.sleep(0.2)

    def describe(self, model):
        response = self.manage("GET", f"/models/{model}")
        response.raise_for_status()
        return response.json()[0]


ONE_SHOT = [d.name for d in served() if not d.torchserve.get("continuousBatching")]
GENERATORS = [d.name for d in served() if d.torchserve.get("continuousBatching")]


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """The served one-shot models (what most modules send to); the text generator has a server of its own."""
    load = ",".join(f"{m}.mar" for m in ONE_SHOT)
    with running(private_server(str(tmp_path_factory.mktemp("torchserve")), load_models=load)) as server:
        yield server


@contextlib.contextmanager
def engine_running(tmp_path_factory, models, key_file=None, max_request_size=6553500,
                   store=os.path.join(REPO, "model_store")):
    """The second engine (`make serve ENGINE=kserve`) on the archives, with TorchServe's key file where given
    (else one of its own). One module at a time across the xdist workers holds one (a file lock in the run's
    shared temp dir): an engine holds ~1.4 GB beside each worker's TorchServe, and three at once beside the rest
    ran a 23 GB host out of memory (the kernel killed workers)."""
    workdir = tmp_path_factory.mktemp("kserve-engine")
    if key_file:
        shutil.copy(key_file, workdir / "key_file.json")
    engine = KServeEngine(store, str(workdir), *free_ports(2), max_request_size=max_request_size)
    with FileLock(str(run_dir(tmp_path_factory) / "kserve-engine.lock")):
        engine.start(models)
        try:
            engine.wait_ready(models, timeout=180)
            yield engine
        finally:
            engine.stop()


@pytest.fixture(scope="module")
def kserve_engine(tmp_path_factory, server):
    """The engine serving the one-shot models with the shared TorchServe's key and max_request_size."""
    with engine_running(tmp_path_factory, ONE_SHOT, server.key_file, int(server.props["max_request_size"])) as engine:
        yield engine


@pytest.fixture(scope="module")
def kserve_generator(tmp_path_factory):
    """The engine serving the text generators alone (tests/integration/test_kserve_generator.py)."""
    with engine_running(tmp_path_factory, GENERATORS) as engine:
        yield engine


@pytest.fixture(scope="module", params=["torchserve", "kserve"])
def v2_server(request):
    """Either engine, for the clients' tests (both answer v2 and v1 at `inference_url` with `auth_headers`)."""
    return request.getfixturevalue("server" if request.param == "torchserve" else "kserve_engine")


@pytest.fixture(scope="module")
def generator_server(tmp_path_factory):
    """The served text generators alone (tests/integration/test_generator*.py): their worker decodes with two
    threads and holds ~1.4 GB, which no other module's server needs to carry. Per module: a session-long one in
    each xdist worker that ran a generator module (two: ~2.7 GB each with the JVM) stayed to the end of the suite
    and, beside the rest, ran the 23 GB host out of memory."""
    load = ",".join(f"{m}.mar" for m in GENERATORS)
    with running(private_server(str(tmp_path_factory.mktemp("torchserve_generator")), load_models=load)) as server:
        yield server


@pytest.fixture(scope="module")
def generator_client(generator_server):
    return Client(generator_server)


@pytest.fixture(scope="session")
def client(server):
    return Client(server)


def run_dir(tmp_path_factory):
    """This run's temp dir, shared by its xdist workers (each has a basetemp of its own below it)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def made_once(path, make):
    """`path`, made by `make()` by whichever xdist worker gets there first (the others wait for it)."""
    with FileLock(str(path) + ".lock"):
        if not path.exists():
            make()
    return path


@pytest.fixture(scope="module")
def mobilenet_2_0(tmp_path_factory) -> str:
    """mobilenet_v2 2.0 as `make archive-version MOBILENET_VERSION=2.0` builds it (nothing written into the repo),
    built once per run for both rollout modules (TorchServe's and the KServe engine's)."""
    from own_server import build_version_archive

    base = run_dir(tmp_path_factory) / "mobilenet_v2_2.0"
    archive = base / "store" / "mobilenet_v2_v2.0.mar"
    return str(made_once(archive, lambda: build_version_archive(str(base), str(base / "store"))))


@pytest.fixture(scope="module")
def generator_reference(tmp_path_factory):
    """{json.dumps(request): its greedy answer} for tests/generator_checks.py's PROMPTS (NEW tokens), and "long":
    PROMPTS[1]'s answer of LONG tokens: transformers' greedy generate in process on the model's declared source
    (the GGUF, dequantised as the build does) with the archive's tokenizer (the archive serves ONNX: its own
    folder holds no eager weights). Made once per run: both engines' generator modules read the same file."""
    path = run_dir(tmp_path_factory) / "generator_reference.json"
    made_once(path, lambda: path.write_text(json.dumps(greedy_references(tmp_path_factory.mktemp("smollm2_archive")))))
    return json.loads(path.read_text())


def greedy_references(folder) -> dict:
    import torch
    from transformers import AutoTokenizer

    from generator_checks import LONG, MODEL, NEW, PROMPTS
    from tskit.causal_lm import load_causal_lm
    from tskit.declaration import load as load_declaration

    with zipfile.ZipFile(os.path.join(REPO, "model_store", f"{MODEL}.mar")) as archive:
        archive.extractall(folder, [n for n in archive.namelist() if not n.endswith((".py", ".onnx", ".data"))])
    declaration = load_declaration(MODEL)
    model = load_causal_lm(declaration.source, declaration.folder).model
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)

    def generate(request: dict, new: int) -> str:
        if "messages" in request:
            ids = tokenizer.apply_chat_template(request["messages"], add_generation_prompt=True, tokenize=True,
                                                return_dict=False)
        else:
            ids = tokenizer(request["prompt"])["input_ids"]
        with torch.inference_mode():
            out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                 max_new_tokens=new, do_sample=False)
        return tokenizer.decode(out[0, len(ids):], skip_special_tokens=True)

    return {json.dumps(p): generate(p, NEW) for p in PROMPTS} | {"long": generate(PROMPTS[1], LONG)}
