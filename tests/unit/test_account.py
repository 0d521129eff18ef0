"""benchkit.account's `categorize` on hand-written py-spy raw stacks, and scripts/account.py's --help."""
import os
import subprocess
import sys

import pytest

from benchkit.account import NAMES, OTHER, categorize

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
