"""The engines the HTTP fuzz suite (test_http_fuzz.py) runs against, as one shape: where to send, the body limit,
the serving processes (settled: a restart changes them) and the handlers' batch log."""

import os
import re
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Tuple

import http_fuzz as hm


def settled_workers(client, models=hm.MODELS, quiet: float = 2.0, timeout: float = 120) -> Dict[str, List[Tuple[str, int]]]:
    """(id, pid) of every worker of each model, `quiet` seconds after the last request and once all are
    READY and stay so for a second: the frontend marks a dead worker UNLOADING up to ~2 s after its
    "Worker died." answer and shows its old pid until the new one is up, so an early look misses it."""
    time.sleep(quiet)
    deadline = time.monotonic() + timeout
    last = None
    while True:
        described = {m: client.describe(m) for m in models}
        ready = all(len(d["workers"]) >= d["minWorkers"] and all(w["status"] == "READY" for w in d["workers"])
                    for d in described.values())
        now = {m: sorted((w["id"], w["pid"]) for w in d["workers"]) for m, d in described.items()}
        if ready and now == last:
            return now
        if time.monotonic() > deadline:
            raise TimeoutError(f"workers not all READY and steady within {timeout:g} s: {described}")
        last = now if ready else None
        time.sleep(1)


@dataclass
class Target:
    """An engine under fuzzing: where to send, its limits, its serving processes and its handlers' batch log."""

    name: str
    url: str
    token: str
    max_request_size: int
    workers: Callable[[float], dict]  # quiet seconds -> the serving processes, settled
    log_path: str
    log_pattern: str  # one (size, invalid) per batch; {model} is the model's name, escaped

    def batches(self, model: str) -> List[Tuple[int, int]]:
        """(size, invalid) of every batch the model's handler logged."""
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            log = f.read()
        return [(int(n), int(bad)) for n, bad in re.findall(self.log_pattern.format(model=re.escape(model)), log)]


def torchserve_target(client, server) -> Target:
    return Target("torchserve", server.inference_url, server.keys()["inference"], int(server.props["max_request_size"]),
                  lambda quiet: settled_workers(client, quiet=quiet), server.model_log,
                  r"-{model}_[0-9.]+-stdout MODEL_LOG - handled batch size=(\d+) invalid=(\d+)")


def kserve_target(engine) -> Target:
    """The KServe engine: one process serves every model (its pid is what must not change)."""
    def workers(quiet: float) -> dict:
        time.sleep(quiet)
        return {"engine": engine.pid()}

    return Target("kserve", engine.inference_url, engine.auth_headers()["Authorization"].removeprefix("Bearer "),
                  engine.max_request_size, workers, os.path.join(engine.workdir, "logs", "kserve_engine.log"),
                  r"\[{model}\] \S+ INFO handled batch size=(\d+) invalid=(\d+)")
