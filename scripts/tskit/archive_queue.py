"""A served archive's queue: `jobQueueSize` in the model-config.yaml inside its .mar.

TorchServe 0.12 takes a model's queue from its archive's model-config.yaml and otherwise from the
server-wide `job_queue_size` (frontend `wlm/Model.java`); config.properties' `models=` cannot set it. So
the share of the server's heap budget that `make config` gives each served model (tskit.admission) is
written into that model's archive here, and only there: the build writes no queue, and an archive that
has never been stamped (a version built for a rollout, an archive copied elsewhere) gets `job_queue_size`.

Archives are written uncompressed (`--archive-format zip-store`: the weights, nearly all of an archive,
deflate by only 8%), so a stamp rewrites a 90 MB archive in about half a second; it goes to a temporary
file beside the archive and replaces it in one rename, so a reader never sees half an archive.
"""

import os
import tempfile
import zipfile
from typing import Optional

import yaml

CONFIG_ENTRY = "model-config.yaml"
QUEUE_KEY = "jobQueueSize"
HEADER = "# Written by scripts/tskit; jobQueueSize by `make config`: this model's share of the server's queue budget.\n"


def read_config(mar: str) -> dict:
    """The archive's model-config.yaml as a mapping ({} when it has none)."""
    with zipfile.ZipFile(mar) as archive:
        if CONFIG_ENTRY not in archive.namelist():
            return {}
        return yaml.safe_load(archive.read(CONFIG_ENTRY)) or {}


def archive_queue(mar: str) -> Optional[int]:
    """The queue the archive sets, None when it sets none (TorchServe then applies job_queue_size)."""
    return read_config(mar).get(QUEUE_KEY)


def with_queue(config: dict, queue: int) -> bytes:
    """model-config.yaml's text with `queue`, placed among TorchServe's keys (before the handler's section)."""
    document = {k: v for k, v in config.items() if k not in (QUEUE_KEY, "handler")}
    document[QUEUE_KEY] = queue
    if "handler" in config:
        document["handler"] = config["handler"]
    return (HEADER + yaml.safe_dump(document, sort_keys=False)).encode("utf-8")


def stamp_queue(mar: str, queue: int) -> bool:
    """Set the archive's jobQueueSize to `queue`; False when it already says so (the file is left untouched).
    A symbolic link is replaced by a stamped copy: the archive it points to is not changed."""
    config = read_config(mar)
    if config.get(QUEUE_KEY) == queue:
        return False
    data = with_queue(config, queue)
    folder = os.path.dirname(os.path.abspath(mar))
    handle, temporary = tempfile.mkstemp(prefix=".stamp-", suffix=".mar", dir=folder)
    os.close(handle)
    try:
        with zipfile.ZipFile(os.path.realpath(mar)) as source, zipfile.ZipFile(temporary, "w") as copy:
            for info in source.infolist():
                copy.writestr(info, data if info.filename == CONFIG_ENTRY else source.read(info))
            if CONFIG_ENTRY not in source.namelist():
                copy.writestr(CONFIG_ENTRY, data)
        os.chmod(temporary, 0o644)
        os.replace(temporary, mar)
    except BaseException:
        os.unlink(temporary)
        raise
    return True
