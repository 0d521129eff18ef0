"""mobilenet_v2 through the real TorchServe: real photos, concurrency, batching, bad input, CLI."""

import base64
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from own_server import own_server
from support import CAT_LABELS, REPO, encode, photo
from videos import decoded_frames, make_video

MODEL = "mobilenet_v2"


def top1(response):
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    return response.json()["predictions"][0]["label"]


def test_cat_and_espresso(client):
    assert top1(client.predict(MODEL, encode(photo("chelsea")), "image/jpeg")) in CAT_LABELS
    assert top1(client.predict(MODEL, encode(photo("coffee")), "image/jpeg")) == "espresso"


def test_input_forms(client):
    jpeg = encode(photo("chelsea"))
    multipart = client.infer("POST", f"/predictions/{MODEL}", files={"data": ("cat.jpg", jpeg, "image/jpeg")})
    as_json = client.infer("POST", f"/predictions/{MODEL}",
                           json={"image": base64.b64encode(jpeg).decode(), "topk": 2})
    png = client.predict(MODEL, encode(photo("chelsea"), "PNG"), "image/png")
    assert top1(multipart) in CAT_LABELS and top1(png) in CAT_LABELS
    assert top1(as_json) in CAT_LABELS and len(as_json.json()["predictions"]) == 2


def test_concurrent_requests_are_batched_and_correct(client, server):
    photos = {"chelsea": CAT_LABELS, "coffee": {"espresso"}}
    bodies = {name: encode(photo(name)) for name in photos}
    jobs = [name for name in photos for _ in range(24)]
    before = len(client.batch_sizes(MODEL))
    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(lambda n: client.predict(MODEL, bodies[n], "image/jpeg"), jobs))
    for name, response in zip(jobs, answers):
        assert top1(response) in photos[name]
    sizes = client.batches_since(MODEL, before, len(jobs))
    # at least: the log is the session server's, shared with whatever else reached this model meanwhile
    assert sum(sizes) >= len(jobs), sizes
    assert max(sizes) > 1, f"no batch larger than 1 was formed: {sizes}"


def test_corrupt_image_among_good_ones(client, server):
    good = encode(photo("coffee"))
    # a JPEG cut in half claims the format and fails to decode; bytes of no image format are the wrong kind of body
    refused = {good[: len(good) // 2]: (400, "CorruptImage"), b"not an image at all": (415, "UnsupportedMediaType")}
    bodies = [good] * 12 + list(refused) * 3
    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(lambda b: client.predict(MODEL, b, "image/jpeg"), bodies))
    for body, response in zip(bodies, answers):
        if body is good:
            assert top1(response) == "espresso"
        else:
            status, error_type = refused[body]
            assert response.status_code == status, response.text
            error = response.json()
            assert set(error) == {"code", "type", "message"} and (error["code"], error["type"]) == refused[body]
    # no worker was lost on the way
    assert all(w["status"] == "READY" for w in client.describe(MODEL)["workers"])


def test_error_body_and_status(client):
    response = client.predict(MODEL, b"", "image/jpeg")
    assert response.status_code == 400
    assert response.json() == {"code": 400, "type": "EmptyBody", "message": "the request body is empty: send the image bytes"}
    too_large = client.predict(MODEL, encode(__import__("PIL.Image").Image.new("1", (9000, 9000)), "PNG"), "image/png")
    assert too_large.status_code == 413 and too_large.json()["type"] == "ImageTooLarge"


def test_body_over_max_request_size_is_refused_by_the_frontend(client, server):
    limit = int(server.props["max_request_size"])
    response = client.predict(MODEL, b"\xff" * (limit + 1024), "image/jpeg")
    assert response.status_code == 413


def token_refused(response) -> bool:
    """TorchServe 0.12's token plugin answers a missing, wrong or expired token with 400, not 401."""
    return response.status_code == 400 and response.json()["type"] == "InvalidKeyException"


def test_requests_without_or_with_a_wrong_token_are_rejected(client):
    assert token_refused(client.manage("GET", "/models", auth=False))
    assert token_refused(client.manage("GET", "/models", headers={"Authorization": "Bearer wrong"}, auth=False))
    assert token_refused(client.predict(MODEL, encode(photo("chelsea")), "image/jpeg", auth=False))
    assert token_refused(client.infer("GET", "/ping", auth=False))
    assert client.infer("GET", "/ping").json() == {"status": "Healthy"}


def tsctl(server, *args, key_file=None):
    cmd = [sys.executable, os.path.join(REPO, "scripts", "tsctl.py"),
           "--inference-url", server.inference_url, "--management-url", server.management_url,
           "--key-file", key_file or server.key_file, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def test_cli_predicts_a_cat(server, tmp_path):
    path = tmp_path / "cat.jpg"
    path.write_bytes(encode(photo("chelsea")))
    result = tsctl(server, "predict", MODEL, str(path))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["predictions"][0]["label"] in CAT_LABELS


def test_cli_scales_workers_and_describe_shows_it(server, client):
    configured = client.describe(MODEL)["minWorkers"]
    target = configured + 1
    try:
        result = tsctl(server, "scale", MODEL, "--min", str(target), "--max", str(target))
        assert result.returncode == 0, result.stderr
        described = json.loads(tsctl(server, "describe", MODEL).stdout)[0]
        assert described["minWorkers"] == target
        assert [w["status"] for w in described["workers"]] == ["READY"] * target
        assert top1(client.predict(MODEL, encode(photo("coffee")), "image/jpeg")) == "espresso"
    finally:
        tsctl(server, "scale", MODEL, "--min", str(configured), "--max", str(configured))
    assert len(json.loads(tsctl(server, "describe", MODEL).stdout)[0]["workers"]) == configured


def test_cli_lists_and_reports_errors_clearly(server):
    listed = tsctl(server, "list")
    assert listed.returncode == 0 and MODEL in listed.stdout
    missing = tsctl(server, "describe", "no_such_model")
    assert missing.returncode == 1 and "not found" in missing.stderr and "Traceback" not in missing.stderr
    down = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "tsctl.py"),
                           "--inference-url", "http://127.0.0.1:9", "--key-file", server.key_file, "ping"],
                          capture_output=True, text=True, timeout=60)
    assert down.returncode == 1 and "cannot connect" in down.stderr


def test_cli_rotates_a_key_only_when_asked(tmp_path):
    # Renewal rotates the server's key under every other client: a server of this test's own, never the
    # session's. A key file whose inference key is stale but not expired is an error naming the file, and
    # the server's key stays; `tsctl token inference` renews it on purpose.
    with own_server(str(tmp_path), models=[]) as server:
        def server_key():
            return json.loads(open(server.key_file, encoding="utf-8").read())["inference"]["key"]

        keys = json.loads(open(server.key_file, encoding="utf-8").read())
        original = keys["inference"]["key"]
        stale_file = tmp_path / "key_file.json"
        stale_file.write_text(json.dumps(dict(keys, inference=dict(keys["inference"], key="stale-key"))))
        refused = tsctl(server, "ping", key_file=str(stale_file))
        assert refused.returncode == 1 and "rejected the inference key" in refused.stderr, refused.stderr
        assert "Traceback" not in refused.stderr
        assert server_key() == original  # nothing rotated
        assert "stale-key" in stale_file.read_text()

        renewed = tsctl(server, "token", "inference")
        assert renewed.returncode == 0, renewed.stderr
        assert server_key() != original  # TorchServe wrote the new key to its key file
        old_key = requests.get(f"{server.inference_url}/ping", headers={"Authorization": f"Bearer {original}"},
                               timeout=30)
        assert token_refused(old_key), old_key.text
        pinged = tsctl(server, "ping")
        assert pinged.returncode == 0 and "Healthy" in pinged.stdout, pinged.stderr


def test_register_from_outside_the_model_store_is_refused(client):
    before = [m["modelName"] for m in client.manage("GET", "/models").json()["models"]]
    response = client.manage("POST", "/models", params={"url": "https://example.com/evil.mar"})
    # refused by allowed_urls before anything is fetched (TorchServe answers 404 ModelNotFoundException)
    assert response.status_code == 404, response.text
    assert "does not match any allowed URL" in response.json()["message"], response.json()
    assert [m["modelName"] for m in client.manage("GET", "/models").json()["models"]] == before


def test_frontend_logs_without_per_request_chatter(client, server):
    """log4j2.xml (config.properties vmargs) is in force: start-up and model loading are logged,
    the handler's per-batch lines reach model_log.log, the stock per-request and per-batch lines are gone."""
    assert top1(client.predict(MODEL, encode(photo("chelsea"), "JPEG"), "image/jpeg")) in CAT_LABELS
    with open(server.server_log, encoding="utf-8", errors="replace") as f:
        ts_log = f.read()
    assert f"Model {MODEL} loaded." in ts_log
    for stock_chatter in ("Sending response for jobId", "Backend response time", "Waiting time ns"):
        assert stock_chatter not in ts_log, stock_chatter
    assert client.batch_sizes(MODEL)
    with open(server.model_log, encoding="utf-8", errors="replace") as f:  # TorchServe's per-batch line is dropped
        assert "Backend received inference at" not in f.read()  # in the worker (handlers/worker_log.py)


# ---- video, frame by frame (handlers/video_batch_handler.py): mobilenet_v2 has 2 workers and no continuous
# batching, so a video streams from the worker it holds while the other takes photos --------------------------
def frame_photo_answer(client, image):
    """The answer the same picture gets as a lossless photo."""
    response = client.predict(MODEL, encode(image.permute(1, 2, 0).numpy(), "PNG"), "image/png")
    assert response.status_code == 200, response.text
    return response.json()["predictions"]


def same_predictions(line, expected):
    assert [p["index"] for p in line["predictions"]] == [p["index"] for p in expected]
    assert [p["probability"] for p in line["predictions"]] == pytest.approx([p["probability"] for p in expected],
                                                                           abs=1e-5)


def test_a_video_is_streamed_frame_by_frame_each_frame_answered_as_its_photo(client):
    clip = make_video(("chelsea", "coffee", "astronaut") * 4, 1.0, 5, "mp4")  # 12 s: 12 answered frames
    response = client.predict(MODEL, clip, "video/mp4", stream=True)
    assert response.status_code == 200 and response.headers["content-type"] == "application/x-ndjson"
    chunks = [chunk for chunk in response.iter_content(chunk_size=None)]
    # the lines come as the frames are done: 8 frames a step (videoFramesPerStep), then the rest and the end
    assert [[json.loads(line).get("frame") for line in chunk.decode().splitlines()] for chunk in chunks] == [
        list(range(8)), [8, 9, 10, 11, None]]
    lines = [json.loads(line) for chunk in chunks for line in chunk.decode().splitlines()]
    assert lines[-1] == {"frames": 12, "done": True}
    for line, (seconds, image) in zip(lines, decoded_frames(clip, 1.0)):
        assert line["time"] == seconds
        same_predictions(line, frame_photo_answer(client, image))


@pytest.mark.parametrize("container", ["webm", "mkv"])
def test_webm_and_matroska_as_json_answered_whole(client, container):
    clip = make_video(("coffee", "chelsea"), 1.0, 4, container)
    body = {"video": base64.b64encode(clip).decode(), "sample_fps": 2, "stream": False, "topk": 2}
    response = client.infer("POST", f"/predictions/{MODEL}", json=body)
    assert response.status_code == 200 and response.headers["content-type"] == "application/x-ndjson"
    assert "transfer-encoding" not in response.headers  # one body, not a stream
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert [line.get("time") for line in lines] == [0.0, 0.5, 1.0, 1.5, None] and lines[-1]["frames"] == 4
    for line, (_, image) in zip(lines, decoded_frames(clip, 2.0)):
        same_predictions(line, frame_photo_answer(client, image)[:2])


def hostile_videos():
    big = make_video(("coffee",), 0.25, 4, "mp4", size=(4000, 2200))  # 8.8 MP frames: over maxFramePixels
    many = make_video(("coffee",), 80.0, 50, "mkv", size=(16, 16))     # 4,000 frames at sample_fps 0
    clip = make_video(("coffee",), 1.0, 4, "mp4")
    return [
        ("garbage", b"\x00\x00\x00\x18ftypmp42" + bytes(2000), "video/mp4", 400, "InvalidVideo"),
        ("an image as mp4", encode(photo("coffee")), "video/mp4", 400, "InvalidVideo"),
        ("truncated mp4", clip[: len(clip) // 2], "video/mp4", 400, "InvalidVideo"),
        ("avi", b"RIFF\x00\x00\x00\x00AVI LIST", "video/avi", 415, "UnsupportedMediaType"),
        ("huge frames", big, "video/mp4", 413, "VideoTooLarge"),
        ("4,000 frames", {"video": base64.b64encode(many).decode(), "sample_fps": 0}, "application/json", 413,
         "VideoTooLarge"),
        ("bad option", {"video": base64.b64encode(clip).decode(), "max_frames": -1}, "application/json", 400,
         "InvalidField"),
    ]


def test_hostile_videos_get_their_4xx_before_any_frame_and_the_workers_live(client):
    before = sorted(w["pid"] for w in client.describe(MODEL)["workers"])
    for what, body, content_type, status, error_type in hostile_videos():
        if isinstance(body, dict):
            response = client.infer("POST", f"/predictions/{MODEL}", json=body)
        else:
            response = client.predict(MODEL, body, content_type)
        assert (response.status_code, response.json()["type"]) == (status, error_type), (what, response.text)
        assert response.headers["content-type"].startswith("application/json")
    assert sorted(w["pid"] for w in client.describe(MODEL)["workers"]) == before
    assert top1(client.predict(MODEL, encode(photo("coffee")), "image/jpeg")) == "espresso"
