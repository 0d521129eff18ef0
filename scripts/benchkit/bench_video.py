"""make bench's section (V): videos to every served image model (handlers/video_batch_handler.py, docs/video.md).

A 10 s 640x480 clip at 30 fps (real photos, one a second, H.264 in MP4), every frame answered (sample_fps 0):
  served   1 and 4 clients each sending the clip again and again for `seconds`, streamed NDJSON read to the end;
           frames answered per second over all of them; every answer checked: 300 frame lines, no `error` line,
           the done line, and each frame's top label equal to (J)'s for that frame (a detector or segmenter: the
           number of lines only);
  (J)      the whole job in process: the archive's own handler class, loaded from the archive as TorchServe's
           worker loads it (its settings, its model file, its pure modules), handed the same clip as a request
           answered whole (`"stream": false`): decode with PyAV + preprocess + model + answer, no HTTP. The best
           of one process with every core's threads and one single-threaded process per core (each its own
           video), all at once; one video is compared with the best layout of one process.
Target: served frames/s >= 0.85 x (J), at 1 and at 4 concurrent videos.
"""

import base64
import json
import os
import threading
import time
from typing import Dict, List, Optional

import requests
import torch

from benchkit.archives import STORE
from tskit.unpacked import in_process_handler, unpack
from benchkit.bench_servers import declared
from benchkit.inprocess import each_layout
from tskit import kinds
from tskit.clips import encode_video
from tskit.real_images import real_photos
from tskit.server import private_server, running

TARGET = 0.85
SECONDS, FPS, SIZE = 10, 30, (640, 480)


def video_models() -> List[str]:
    """Served models whose kind takes a video."""
    return [n for n, d in declared().items() if d.serve and kinds.kind(d.kind).takes_video]


def make_clip(seconds: int = SECONDS, fps: int = FPS, size=SIZE) -> bytes:
    """Real photos, one a second, resized to `size`, H.264 in MP4."""
    return encode_video([picture for _, picture in real_photos()][:seconds], 1.0, fps, "mp4", size)


# ---- (J): the archive's handler in process --------------------------------------------------------------
def handler_in_process(mar: str, threads: int):
    """The archive's handler class, initialised from the unpacked archive with TorchServe's own Context."""
    return in_process_handler(unpack(mar), threads)


def answer_in_process(handler, context, document: dict) -> bytes:
    from ts.context import RequestProcessor

    context.request_processor = [RequestProcessor({"body": {"content-type": "application/json"},
                                                   "Host": "127.0.0.1"})]
    context.request_ids = {0: f"bench-{time.perf_counter_ns()}"}
    [body] = handler.handle([{"body": document}], context)
    return body


def _rate(mar: str, document: dict, threads: int, seconds: float, ready, start, out) -> None:
    torch.set_num_threads(threads)
    handler, context = handler_in_process(mar, threads)
    first = answer_in_process(handler, context, document)  # warm-up, and the reference answer
    ready.put(True)
    start.wait()
    frames, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        frames += len(answer_in_process(handler, context, document).splitlines()) - 1
    out.put((frames / (time.perf_counter() - started), first))


def inprocess_rate(mar: str, clip: bytes, seconds: float) -> dict:
    """(J): frames/s of the best layout, each layout's figure, and one whole answer (the reference)."""
    document = {"video": base64.b64encode(clip).decode(), "sample_fps": 0, "stream": False}
    best, tried, by_processes = None, {}, {}
    for layout, results in each_layout(_rate, (mar, document), seconds):
        rate = sum(r for r, _ in results)
        tried[layout], by_processes[len(results)] = round(rate, 1), rate  # one result per process
        if best is None or rate > best["fps"]:
            best = {"layout": layout, "fps": rate, "reference": results[0][1]}
    best["layouts"], best["by_processes"] = tried, by_processes
    return best


# ---- served -------------------------------------------------------------------------------------------
def top_labels(body: bytes) -> List[Optional[str]]:
    """Each frame line's first label (None for a kind without predictions), the done line left out."""
    lines = [json.loads(line) for line in body.splitlines()]
    return [(line.get("predictions") or [{}])[0].get("label") for line in lines if "frame" in line]


def check(body: bytes, reference: List[Optional[str]]) -> Optional[str]:
    """What is wrong with one served answer, or None."""
    lines = [json.loads(line) for line in body.splitlines()]
    if not lines or lines[-1] != {"frames": len(reference), "done": True}:
        return f"last line {lines[-1] if lines else None!r}, expected {len(reference)} frames done"
    errors = [line for line in lines if "error" in line]
    if errors:
        return f"error line {errors[0]}"
    if top_labels(body) != reference:
        return "a frame's top label differs from (J)'s"
    return None


def served_point(url: str, headers: Dict[str, str], clip: bytes, reference, clients: int, seconds: float) -> dict:
    """`clients` sending the clip (every frame, streamed) until `seconds` have passed; frames/s of right answers."""
    body = json.dumps({"video": base64.b64encode(clip).decode(), "sample_fps": 0, "stream": True})
    frames, failures, lock = [0], [], threading.Lock()
    deadline = time.perf_counter() + seconds

    def client():
        session = requests.Session()
        while time.perf_counter() < deadline:
            response = session.post(url, data=body, headers={**headers, "Content-Type": "application/json"},
                                    timeout=600)
            answer = response.content if response.status_code == 200 else None
            wrong = f"status {response.status_code}" if answer is None else check(answer, reference)
            with lock:
                if wrong:
                    failures.append(wrong)
                else:
                    frames[0] += len(reference)

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"clients": clients, "fps": frames[0] / (time.perf_counter() - started), "failed": len(failures),
            "first_failure": failures[0] if failures else None}


def model_part(name: str, work: str, clip: bytes, concurrency: List[int], seconds: float, log) -> dict:
    mar = os.path.join(STORE, f"{name}.mar")
    inprocess = inprocess_rate(mar, clip, seconds)
    reference = top_labels(inprocess.pop("reference"))
    log(f"(V) {name} (J) in process: {inprocess['fps']:.1f} frames/s ({inprocess['layouts']})")
    server = private_server(os.path.join(work, name), load_models=f"{name}.mar")
    points = []
    with running(server, timeout=300):
        url = f"{server.inference_url}/predictions/{name}"
        headers = server.auth_headers("inference")
        served_point(url, headers, clip, reference, 1, 0.1)  # warm-up: one whole video
        for clients in concurrency:
            point = served_point(url, headers, clip, reference, clients, seconds)
            point["inprocess_fps"] = inprocess_for(inprocess["by_processes"], clients)
            point["ratio"] = point["fps"] / point["inprocess_fps"]
            points.append(point)
            log(f"(V) {name} x{clients}: {point['fps']:.1f} frames/s served = x{point['ratio']:.2f} of (J), "
                f"failed {point['failed']}")
    return {"model": name, "inprocess": inprocess, "served": points, "frames_per_video": len(reference)}


def inprocess_for(by_processes: Dict[int, float], videos: int) -> float:
    """(J) for `videos` at once: the best layout with at most that many processes (one process per video: a
    video's frames are decoded in order, so one video cannot use two processes)."""
    return max(fps for processes, fps in by_processes.items() if processes <= videos)


def verdicts(parts: List[dict]) -> List[str]:
    lines = []
    for part in parts:
        for point in part["served"]:
            met = point["ratio"] >= TARGET and not point["failed"]
            lines.append(f"{'met' if met else 'MISSED'}: {part['model']} {point['clients']} video(s) at once: "
                         f"{point['fps']:.1f} frames/s served, x{point['ratio']:.2f} of (J) "
                         f"{point['inprocess_fps']:.1f} (target >= {TARGET}); failed {point['failed']}"
                         + (f" (first: {point['first_failure']})" if point["failed"] else ""))
    return lines


def video_section(out: str, concurrency: List[int], seconds: float, log) -> List[str]:
    """(V) for every served image model; writes video.json beside the bench's report; the verdict lines."""
    clip = make_clip()
    log(f"(V) clip: {SECONDS} s {SIZE[0]}x{SIZE[1]} at {FPS} fps, {len(clip):,} bytes of H.264")
    parts = [model_part(name, os.path.join(out, "video"), clip, concurrency, seconds, log) for name in video_models()]
    lines = verdicts(parts)
    with open(os.path.join(out, "video.json"), "w", encoding="utf-8") as f:
        json.dump({"clip": {"seconds": SECONDS, "fps": FPS, "size": SIZE, "bytes": len(clip)}, "parts": parts,
                   "verdicts": lines}, f, indent=1)
    print("\n## Video (V)\n" + "\n".join(f"- {line}" for line in lines))
    return lines
