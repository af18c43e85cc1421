"""Whole videos: what the chunked engine and Ray cost, and whether a job slows the window endpoint.

1. One clip, the same cores, measured round-robin:
   - reference: the single-process stream (decode -> ``Upscaler.stream`` -> H.264), what
     ``vsr upscale`` did before the video engine, with torch on all cores;
   - ``upscale_file`` in-process (chunks one after another, segments joined, audio copied);
   - ``upscale_file`` on Ray: one chunk worker per core (1 CPU, 1 torch thread each).
   Ray's start-up (~5 s, once per process) is reported on its own, not in the ratios.
   Target: Ray wall time / reference <= 1.10.
2. The window endpoint's latency (one client, sequential windows) without and with a video job
   running on the same machine. The replica has 1 CPU, the job's worker the other.
   Target: p99 with a job <= 1.5x without.

    python benchmarks/bench_video.py [--full]      (quick: 300 frames of 96x128; full: 300 of 180x320)
"""
from __future__ import annotations

import statistics
import tempfile
import threading
import time
from pathlib import Path

import common
import torch

from bench_inference import synthetic_frames
from bench_pipeline import save_model_checkpoint
from bench_serve import png_bytes
from common import Report, header, measure
from vsr_core.data.video_io import FrameWriter, iter_frames, probe_video
from vsr_core.inference import Upscaler
from vsr_core.netutil import free_port
from vsr_core.video.pipeline import upscale_file
from vsr_core.video.ray_workers import RayPool

PRESET = "small"
FRAMES = 300


def write_clip(path: Path, frames: int, height: int, width: int) -> Path:
    with FrameWriter(path, fps=25) as writer:
        for frame in synthetic_frames(frames, height, width, seed=1):
            writer.write(frame)
    return path


def stream_reference(upscaler: Upscaler, source: Path, target: Path) -> None:
    with FrameWriter(target, probe_video(source).fps) as writer:
        for frame in upscaler.stream(iter_frames(source)):
            writer.write(frame)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def window_latencies(url: str, body: list, seconds: float, headers=None) -> list[float]:
    import requests

    files = [("frames", (f"f{i}.png", blob)) for i, blob in enumerate(body)]
    latencies, deadline = [], time.monotonic() + seconds
    while time.monotonic() < deadline:
        start = time.perf_counter()
        response = requests.post(url + "/v1/upscale", files=files, timeout=60, headers=headers)
        response.raise_for_status()
        latencies.append(time.perf_counter() - start)
    return latencies


def engine_overhead(report: Report, checkpoint: Path, clip: Path, tmp: Path, repeats: int) -> dict:
    import ray

    cores = max(2, torch.get_num_threads())
    upscaler = Upscaler.from_checkpoint(checkpoint, device="cpu", batch_size=4)
    started = time.perf_counter()
    ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False)
    ray_start = time.perf_counter() - started
    try:
        pool = RayPool(workers=cores, num_cpus=1)
        candidates = {
            "single-process stream": lambda: stream_reference(upscaler, clip, tmp / "stream.mp4"),
            "upscale_file in-process": lambda: upscale_file(clip, tmp / "engine.mp4", upscaler),
            f"upscale_file on Ray ({cores} workers x 1 CPU)": lambda: upscale_file(
                clip, tmp / "ray.mp4", upscaler, ray_pool=pool),
        }
        timings = measure(candidates, repeats=repeats, warmup=1)
    finally:
        ray.shutdown()
    reference = timings["single-process stream"].median
    for name, timing in timings.items():
        report.add(f"{FRAMES} frames: {name}", FRAMES / timing.median, "frames/s", "single-process stream",
                   reference / timing.median, note=f"wall {timing.median:.1f} s = {timing.median / reference:.2f}x "
                   f"the stream (spread {timing.spread:.2f})")
    report.add("Ray start-up (ray.init, once per process)", ray_start, "s")
    return {name: t.to_dict() for name, t in timings.items()} | {"ray_init_s": ray_start}


def window_latency_under_a_job(report: Report, checkpoint: Path, clip: Path, tmp: Path, seconds: float) -> dict:
    import ray
    import requests
    from ray import serve

    from serve.app import build_app

    body = [png_bytes(f) for f in synthetic_frames(5, 96, 128, seed=2)]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app({"checkpoint": str(checkpoint), "device": "cpu", "num_cpus": 1, "job_workers": 1,
                             "jobs_dir": str(tmp / "jobs"), "job_chunk_frames": 32}), name="vsr", route_prefix="/")
        window_latencies(url, body, 2.0)  # warm-up
        alone = window_latencies(url, body, seconds)
        job = requests.post(url + "/v1/jobs", data=clip.read_bytes(), headers={"Content-Type": "video/mp4"},
                            timeout=60).json()
        while requests.get(f"{url}/v1/jobs/{job['id']}", timeout=10).json()["frames_done"] == 0:
            time.sleep(0.2)  # until chunks are being computed
        with_job = window_latencies(url, body, seconds)
        state = requests.get(f"{url}/v1/jobs/{job['id']}", timeout=10).json()
        requests.delete(f"{url}/v1/jobs/{job['id']}", timeout=10)
    finally:
        serve.shutdown()
        ray.shutdown()
    p50, p99 = (percentile(alone, q) for q in (0.5, 0.99))
    p50_job, p99_job = (percentile(with_job, q) for q in (0.5, 0.99))
    report.add("window p50 latency, no job", 1e3 * p50, "ms", note=f"{len(alone)} requests")
    report.add("window p99 latency, no job", 1e3 * p99, "ms")
    report.add("window p50 latency, a job running", 1e3 * p50_job, "ms", "p50 without a job", p50_job / p50,
               note=f"{len(with_job)} requests; the job was {state['state']} at {state['frames_done']} frames")
    report.add("window p99 latency, a job running", 1e3 * p99_job, "ms", "p99 without a job", p99_job / p99)
    return {"alone_s": alone, "with_job_s": with_job, "mean_alone_s": statistics.mean(alone),
            "job_state_after": state}


def main(argv=None) -> None:
    args = common.parse_args(__doc__, argv)
    report = Report("video", "full" if args.full else "quick")
    header("video", args.full)
    height, width = (180, 320) if args.full else (96, 128)
    with tempfile.TemporaryDirectory(prefix="vsr-bench-video-") as tmp:
        tmp = Path(tmp)
        checkpoint = save_model_checkpoint(PRESET, tmp / "model.pth")
        clip = write_clip(tmp / "clip.mp4", FRAMES, height, width)
        report.details = {"preset": PRESET, "frames": FRAMES, "size": [height, width],
                          "engine": engine_overhead(report, checkpoint, clip, tmp, repeats=3 if args.full else 2)}
        long_clip = write_clip(tmp / "long.mp4", 900, 96, 128)
        report.details["latency"] = window_latency_under_a_job(report, checkpoint, long_clip, tmp,
                                                               seconds=20 if args.full else 10)
    print(f"wrote {report.write()}")


if __name__ == "__main__":
    threading.excepthook = lambda hook_args: None  # requests' keep-alive threads at shutdown
    main()
