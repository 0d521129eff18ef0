"""Shared test helpers: real photos, image encoding, and a real TorchServe Context for handlers."""

import base64
import io
import json
import os
import zipfile
from typing import Dict, List, Optional, Tuple

import numpy as np
import yaml
from PIL import Image
from skimage import data as skimage_data
from ts.context import Context, RequestProcessor
from tskit import kinds

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL_STORE = os.path.join(REPO, "model_store")
CAT_LABELS = {"Egyptian cat", "tabby", "tiger cat"}


def photo(name: str) -> np.ndarray:
    """A real photo from scikit-image (HxWx3 uint8, or HxW for gray ones)."""
    return getattr(skimage_data, name)()


def encode(array_or_image, fmt: str = "JPEG", **save_kwargs) -> bytes:
    image = array_or_image if isinstance(array_or_image, Image.Image) else Image.fromarray(array_or_image)
    buffer = io.BytesIO()
    image.save(buffer, fmt, **save_kwargs)
    return buffer.getvalue()


def extract_archive(mar_name: str, dest: str, store: str = MODEL_STORE) -> Tuple[str, dict, dict]:
    """Unpack a .mar built by the Makefile: (model_dir, manifest, model-config.yaml)."""
    path = os.path.join(store, mar_name)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} is missing: run `make archives` first")
    with zipfile.ZipFile(path) as archive:
        archive.extractall(dest)
    with open(os.path.join(dest, "MAR-INF", "MANIFEST.json"), encoding="utf-8") as f:
        manifest = json.load(f)
    with open(os.path.join(dest, manifest["model"]["configFile"]), encoding="utf-8") as f:
        model_config = yaml.safe_load(f)
    return dest, manifest, model_config


def served_model(mar_name: str, dest: str):
    """The model of a built archive, loaded as its worker loads it (format from its model-config.yaml)."""
    import torch

    from handlers.model_formats import load_model

    model_dir, manifest, model_config = extract_archive(mar_name, dest)
    handler = model_config.get("handler", {})
    return load_model(os.path.join(model_dir, manifest["model"]["serializedFile"]), handler.get("modelFormat", "torchscript"),
                      torch.device("cpu"), threads=1, optimize=handler.get("optimizeForInference", True))


def make_context(model_dir: str, manifest: dict, model_config: dict, gpu: Optional[int] = None) -> Context:
    """The same Context class TorchServe's worker builds (ts.model_loader)."""
    return Context(manifest["model"]["modelName"], model_dir, manifest, model_config.get("batchSize", 1),
                   gpu, "0.12.0", model_yaml_config=model_config)


HTTP_HEADERS = {"Host": "127.0.0.1:8080"}  # every HTTP request has some; a gRPC request has none


def request_batch(context: Context, requests: List[Tuple], headers: Optional[List[Dict[str, str]]] = None) -> List[Dict]:
    """Rows as TorchServe hands them to handle(): [{key: value}], with each part's content type and the
    request-level headers recorded on the context as the worker does (Service.retrieve_data_for_inference).
    Requests get `headers` (default: a Host header, as every HTTP request has; gRPC requests have none)."""
    rows, processors = [], []
    for (key, value, content_type), request_headers in zip(requests, headers or [HTTP_HEADERS] * len(requests)):
        rows.append({key: value})
        processors.append(RequestProcessor({key: {"content-type": content_type or ""}, **request_headers}))
    context.request_processor = processors
    return rows


def responses(context: Context, outputs: List[bytes]) -> List[Tuple[int, dict]]:
    """(status, JSON body) per request, as the worker would send them."""
    return [(context.get_response_status(i)[0], json.loads(out)) for i, out in enumerate(outputs)]


STRIKER = "The striker scored twice in the final"


def v2_input(kind: str, binary: bool):
    """(a v2 BYTES element for tritonclient or KServe's SDK, the same input in the plain form: (body,
    content type)). A binary element is the raw image or text; a JSON one must be UTF-8, so an image goes
    as its base64 text, like the plain form's {"image": ...}."""
    if kinds.kind(kind).model_input.takes_photos:
        jpeg = encode(photo("chelsea"))
        return (jpeg if binary else base64.b64encode(jpeg)), (jpeg, "image/jpeg")
    return STRIKER.encode(), (STRIKER.encode(), "text/plain; charset=utf-8")


def v2_case(client, model: str, kind: str, binary: bool):
    """Where a v2 client test starts (tritonclient, KServe's SDK): (the model's workers, the v2 element, the
    plain API's answer to the same input, the outputs to ask for: an embedding's, or a classifier's labels and
    probabilities)."""
    before = worker_ids(client, model)
    element, (body, content_type) = v2_input(kind, binary)
    reference = client.predict(model, body, content_type)
    assert reference.status_code == 200, reference.text
    names = ["embedding", "truncated"] if kind == "text-embedding" else ["labels", "probabilities"]
    return before, element, reference.json(), names


def load_handler(cls, mar: str, dest: str, **handler_settings):
    """A handler initialised from a built archive as its worker would be, with `handler_settings` over the
    archive's own; (handler, (model_dir, manifest, model-config))."""
    model_dir, manifest, config = extract_archive(mar, dest)
    config = dict(config, handler=dict(config.get("handler") or {}, **handler_settings))
    handler = cls()
    handler.initialize(make_context(model_dir, manifest, config))
    return handler, (model_dir, manifest, config)


def worker_ids(client, model: str):
    """(id, pid) of each worker of a model's default version: equal before and after = no restart."""
    return sorted((w["id"], w["pid"]) for w in client.describe(model)["workers"])
