"""The models block of config.properties (`load_models` and `models=`), written from the declarations.

The block sits between two marker lines; everything else in config.properties is the user's. The
archive's model-config.yaml wins over `models=` where both set a key, so both carry the same values;
`models=` still matters for what model-config.yaml cannot say (the archive file name per version).
Writing it also checks that every served model's answer budget (`handler.maxResponseBytes`) fits the
server's `max_response_size`: an answer above it makes the frontend fail the worker's whole message;
and shares the frontend's heap budget among the served models' queues (tskit.admission), stamping each
share into the model's archive (tskit.archive_queue: TorchServe 0.12 reads a queue only from there) and
naming it in a comment of the block. A model whose folder is gone is gone from the block.
"""

import json
import os
from typing import List, Optional

from filelock import FileLock

from tskit.admission import ModelAdmission, check_heap, wait_fraction
from tskit.archive_queue import stamp_queue
from tskit.declaration import REPO, Declaration, DeclarationError
from tskit.properties import parse_properties

CONFIG = os.path.join(REPO, "config.properties")
STORE = os.path.join(REPO, "model_store")
BEGIN = "# ---- models: written by `make config` from models/*/model.yaml; edit those, not these lines ----"
END = "# ---- end of models ----"
TORCHSERVE_MAX_RESPONSE_SIZE = 6553500  # TorchServe's default when config.properties does not set it


def queues_comment(queues: List[ModelAdmission]) -> str:
    """The queues the archives were stamped with, for a reader of config.properties (TorchServe ignores it)."""
    listed = ", ".join(f"{q.name} {q.queue}" for q in queues)
    return (f"# queues, stamped into each archive by `make config` (tskit.admission: {wait_fraction(queues):.0%} "
            f"of each model's stated wait): {listed}")


def models_block(declarations: List[Declaration], queues: Optional[List[ModelAdmission]] = None) -> str:
    entries = {
        d.name: {d.version: dict(marName=f"{d.name}.mar", **d.registration())} for d in declarations
    }
    body = json.dumps(entries, indent=2).replace("\n", "\\\n")
    lines = [BEGIN] + ([queues_comment(queues)] if queues else [])
    return "\n".join(lines + [f"load_models={','.join(d.name + '.mar' for d in declarations)}",
                              f"models={body}", END])


def with_models_block(text: str, declarations: List[Declaration],
                      queues: Optional[List[ModelAdmission]] = None) -> str:
    """config.properties text with its models block replaced (or appended when it has none)."""
    block = models_block(declarations, queues)
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        return head + block + tail
    return text.rstrip("\n") + "\n\n" + block + "\n"


def max_response_size(text: str) -> int:
    """config.properties' max_response_size (TorchServe's default when absent)."""
    return int(parse_properties(text).get("max_response_size", TORCHSERVE_MAX_RESPONSE_SIZE))


def check_response_budgets(text: str, declarations: List[Declaration]) -> None:
    """DeclarationError naming the model whose answers may be larger than the server sends."""
    limit = max_response_size(text)
    for declaration in declarations:
        budget = declaration.settings().maxResponseBytes
        if budget > limit:
            raise DeclarationError(f"{declaration.path}: handler.maxResponseBytes {budget} is above config.properties' "
                                   f"max_response_size {limit}: lower it (or raise max_response_size)")


def check_config(text: str, declarations: List[Declaration]) -> List[ModelAdmission]:
    """Everything `make config` checks, before anything is written: each model's queue, or DeclarationError."""
    check_response_budgets(text, declarations)
    return check_heap(text, declarations)


def write_config(declarations: List[Declaration], path: str = CONFIG, store: str = STORE) -> bool:
    """Stamp each served archive in `store` with its queue and rewrite the block; True when the file changed.
    One writer at a time (several `make model` may run at once): the lock file beside the config."""
    with FileLock(path + ".lock"):
        with open(path, encoding="utf-8") as f:
            text = f.read()
        queues = check_config(text, declarations)
        for queue in queues:
            mar = os.path.join(store, f"{queue.name}.mar")
            if os.path.exists(mar):  # one not built yet is stamped by the `make config` after its build
                stamp_queue(mar, queue.queue)
        updated = with_models_block(text, declarations, queues)
        if updated != text:
            with open(path, "w", encoding="utf-8") as f:
                f.write(updated)
    return updated != text
