"""benchkit.account's `categorize` on hand-written py-spy raw stacks, and scripts/account.py's --help."""
import os
import subprocess
import sys

import pytest

from benchkit.account import FRONTEND_NAMES, NAMES, OTHER, categorize, frontend_split, thread_names, thread_category

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ROOT = ("<module> (ts/model_service_worker.py:301);TorchModelServiceWorker.run_server (ts/model_service_worker.py:268);"
        "TorchModelServiceWorker.handle_connection (ts/model_service_worker.py:187)")
HANDLER = ROOT + ";Service.predict (ts/service.py:126);BatchHandler.handle (batch_handler.py:234)"
RAW = [
    HANDLER + ";BatchHandler.inference (batch_handler.py:227);OnnxModel.__call__ (model_formats.py:89);"
              "Session.run (onnxruntime/capi/onnxruntime_inference_collection.py:395) 50",
    HANDLER + ";decode_rgb (image_decoding.py:130);decode_image (torchvision/io/image.py:472);"
              "OpOverloadPacket.__call__ (torch/_ops.py:1350) 10",
    HANDLER + ";resize_and_crop (image_transforms.py:30);resize (torchvision/transforms/v2/functional/_geometry.py:263) 8",
    HANDLER + ";encode (text_tokenization.py:80) 6",
    ROOT + ";_retrieve_request (ts/protocol/otf_message_handler.py:280);_retrieve_buffer "
           "(ts/protocol/otf_message_handler.py:181) 4",
    HANDLER + ";BatchHandler.handle_batch (batch_handler.py:252);Logger.info (logging/__init__.py:1489) 3",
    HANDLER + ";HandlerMetrics._emit (handler_metrics.py:51);CachingMetric.add_or_update (ts/metrics/caching_metric.py:142) 2",
    HANDLER + ";top_k_predictions (classification.py:39) 2",
    HANDLER + ";BatchHandler.handle_batch (batch_handler.py:253);copy (torch/_tensor.py:10) 5",  # the handler's own
    ROOT + ";mystery (somewhere/else.py:1) 10",  # under the loop, but in no category's frames: the loop's own work
]


def test_shares_are_exact():
    shares = categorize(RAW)
    assert shares == pytest.approx({"model": 0.5, "image decode": 0.1, "resize and normalise": 0.08, "tokenize": 0.06,
                                    "TorchServe worker loop and protocol": 0.14, "logging": 0.03, "metrics": 0.02,
                                    "answer": 0.02, "other": 0.05})
    assert sum(shares.values()) == pytest.approx(1.0)
    assert set(shares) == set(NAMES)


def test_unknown_frames_are_other():
    shares = categorize(["main (app.py:1);work (lib/thing.py:2) 7", "f (x/y.py:3) 3", "not a sample line", ""])
    assert shares[OTHER] == 1.0
    assert sum(shares.values()) == pytest.approx(1.0)


def test_no_samples():
    assert categorize([]) == {name: 0.0 for name in NAMES}


def test_door_help():
    out = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "account.py"), "--help"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "--seconds" in out.stdout and "--concurrency" in out.stdout and "--out" in out.stdout
    assert "--set" in out.stdout


# a JDK 17 `jcmd <pid> Thread.print`, trimmed: Java threads carry "#N", the VM's own threads do not
DUMP = """
"epollEventLoopGroup-3-1" #20 prio=10 os_prio=0 cpu=812.10ms elapsed=40.00s tid=0x00007f0 nid=0x3e9 runnable  [0x1]
"W-9000-mobilenet_v2_1.0" #31 prio=5 os_prio=0 cpu=400.00ms elapsed=39.00s tid=0x00007f1 nid=0x3ea waiting on condition
"W-9000-mobilenet_v2_1.0-stdout" #33 prio=5 os_prio=0 cpu=90.00ms elapsed=39.00s tid=0x00007f2 nid=0x3eb runnable
"GC Thread#0" os_prio=0 cpu=120.00ms elapsed=41.00s tid=0x00007f3 nid=0x3ec runnable
"C2 CompilerThread0" #14 daemon prio=9 os_prio=0 cpu=3000.00ms elapsed=41.00s tid=0x00007f4 nid=0x3ed waiting on condition
"pool-2-thread-1" #40 prio=5 os_prio=0 cpu=5.00ms elapsed=30.00s tid=0x00007f5 nid=0x3ee waiting on condition
"""


def test_frontend_threads_by_name():
    names = thread_names(DUMP)
    assert names == {0x3e9: "epollEventLoopGroup-3-1", 0x3ea: "W-9000-mobilenet_v2_1.0",
                     0x3eb: "W-9000-mobilenet_v2_1.0-stdout", 0x3ec: "GC Thread#0", 0x3ed: "C2 CompilerThread0",
                     0x3ee: "pool-2-thread-1"}
    assert [thread_category(names[t]) for t in sorted(names)] == [
        "netty event loops (HTTP and worker sockets)", "batching and worker IPC (W- threads)",
        "worker log readers (stdout/stderr)", "garbage collection", "JIT compiler", "other threads"]


def test_frontend_split_counts_what_each_thread_used_in_the_window():
    names = thread_names(DUMP)
    before = {0x3e9: 1.0, 0x3ea: 0.5, 0x3ec: 0.2}
    after = {0x3e9: 3.5, 0x3ea: 1.5, 0x3ec: 0.2, 0x3ef: 0.25}  # 0x3ef: born in the window, unnamed
    split = frontend_split(names, before, after)
    assert set(split) == set(FRONTEND_NAMES)
    assert split["netty event loops (HTTP and worker sockets)"] == pytest.approx(2.5)
    assert split["batching and worker IPC (W- threads)"] == pytest.approx(1.0)
    assert split["garbage collection"] == 0 and split["other threads"] == pytest.approx(0.25)


def test_the_input_is_the_kinds_unless_named(tmp_path):
    from benchkit.account import workload_of

    default = workload_of("minilm_topics", str(tmp_path))
    short = workload_of("minilm_topics", str(tmp_path), "text_short")
    assert default["name"] == "text_medium" and short["name"] == "text_short"
    assert os.path.getsize(short["path"]) < os.path.getsize(default["path"])
    with pytest.raises(SystemExit, match="no bench input 'text_tiny': one of jpeg_640x480"):
        workload_of("minilm_topics", str(tmp_path), "text_tiny")
