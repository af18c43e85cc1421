"""5. Serve: requests/s and p50/p99 latency of ``POST /v1/upscale`` (multipart, 5 PNG frames
-> PNG) for 1 and 8 concurrent HTTP clients on 127.0.0.1, with ``@serve.batch`` batching
(max_batch_size 8) and without it (max_batch_size 1, i.e. every request alone), against
direct in-process inference on the same windows (``Upscaler.upscale_window_uint8`` one
by one, and ``upscale_windows`` on batches of 8), measured in the same run.

The app is serve.app (``build_app``), deployed on a local Ray with one replica of
``--num-cpus`` CPUs (= its torch threads); the HTTP clients run in this process.
"""
from __future__ import annotations

import importlib
import io
import os
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import common
import numpy as np
import torch

from bench_inference import synthetic_frames
from bench_pipeline import save_model_checkpoint
from common import ROOT, Report, header, measure
from vsr_core.frames import to_tensor, to_uint8
from vsr_core.inference import Upscaler
from vsr_core.netutil import free_port  # noqa: E402

APP_NAME = "vsr-bench"



def png_bytes(frame: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="PNG")
    return buffer.getvalue()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


def load_clients(url: str, bodies: list[list[bytes]], clients: int, requests_total: int) -> dict:
    """``requests_total`` POSTs from ``clients`` threads (each with its own session)."""
    import requests

    def worker(index: int) -> tuple[list[float], list[int]]:
        session = requests.Session()
        latencies, batches = [], []
        for k in range(index, requests_total, clients):
            files = [("frames", (f"{i}.png", blob, "image/png")) for i, blob in enumerate(bodies[k % len(bodies)])]
            start = time.perf_counter()
            response = session.post(url, files=files, timeout=300)
            latencies.append(time.perf_counter() - start)
            if response.status_code != 200:
                raise RuntimeError(f"HTTP {response.status_code}: {response.text[:300]}")
            batches.append(int(response.headers.get("X-VSR-Batch", "1")))
        session.close()
        return latencies, batches

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(worker, range(clients)))
    wall = time.perf_counter() - start
    latencies = [x for lat, _ in results for x in lat]
    batches = [x for _, b in results for x in b]
    return {"requests_per_s": requests_total / wall, "p50_s": percentile(latencies, 50),
            "p99_s": percentile(latencies, 99), "mean_batch": statistics.mean(batches), "wall_s": wall,
            "requests": requests_total}


def http_overhead(url: str, count: int) -> dict:
    import requests

    session = requests.Session()
    latencies = []
    for _ in range(count):
        start = time.perf_counter()
        session.get(url, timeout=60).raise_for_status()
        latencies.append(time.perf_counter() - start)
    return {"requests_per_s": count / sum(latencies), "p50_s": percentile(latencies, 50),
            "p99_s": percentile(latencies, 99), "mean_batch": 0.0, "requests": count}


def deploy(checkpoint: Path, num_cpus: float, max_batch_size: int, port: int) -> str:
    import requests
    from ray import serve

    serve_app = importlib.import_module("serve.app")  # this project's serve/, not ray.serve

    app = serve_app.build_app({"checkpoint": str(checkpoint), "device": "cpu", "num_cpus": num_cpus,
                               "num_replicas": 1, "max_batch_size": max_batch_size, "batch_wait_timeout_s": 0.01})
    serve.run(app, name=APP_NAME, route_prefix="/")
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            info = requests.get(url + "/v1/model", timeout=5)
            if info.status_code == 200 and info.json().get("batching", {}).get("max_batch_size",
                                                                                max_batch_size) == max_batch_size:
                return url
        except requests.ConnectionError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the app did not come up at {url}")


def main(argv=None) -> None:
    def extra(parser):
        parser.add_argument("--num-cpus", type=float, default=float(os.cpu_count() or 1),
                            help="CPUs (= torch threads) of the replica; default: all")

    args = common.parse_args(__doc__, argv, extra)
    full = args.full
    report = Report("serve", "full" if full else "quick")
    header("serve", full)
    try:
        importlib.import_module("serve.app")
    except Exception as exc:  # noqa: BLE001 - the app is work in progress elsewhere
        report.skip(f"serve/app.py is not importable yet ({type(exc).__name__}: {exc})")
        report.write()
        return

    import ray
    from ray import serve

    preset = "small"
    height, width = (180, 320) if full else (64, 64)
    n_single, n_multi = (40, 128) if full else (24, 64)
    windows = [np.stack(synthetic_frames(5, height, width, seed=s)) for s in range(8)]
    bodies = [[png_bytes(frame) for frame in window] for window in windows]

    with tempfile.TemporaryDirectory(prefix="vsr-bench-serve-") as tmp:
        checkpoint = save_model_checkpoint(preset, Path(tmp) / "model.pth")
        # direct, in this process, same weights and windows
        direct = Upscaler.from_checkpoint(checkpoint, device="cpu")
        batch = to_tensor(np.stack(windows))
        direct_paths = {
            "direct, one window": lambda: [direct.upscale_window_uint8(w) for w in windows],
            "direct, batch of 8": lambda: to_uint8(direct.upscale_windows(batch)),
        }
        # measured before and after the HTTP runs (pooled), so that both see the machine alike
        timings = measure(direct_paths, repeats=3, warmup=1)

        port = free_port()
        runtime_env = {"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH"))
                                                                   if p)}}
        ray.init(num_cpus=max(2, int(args.num_cpus)), include_dashboard=False, log_to_driver=False,
                 runtime_env=runtime_env)
        results = {}
        try:
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            for batching, max_batch in (("@serve.batch (max 8)", 8), ("no batching (max 1)", 1)):
                base = deploy(checkpoint, args.num_cpus, max_batch, port)
                url = base + "/v1/upscale"
                load_clients(url, bodies, 2, 4)  # warm-up
                if max_batch == 8:  # the HTTP + proxy + replica round trip without a model
                    results[("GET /healthz", 1)] = http_overhead(base + "/healthz", 50)
                for clients, total in ((1, n_single), (8, n_multi)):
                    results[(batching, clients)] = load_clients(url, bodies, clients, total)
        finally:
            try:
                serve.shutdown()
            finally:
                ray.shutdown()
        for name, timing in measure(direct_paths, repeats=3, warmup=1).items():
            timings[name].seconds.extend(timing.seconds)
        direct_single = len(windows) / timings["direct, one window"].median
        direct_batch = len(windows) / timings["direct, batch of 8"].median
        label = f"{preset} {height}x{width}"
        report.add(f"{label}: direct upscale_window_uint8, 1 at a time", direct_single, "windows/s",
                   note=f"latency {1e3 * timings['direct, one window'].median / len(windows):.0f} ms")
        report.add(f"{label}: direct upscale_windows, batches of 8", direct_batch, "windows/s", "direct 1 at a time",
                   direct_batch / direct_single)
        for (batching, clients), r in results.items():
            if batching.startswith("GET"):
                report.add(f"HTTP round trip, {batching} (no model)", 1e3 * r["p50_s"], "ms p50",
                           note=f"p99 {1e3 * r['p99_s']:.0f} ms")
                continue
            reference, ref_name = (direct_single, "direct 1 at a time") if clients == 1 else (
                direct_batch, "direct batches of 8")
            report.add(f"{label}: HTTP {clients} client{'s' if clients > 1 else ''}, {batching}",
                       r["requests_per_s"], "req/s", ref_name, r["requests_per_s"] / reference,
                       note=f"p50 {1e3 * r['p50_s']:.0f} ms, p99 {1e3 * r['p99_s']:.0f} ms, "
                            f"mean batch {r['mean_batch']:.1f}")
        report.details = {"preset": preset, "size": [height, width], "replica_cpus": args.num_cpus,
                          "torch_threads_direct": torch.get_num_threads(),
                          "direct": {k: t.to_dict() for k, t in timings.items()},
                          "http": {f"{b}, {c} clients": r for (b, c), r in results.items()}}
    print(f"wrote {report.write()}")


if __name__ == "__main__":
    main()
