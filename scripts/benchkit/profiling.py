"""make profile's engine (scripts/profile_model.py is its command): torch.profiler over a served model under load.

The model's built archive is served (a private TorchServe: own ports and TEMP) as a copy whose
declaration-level setting `handler.profileBatches` is N (tskit.respec); load from several threads with
real inputs in the plain form (photos as JPEG, or headlines as text) runs until every worker has
written its profile of N batches (handlers/batch_profiler.py): a Chrome trace and a table of the top
operators per worker, in build/profile/<name>/profiles/. The served archives themselves are not
changed, and with profileBatches 0 (their default) the handler pays one integer test per batch.
"""

import glob
import os
import shutil
import sys
import time
from typing import List

from benchkit.agreement import Probe, headlines
from tskit import declaration as declarations
from tskit.closed_loop import Job, Loop
from tskit import kinds
from tskit.respec import with_settings
from tskit.server import private_server, running


def profile(name: str, batches: int, work: str, store: str, concurrency: int = 8, timeout: float = 600) -> List[str]:
    """The `.top.txt` files written (one per worker) once every worker has profiled `batches` batches."""
    declaration = declarations.load(name)
    work, store = os.path.abspath(work), os.path.abspath(store)  # the server runs in its own working dir
    shutil.rmtree(work, ignore_errors=True)
    folder, served = os.path.join(work, "profiles"), os.path.join(work, "model_store")
    os.makedirs(served)
    with_settings(os.path.join(store, f"{name}.mar"), os.path.join(served, f"{name}.mar"),
                  handler={"profileBatches": batches, "profileDir": folder})
    workers = int(declaration.torchserve.get("minWorkers", 1))
    server = private_server(os.path.join(work, "server"), model_store=served, load_models=f"{name}.mar")
    with running(server, [name]):
        drive(server.client(), name, inputs(declaration.kind), concurrency,
              until=lambda: len(glob.glob(os.path.join(folder, "*.top.txt"))) >= workers, timeout=timeout)
    return sorted(glob.glob(os.path.join(folder, "*.top.txt")))


def inputs(kind: str) -> List[Probe]:
    """What a client sends, in the plain form with the model's default parameters: real photos as raw
    JPEG, or the labelled headlines as text/plain."""
    if kinds.kind(kind).model_input.takes_photos:
        from tskit.real_images import agreement_images

        return [Probe(name, data, "image/jpeg") for name, data in agreement_images(100)]
    return [Probe(f"headline {i}", text.encode(), "text/plain; charset=utf-8") for i, (_, text) in enumerate(headlines())]


def drive(client, name: str, inputs, concurrency: int, until, timeout: float) -> None:
    """Send the inputs in turn from the one closed loop (tskit.closed_loop) at `concurrency` until `until()`
    is true; failed requests are reported, not raised: the profiles are what this load is for."""
    url = client.prediction_url(name)

    def job(index: int) -> Job:
        probe = inputs[index % len(inputs)]
        return Job(url, probe.body, probe.content_type)

    deadline = time.monotonic() + timeout
    with Loop(job, concurrency, key=lambda: client.key("inference") or "", timeout=client.timeout) as load:
        while not until() and time.monotonic() < deadline:
            time.sleep(0.5)
    failed = [o.error for o in load.outcomes if o.error]
    if failed:
        print(f"profile load: {len(failed)} of {len(load.outcomes)} requests failed, the first: {failed[0]}",
              file=sys.stderr)
    if not until():
        raise TimeoutError(f"no complete profile from every worker of {name} within {timeout:g} s")
