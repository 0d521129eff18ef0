"""The bench's inputs and how one is sent to a server: real photos at realistic sizes, texts of three
lengths (each also as the JSON body LitServe takes), and a load point over one of them (wrk when
installed, else the Python load generator). Shared by make bench, make tune and their tests.
"""

import base64
import json
import os
from typing import Dict, Optional

from PIL import Image

from tskit.load import AnswerCheck, LoadResult, run_python, run_wrk, wrk_available
from tskit import kinds

TEXTS = {
    "short": "The striker scored twice in the final",
    "medium": ("Central bank officials signalled on Tuesday that interest rates would stay higher for longer, "
               "sending bond yields to their highest level in a decade while stocks in Asia and Europe slipped "
               "and the dollar strengthened against most major currencies."),
    "long": " ".join(["Researchers measured how the new battery chemistry ages over thousands of charge cycles, "
                      "reporting that capacity loss slowed markedly after the first few hundred cycles."] * 12),
}
# The family of each input (make_inputs' files; its JSON form json_<name> shares it)
INPUT_FAMILY = {"jpeg_640x480": "vision", "jpeg_2048x1536": "vision", **{f"text_{name}": "text" for name in TEXTS}}
# Looked up from tskit.kinds (each kind's module names its bench input), for the kinds the bench has inputs for:
# the family of the inputs a kind's model takes, and the input each kind's formats are compared on (and J, L),
# the package's typical request.
WORKLOAD_KIND = {k.name: INPUT_FAMILY[k.bench_workload] for k in kinds.with_bench_inputs()}
MAIN_WORKLOAD = {k.name: k.bench_workload for k in kinds.with_bench_inputs()}

def make_inputs(directory: str) -> Dict[str, dict]:
    """Request bodies on disk: real photos at realistic sizes, and texts of three lengths; each also as
    the JSON body LitServe takes ({"image": base64} / {"text": ...}) under json_<name>."""
    from skimage import data as skimage_data

    os.makedirs(directory, exist_ok=True)
    workloads = {}
    photo = Image.fromarray(skimage_data.chelsea())
    for name, size in (("jpeg_640x480", (640, 480)), ("jpeg_2048x1536", (2048, 1536))):
        path = os.path.join(directory, f"{name}.jpg")
        photo.resize(size, Image.Resampling.LANCZOS).save(path, "JPEG", quality=90)
        workloads[name] = {"path": path, "content_type": "image/jpeg", "kind": INPUT_FAMILY[name]}
    for name, text in TEXTS.items():
        path = os.path.join(directory, f"text_{name}.txt")
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        workloads[f"text_{name}"] = {"path": path, "content_type": "text/plain; charset=utf-8",
                                     "kind": INPUT_FAMILY[f"text_{name}"]}
    for name, workload in list(workloads.items()):
        with open(workload["path"], "rb") as f:
            raw = f.read()
        document = ({"image": base64.b64encode(raw).decode()} if workload["kind"] == "vision"
                    else {"text": raw.decode("utf-8")})
        path = os.path.join(directory, f"{name}.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(document, f)
        workloads[f"json_{name}"] = {"path": path, "content_type": "application/json", "kind": workload["kind"],
                                     "json": True}
    return workloads


def load_url(url: str, token: Optional[str], workload: dict, concurrency: int, seconds: float,
             generator: str = "auto", check: Optional[AnswerCheck] = None) -> LoadResult:
    if generator == "auto":
        generator = "wrk" if wrk_available() else "python"
    if generator == "wrk":
        return run_wrk(url, workload["path"], workload["content_type"], token, concurrency, seconds, check=check)
    with open(workload["path"], "rb") as f:
        body = f.read()
    return run_python(url, body, workload["content_type"], token, concurrency, seconds, check=check)


def load_point(server, model: str, workload: dict, concurrency: int, seconds: float,
               generator: str = "auto", check: Optional[AnswerCheck] = None) -> LoadResult:
    """Load `model` with one of the bench's inputs; generator "auto" is wrk when installed."""
    client = server.client()
    return load_url(client.prediction_url(model), client.key("inference"), workload, concurrency, seconds, generator,
                    check)
