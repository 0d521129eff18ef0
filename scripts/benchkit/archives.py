"""What a built .mar serves, unpacked: the model file, its format and the handler's typed settings.

(C), (J) and the LitServe peer all run the very file an archive serves, loaded with the handlers'
own loader (handlers/model_formats.load_model) and set up from the archive's model-config.yaml.
"""

import json
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from typing import Callable, Dict, Optional

import yaml

from tskit import kinds
from tskit.declaration import REPO


@dataclass
class Unpacked:
    folder: str
    model_name: str
    kind: str
    model_file: str
    config: dict  # model-config.yaml: TorchServe's keys at the top, `handler:` below

    @property
    def settings(self):
        return kinds.parse_settings(self.kind, self.config.get("handler"))

    @property
    def batch_size(self) -> int:
        return int(self.config.get("batchSize", 1))

    @property
    def max_batch_delay_ms(self) -> int:
        return int(self.config.get("maxBatchDelay", 100))

    @property
    def workers(self) -> int:
        return int(self.config.get("minWorkers", 1))

    def file(self, name: str) -> str:
        return os.path.join(self.folder, name)

    def cleanup(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def unpack(mar: str, folder: str = None) -> Unpacked:
    folder = folder or tempfile.mkdtemp(prefix="bench-mar-")
    with zipfile.ZipFile(mar) as archive:
        archive.extractall(folder)
    with open(os.path.join(folder, "MAR-INF", "MANIFEST.json"), encoding="utf-8") as f:
        manifest = json.load(f)["model"]
    config = {}
    if manifest.get("configFile"):
        with open(os.path.join(folder, manifest["configFile"]), encoding="utf-8") as f:
            config = yaml.safe_load(f) or {}
    kind = kinds.of_handler(os.path.basename(manifest["handler"])).name
    return Unpacked(folder, manifest["modelName"], kind, os.path.join(folder, manifest["serializedFile"]), config)


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
