"""A copy of a built archive with other settings in its model-config.yaml (a .mar is a zip).

`make profile` serves a copy with `handler.profileBatches`; the tests and the bench serve copies with a
response cache. Nothing else in the archive changes, so the copy serves the same model.
"""

import json
import zipfile
from typing import Dict, Optional

import yaml


def with_settings(mar: str, out: str, handler: Optional[Dict[str, object]] = None,
                  torchserve: Optional[Dict[str, object]] = None) -> str:
    """Write `out`: `mar` with `handler` merged into model-config.yaml's handler section and `torchserve`
    into its top level; returns `out`."""
    with zipfile.ZipFile(mar) as source:
        manifest = json.loads(source.read("MAR-INF/MANIFEST.json"))
        config_name = manifest["model"]["configFile"]
        config = yaml.safe_load(source.read(config_name)) or {}
        config.update(torchserve or {})
        config["handler"] = dict(config.get("handler") or {}, **(handler or {}))
        with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as target:
            for info in source.infolist():
                data = yaml.safe_dump(config, sort_keys=False).encode() if info.filename == config_name \
                    else source.read(info.filename)
                target.writestr(info, data)
    return out
