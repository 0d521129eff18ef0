"""The models block of config.properties (`load_models` and `models=`), written from the declarations.

The block sits between two marker lines; everything else in config.properties is the user's. The
archive's model-config.yaml wins over `models=` where both set a key, so both carry the same values;
`models=` still matters for what model-config.yaml cannot say (the archive file name per version).
Writing it also checks that every served model's answer budget (`handler.maxResponseBytes`) fits the
server's `max_response_size`: an answer above it makes the frontend fail the worker's whole message;
and that the worst case of queued bodies fits the frontend's heap (tskit.admission).
"""

import json
import os
from typing import List

from tskit.admission import check_heap
from tskit.declaration import REPO, Declaration, DeclarationError
from tskit.properties import parse_properties

CONFIG = os.path.join(REPO, "config.properties")
BEGIN = "# ---- models: written by `make config` from models/*/model.yaml; edit those, not these lines ----"
END = "# ---- end of models ----"
TORCHSERVE_MAX_RESPONSE_SIZE = 6553500  # TorchServe's default when config.properties does not set it


def models_block(declarations: List[Declaration]) -> str:
    entries = {
        d.name: {d.version: dict(marName=f"{d.name}.mar", **d.registration())} for d in declarations
    }
    body = json.dumps(entries, indent=2).replace("\n", "\\\n")
    return "\n".join([BEGIN, f"load_models={','.join(d.name + '.mar' for d in declarations)}",
                      f"models={body}", END])


def with_models_block(text: str, declarations: List[Declaration]) -> str:
    """config.properties text with its models block replaced (or appended when it has none)."""
    block = models_block(declarations)
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


def write_config(declarations: List[Declaration], path: str = CONFIG) -> bool:
    """Rewrite the block; True when the file changed."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    check_response_budgets(text, declarations)
    check_heap(text, declarations)
    updated = with_models_block(text, declarations)
    if updated != text:
        with open(path, "w", encoding="utf-8") as f:
            f.write(updated)
    return updated != text
