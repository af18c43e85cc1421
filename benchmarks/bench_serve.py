"""5. Serve at realistic sizes: ``POST /v1/upscale`` with 8 concurrent HTTP clients (5 PNG
frames in, the 3x frame back as PNG, WebP, JPEG or .npy by ``Accept``) and one ``WS /v1/stream``
(raw frames in, raw, PNG or JPEG out; JPEG in and out), against the in-process ``Upscaler`` on the same frames,
measured in the same run, interleaved: a direct run before and after every served run.

References: for the window endpoint ``upscale_grouped`` on the same 8 windows (the replica's own
computation, split by the same ``max_batch_pixels``); for the stream ``Upscaler.stream`` over the
same frames (what ``vsr upscale`` runs, with feature reuse). Where the time goes comes from the
replica itself (``Server-Timing`` of each response; the stream's end message): decode, batch
(queued + forward pass), model (the pass), encode; transport = client latency - the rest. The
1920x1080 encoders are timed alone in this process too. The CPU seconds each served run cost,
by process (the replica, Serve's HTTP proxy, the clients in this process), against the direct
run's: on a machine whose cores are all busy, throughput follows CPU seconds per frame.

Quick: the small preset at 180x320 and 360x640 LR. ``--full``: also the full preset (slow on a
CPU: few windows). The app is serve.app (``build_app``) on a local Ray, one replica of
``--num-cpus`` CPUs (= its torch threads); the clients run in this process.
"""
from __future__ import annotations

import importlib
import io
import json
import os
import threading
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import common
import numpy as np
import torch
from PIL import Image

from bench_inference import synthetic_frames
from bench_pipeline import save_model_checkpoint
from common import ROOT, Report, header, load_average
from vsr_core.inference import Upscaler, upscale_grouped
from vsr_core.netutil import free_port

APP_NAME = "vsr-bench"
CLIENTS = 8
MAX_BATCH_PIXELS = 1280 * 720  # the app's default: 4 windows of 360x640 per forward pass
ACCEPTS = {"png": "image/png", "webp": "image/webp", "jpeg": "image/jpeg", "npy": "application/x-npy"}
STREAM_CASES = (("raw", "raw"), ("raw", "png"), ("raw", "jpeg"), ("jpeg", "jpeg"))  # (frames in, out)


def png_bytes(frame: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def jpeg_bytes(frame: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def server_timing(header_value: str) -> dict[str, float]:
    """'decode;dur=1.2, batch;dur=3' -> {"decode": 0.0012, "batch": 0.003} (seconds)."""
    parts = {}
    for part in header_value.split(","):
        name, _, value = part.strip().partition(";dur=")
        parts[name] = float(value) / 1e3
    return parts


def serve_processes() -> dict[str, list]:
    """The replica and proxy processes of the local Serve app (by their actor names), and this one."""
    import psutil

    found: dict[str, list] = {"replica": [], "proxy": [], "clients": [psutil.Process()]}
    for process in psutil.process_iter(["cmdline"]):
        command = " ".join(process.info["cmdline"] or [])
        if "ServeReplica" in command:
            found["replica"].append(process)
        elif "ProxyActor" in command:
            found["proxy"].append(process)
    return found


def cpu_seconds(processes: dict[str, list]) -> dict[str, float]:
    return {name: sum(sum(p.cpu_times()[:2]) for p in group) for name, group in processes.items()}


def measured(processes: dict[str, list], run: Callable[[], dict]) -> dict:
    """``run()``'s result plus the CPU seconds it cost each process (``cpu_s``)."""
    before = cpu_seconds(processes)
    result = run()
    after = cpu_seconds(processes)
    result["cpu_s"] = {name: after[name] - before[name] for name in before}
    return result


def fmt_cpu(cpu: dict[str, float], items: int) -> str:
    return "CPU/item " + ", ".join(f"{name} {1e3 * value / items:.0f}" for name, value in cpu.items()) + " ms"


def load_clients(url: str, bodies: list[list[bytes]], accept: str, requests_total: int) -> dict:
    """``requests_total`` POSTs of 5 PNG frames from CLIENTS threads; the answers are received, not decoded."""
    import requests

    def worker(index: int) -> list[tuple[float, dict, int]]:
        session = requests.Session()
        results = []
        for k in range(index, requests_total, CLIENTS):
            files = [("frames", (f"{i}.png", blob, "image/png")) for i, blob in enumerate(bodies[k % len(bodies)])]
            start = time.perf_counter()
            response = session.post(url, files=files, headers={"Accept": accept}, timeout=1800)
            latency = time.perf_counter() - start
            if response.status_code != 200:
                raise RuntimeError(f"HTTP {response.status_code}: {response.text[:300]}")
            results.append((latency, server_timing(response.headers["Server-Timing"]),
                            int(response.headers.get("X-VSR-Batch", "1"))))
        session.close()
        return results

    start = time.perf_counter()
    with ThreadPoolExecutor(CLIENTS) as pool:
        results = [r for rs in pool.map(worker, range(CLIENTS)) for r in rs]
    wall = time.perf_counter() - start
    latencies = [lat for lat, _, _ in results]
    mean = {name: statistics.mean(t[name] for _, t, _ in results) for name in ("decode", "batch", "model", "encode")}
    mean["transport"] = statistics.mean(lat - t["decode"] - t["batch"] - t["encode"] for lat, t, _ in results)
    return {"per_s": requests_total / wall, "p50_s": percentile(latencies, 50), "p99_s": percentile(latencies, 99),
            "mean_batch": statistics.mean(b for _, _, b in results), "breakdown_s": mean, "requests": requests_total}


def run_stream(url: str, clip: list[np.ndarray], output: str, fmt: str = "raw") -> dict:
    """One stream of raw frames, or JPEGs (q 95, encoded before the clock starts), sent from a
    thread as serve/client.py does; the answers are received, not decoded."""
    from websockets.sync.client import connect

    height, width = clip[0].shape[:2]
    messages = [frame.tobytes() if fmt == "raw" else jpeg_bytes(frame) for frame in clip]
    start = time.perf_counter()
    with connect(url.replace("http", "ws", 1) + "/v1/stream", max_size=None, open_timeout=60) as ws:
        ws.send(json.dumps({"width": width, "height": height, "format": fmt, "output": output}))
        assert json.loads(ws.recv(60))["type"] == "ready"
        received = 0

        def send_all() -> None:
            for message in messages:
                ws.send(message)
            ws.send(json.dumps({"type": "end"}))

        sender = threading.Thread(target=send_all, daemon=True)
        sender.start()
        while True:
            message = ws.recv(1800)
            if isinstance(message, bytes):
                received += 1
                continue
            end = json.loads(message)
            break
        sender.join()
    wall = time.perf_counter() - start
    if end.get("type") != "end" or received != len(clip):
        raise RuntimeError(f"stream ended with {end} after {received} frames")
    timing = end["timing"]
    return {"per_s": len(clip) / wall, "frames": len(clip),
            "breakdown_s": {name: timing[f"{name}_ms"] / 1e3 for name in ("decode", "batch", "model", "encode")}}


def deploy(checkpoint: Path, num_cpus: float, port: int) -> str:
    import requests
    from ray import serve

    serve_app = importlib.import_module("serve.app")  # this project's serve/, not ray.serve
    app = serve_app.build_app({"checkpoint": str(checkpoint), "device": "cpu", "num_cpus": num_cpus,
                               "num_replicas": 1, "max_batch_size": CLIENTS, "batch_wait_timeout_s": 0.01,
                               "max_batch_pixels": MAX_BATCH_PIXELS, "max_body_bytes": 256 * 1024**2})
    serve.run(app, name=APP_NAME, route_prefix="/")
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 300
    while time.time() < deadline:
        try:
            info = requests.get(url + "/v1/model", timeout=5)
            if info.status_code == 200 and info.json()["checkpoint_id"] == checkpoint_id(checkpoint):
                return url
        except requests.ConnectionError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the app did not come up at {url}")


def checkpoint_id(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def encoder_timings(report: Report, frame: np.ndarray) -> dict:
    """The 1920x1080 encoders alone (median of 3), including Pillow's default PNG (level 6)."""
    from serve.formats import encode_frame

    candidates = {f"{name}": (lambda media=media: encode_frame(frame, media)) for name, media in ACCEPTS.items()}
    candidates["png, Pillow default (level 6)"] = lambda: png_default(frame)
    results = {}
    for name, fn in candidates.items():
        times, size = [], 0
        for _ in range(3):
            start = time.perf_counter()
            size = len(fn())
            times.append(time.perf_counter() - start)
        results[name] = {"seconds": statistics.median(times), "bytes": size}
    reference = results["png"]["seconds"]
    for name, r in results.items():
        report.add(f"encode {frame.shape[1]}x{frame.shape[0]}: {name}", 1e3 * r["seconds"], "ms", "png (level 1, RLE)",
                   r["seconds"] / reference, note=f"{r['bytes'] / 1e6:.2f} MB")
    return results


def png_default(frame: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="PNG")
    return buffer.getvalue()


def realistic_frame(height: int, width: int) -> np.ndarray:
    """A frame of the sample video scaled to height x width (synthetic noise compresses unlike video)."""
    from vsr_core.data.samples import DEFAULT_TRAIN_CLIP, sample_clip
    from vsr_core.data.video_io import iter_frames

    frame = next(iter(iter_frames(sample_clip(DEFAULT_TRAIN_CLIP))))
    return np.asarray(Image.fromarray(frame).resize((width, height), Image.BICUBIC))


def fmt_breakdown(b: dict[str, float]) -> str:
    return ", ".join(f"{name} {1e3 * value:.0f}" for name, value in b.items()) + " ms"


def main(argv=None) -> None:
    def extra(parser):
        parser.add_argument("--num-cpus", type=float, default=float(os.cpu_count() or 1),
                            help="CPUs (= torch threads) of the replica; default: all")
        parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds (direct, HTTP, stream)")
        parser.add_argument("--size", help="only this LR size, e.g. 360x640")
        parser.add_argument("--preset", choices=("small", "full"), help="only this preset (full: with --full)")

    args = common.parse_args(__doc__, argv, extra)
    report = Report("serve", ("full" if args.full else "quick") + (f"-{args.preset}" if args.preset else "")
                    + (f"-{args.size}" if args.size else "")
                    + (f"-{args.num_cpus:g}cpu" if args.num_cpus != float(os.cpu_count() or 1) else ""))
    header("serve", args.full)
    import ray
    from ray import serve

    # (preset, LR size, windows requests per format, stream frames)
    cases = [("small", (180, 320), 16, 24), ("small", (360, 640), 16, 36)]
    if args.full:
        cases += [("full", (180, 320), 8, 6), ("full", (360, 640), 8, 6)]
    if args.size:
        cases = [case for case in cases if f"{case[1][0]}x{case[1][1]}" == args.size]
    if args.preset:
        cases = [case for case in cases if case[0] == args.preset]
    report.details = {"encoders": encoder_timings(report, realistic_frame(1080, 1920)), "cases": {},
                      "replica_cpus": args.num_cpus, "torch_threads_direct": torch.get_num_threads()}
    runtime_env = {"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH"))
                                                               if p)}}
    port = free_port()
    ray.init(num_cpus=max(2, int(args.num_cpus)), include_dashboard=False, log_to_driver=False,
             runtime_env=runtime_env)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        with tempfile.TemporaryDirectory(prefix="vsr-bench-serve-") as tmp:
            for preset, (height, width), n_requests, n_frames in cases:
                checkpoint = save_model_checkpoint(preset, Path(tmp) / f"{preset}.pth")
                run_case(report, checkpoint, preset, height, width, n_requests, n_frames, args, port)
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
    print(f"wrote {report.write()}")


def run_case(report: Report, checkpoint: Path, preset: str, height: int, width: int, n_requests: int,
             n_frames: int, args, port: int) -> None:
    label = f"{preset} {height}x{width}"
    windows = [np.stack(synthetic_frames(5, height, width, seed=s)) for s in range(CLIENTS)]
    bodies = [[png_bytes(frame) for frame in window] for window in windows]
    clip = synthetic_frames(n_frames, height, width, seed=99)
    direct = Upscaler.from_checkpoint(checkpoint, device="cpu")
    url = deploy(checkpoint, args.num_cpus, port)
    processes = serve_processes()
    load_clients(url + "/v1/upscale", bodies, ACCEPTS["npy"], CLIENTS)  # warm-up: kernels for this size
    run_stream(url, clip[:4], "raw")
    upscale_grouped(direct, windows, MAX_BATCH_PIXELS)
    # Direct runs bracket every served run (D H D H ... D S D S ... D): each ratio is against the
    # mean of the direct runs just before and after it, so a burst of load from other jobs on a
    # shared machine hits the served run and its reference alike.
    rounds: list[dict] = []
    for _ in range(args.rounds):
        r: dict = {"load": load_average(), "http": {}, "stream": {}}

        def direct_windows() -> float:
            start, cpu = time.perf_counter(), time.process_time()
            upscale_grouped(direct, windows, MAX_BATCH_PIXELS)
            r["direct_window_cpu_s"] = (time.process_time() - cpu) / len(windows)
            return len(windows) / (time.perf_counter() - start)

        def direct_stream() -> float:
            start, cpu = time.perf_counter(), time.process_time()
            count = sum(1 for _ in direct.stream(iter(clip)))
            r["direct_frame_cpu_s"] = (time.process_time() - cpu) / count
            return count / (time.perf_counter() - start)

        before = direct_windows()
        for name, accept in ACCEPTS.items():
            r["http"][name] = measured(processes, lambda: load_clients(url + "/v1/upscale", bodies, accept,
                                                                       n_requests))
            after = direct_windows()
            r["http"][name]["direct_per_s"] = (before + after) / 2
            before = after
        before = direct_stream()
        for fmt, output in STREAM_CASES:
            r["stream"][f"{fmt}>{output}"] = measured(processes, lambda: run_stream(url, clip, output, fmt))
            after = direct_stream()
            r["stream"][f"{fmt}>{output}"]["direct_per_s"] = (before + after) / 2
            before = after
        rounds.append(r)
        print(f"  {label} round done, load {r['load']} -> {load_average()}", flush=True)

    def median(values):
        return statistics.median(values)

    direct_windows_all = [r["http"][n]["direct_per_s"] for r in rounds for n in ACCEPTS]
    direct_fps_all = [r["stream"][case]["direct_per_s"] for r in rounds for case in r["stream"]]
    report.add(f"{label}: direct upscale_grouped, 8 windows", median(direct_windows_all), "windows/s",
               note=f"min {min(direct_windows_all):.3g}, max {max(direct_windows_all):.3g}; CPU/item "
                    f"{1e3 * rounds[-1]['direct_window_cpu_s']:.0f} ms")
    for name in ACCEPTS:
        runs = [r["http"][name] for r in rounds]
        last = runs[-1]
        report.add(f"{label}: HTTP {CLIENTS} clients, 5 PNG in, {name} out", median([x["per_s"] for x in runs]),
                   "req/s", "direct upscale_grouped", median([x["per_s"] / x["direct_per_s"] for x in runs]),
                   note=f"p50 {last['p50_s']:.1f} s, batch {last['mean_batch']:.1f}; "
                        f"{fmt_breakdown(last['breakdown_s'])}; {fmt_cpu(last['cpu_s'], n_requests)}")
    report.add(f"{label}: direct Upscaler.stream ({len(clip)} frames)", median(direct_fps_all), "frames/s",
               note=f"min {min(direct_fps_all):.3g}, max {max(direct_fps_all):.3g}; CPU/item "
                    f"{1e3 * rounds[-1]['direct_frame_cpu_s']:.0f} ms")
    for fmt, output in STREAM_CASES:
        runs = [r["stream"][f"{fmt}>{output}"] for r in rounds]
        report.add(f"{label}: WS stream, {fmt} in, {output} out", median([x["per_s"] for x in runs]), "frames/s",
                   "direct Upscaler.stream", median([x["per_s"] / x["direct_per_s"] for x in runs]),
                   note=f"per frame: {fmt_breakdown(runs[-1]['breakdown_s'])}; "
                        f"{fmt_cpu(runs[-1]['cpu_s'], len(clip))}")
    report.details["cases"][label] = {"requests_per_format": n_requests, "stream_frames": n_frames, "rounds": rounds}
    report.write()  # partial results survive a slow --full case


if __name__ == "__main__":
    main()
