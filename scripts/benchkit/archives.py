"""Copies of built archives for the bench's variants (renamed, files edited on the way). What an archive serves,
unpacked, and its handler in process are tskit.unpacked's.
"""

import json
import os
import zipfile
from typing import Callable, Dict, Optional

from tskit.declaration import REPO

STORE = os.path.join(REPO, "model_store")


def copy_archive(model: str, store: str, name: str,
                 edits: Optional[Dict[str, Callable[[bytes], bytes]]] = None, source_store: str = STORE) -> str:
    """<source_store>/<model>.mar (default model_store/) copied to <store>/<name>.mar and renamed to model
    `name`, each file named in `edits` passed through its function on the way; returns the copy's path."""
    target = os.path.join(store, f"{name}.mar")
    with zipfile.ZipFile(os.path.join(source_store, f"{model}.mar")) as source, \
            zipfile.ZipFile(target, "w") as copy:
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
