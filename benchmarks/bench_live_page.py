"""The page's live stream in headless Chromium: its camera (a fake one playing a 640x360 clip
of bigbuckbunny.mp4 at 30 frames/s) sent at 320x180 to ``WS /v1/stream`` and answered 3x, as a
user of the web page sees it, against the in-process ``Upscaler.stream`` on the same frames.

    python benchmarks/bench_live_page.py                 # realtime preset, 320 px wide, JPEG back, 20 s
    python benchmarks/bench_live_page.py --preset small --seconds 30 --output png

The served model is an untrained one of the preset (the weights do not change the work). The
page runs as a user would (``serve/page/live.js``: it sends a frame only while fewer than
MAX_IN_FLIGHT are at the server, so when the server is slower than the camera frames are
skipped); the browser's WebSocket is wrapped to timestamp every frame sent and received.
Measured over ``--seconds`` after a few seconds of warm-up: frames/s sent and back, the latency
from a frame sent to its 3x frame back (2 frames behind by design), what the page itself shows,
the server's time per frame (the stream's end message: decode, batch = queued + pass, model,
encode) and the CPU seconds per frame back of the replica, Serve's proxy and Chromium (psutil).
The reference, ``Upscaler.stream`` in this process on the clip's 320x180 frames, runs once
before and once after the page (the ratio is against their mean). Needs /usr/bin/chromium and
/usr/bin/chromedriver (``apt-get install chromium chromium-driver``) and selenium.
"""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import common
import numpy as np
import torch

from bench_pipeline import save_model_checkpoint
from bench_serve import deploy, percentile, serve_processes
from common import ROOT, Report, header, load_average
from vsr_core.data.samples import DEFAULT_TRAIN_CLIP, sample_clip
from vsr_core.data.video_io import read_frames
from vsr_core.inference import Upscaler
from vsr_core.netutil import free_port

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
CAMERA_SIZE, CAMERA_FPS, CAMERA_FRAMES = (360, 640), 30, 90  # the fake camera loops its clip
WARMUP_S = 4.0

# Timestamps (performance.now(), ms) of the frames the page's WebSocket sends and receives.
RECORD_TIMES = """
const Native = window.WebSocket;
window.timed = { sent: [], got: [], text: [] };
window.WebSocket = class extends Native {
  constructor(...args) {
    super(...args);
    this.addEventListener('message', (e) => {
      if (typeof e.data === 'string') window.timed.text.push(JSON.parse(e.data));
      else window.timed.got.push(performance.now());
    });
  }
  send(data) {
    if (typeof data !== 'string') window.timed.sent.push(performance.now());
    super.send(data);
  }
};
"""


def camera_clip(height: int, width: int, count: int) -> list[np.ndarray]:
    """``count`` frames of the sample clip, scaled to height x width (bicubic, antialiased)."""
    import torch.nn.functional as F

    source = read_frames(sample_clip(DEFAULT_TRAIN_CLIP), max_frames=count)
    clip = torch.from_numpy(np.stack(source)).permute(0, 3, 1, 2).float()
    small = F.interpolate(clip, size=(height, width), mode="bicubic", antialias=True)
    return list(small.clamp(0, 255).round().byte().permute(0, 2, 3, 1).contiguous().numpy())


def write_y4m(path: Path, frames: list[np.ndarray], fps: int) -> Path:
    """An uncompressed YUV 4:2:0 clip (BT.601, full range): what Chromium's fake camera plays."""
    height, width = frames[0].shape[:2]
    with open(path, "wb") as out:
        out.write(f"YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for frame in frames:
            r, g, b = (frame[..., i].astype(np.float32) for i in range(3))
            y = 0.299 * r + 0.587 * g + 0.114 * b
            u = (b - y) * 0.564 + 128
            v = (r - y) * 0.713 + 128
            out.write(b"FRAME\n")
            for plane, step in ((y, 1), (u, 2), (v, 2)):
                if step == 2:  # 2x2 means
                    plane = plane.reshape(height // 2, 2, width // 2, 2).mean(axis=(1, 3))
                out.write(np.clip(plane.round(), 0, 255).astype(np.uint8).tobytes())
    return path


def launch_chromium(camera: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must never download a driver or browser
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync",
                 "--disable-background-networking", "--disable-component-update", "--disable-dev-shm-usage",
                 "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
                 f"--use-file-for-fake-video-capture={camera}", "--autoplay-policy=no-user-gesture-required",
                 f"--user-data-dir={tempfile.mkdtemp(prefix='vsr-bench-chrome-')}", "--window-size=1280,900"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)


def chromium_processes(driver) -> list:
    import psutil

    return psutil.Process(driver.service.process.pid).children(recursive=True)


def cpu_by_process(processes: dict[str, list]) -> dict[str, dict[int, float]]:
    """CPU seconds of each live process by group and pid (Chromium starts and ends helper processes)."""
    import psutil

    times: dict[str, dict[int, float]] = {}
    for name, group in processes.items():
        times[name] = {}
        for process in group:
            try:
                times[name][process.pid] = sum(process.cpu_times()[:2])
            except psutil.NoSuchProcess:
                pass
    return times


def cpu_spent(first: dict[str, dict[int, float]], last: dict[str, dict[int, float]]) -> dict[str, float]:
    """CPU seconds between two ``cpu_by_process`` of the processes alive at both."""
    return {name: sum(last[name][pid] - first[name][pid] for pid in first[name] if pid in last[name]) for name in first}


def page_state(driver) -> dict:
    return driver.execute_script("""return {sent: window.timed.sent.length, got: window.timed.got.length,
        now: performance.now(), stats: document.getElementById('live-stats').textContent}""")


def run_page(driver, url: str, width: int, output: str, seconds: float, processes: dict) -> dict:
    """The camera streamed from the page for WARMUP_S + ``seconds``; what was measured over ``seconds``."""
    driver.get(url + "/")
    driver.execute_script(RECORD_TIMES)
    driver.execute_script(f"document.getElementById('live-output').value = '{output}';"
                          f"document.getElementById('live-width').value = '{width}';")
    driver.find_element("id", "live-camera").click()
    deadline = time.time() + 120
    while page_state(driver)["got"] == 0:
        if time.time() > deadline:
            raise RuntimeError(f"no frame came back: {driver.execute_script('return window.timed.text')}")
        time.sleep(0.1)
    time.sleep(WARMUP_S)
    processes = {**processes, "chromium": chromium_processes(driver)}
    first, cpu_first, load_first = page_state(driver), cpu_by_process(processes), load_average()
    time.sleep(seconds)
    last, cpu = page_state(driver), cpu_spent(cpu_first, cpu_by_process(processes))
    driver.find_element("id", "live-stop").click()
    while driver.execute_script("return document.getElementById('live-view').dataset.state") == "running":
        time.sleep(0.1)
    timed = driver.execute_script("return window.timed")
    elapsed = (last["now"] - first["now"]) / 1e3
    back = last["got"] - first["got"]
    latencies = [got - sent for sent, got in zip(timed["sent"], timed["got"]) if first["now"] <= got <= last["now"]]
    end = timed["text"][-1]
    if end.get("type") != "end":
        raise RuntimeError(f"the stream did not end cleanly: {end}")
    return {"seconds": elapsed, "sent_per_s": (last["sent"] - first["sent"]) / elapsed, "back_per_s": back / elapsed,
            "frames_back": back, "latency_ms_p50": percentile(latencies, 50),
            "latency_ms_p90": percentile(latencies, 90), "page_shows": last["stats"],
            "cpu_ms_per_frame": {name: 1e3 * value / max(1, back) for name, value in cpu.items()},
            "server_ms_per_frame": end["timing"], "header": timed["text"][0], "load": [load_first, load_average()]}


def direct_stream(upscaler: Upscaler, clip: list[np.ndarray]) -> tuple[float, float]:
    """Frames/s of ``Upscaler.stream`` over ``clip`` and its CPU ms per frame (this process)."""
    start, cpu = time.perf_counter(), time.process_time()
    count = sum(1 for _ in upscaler.stream(iter(clip)))
    return count / (time.perf_counter() - start), 1e3 * (time.process_time() - cpu) / count


def main(argv=None) -> None:
    def extra(parser):
        parser.add_argument("--preset", default="realtime", help="model preset served (default realtime)")
        parser.add_argument("--width", type=int, default=320,
                            help="the page's 'Width sent' (the camera is 16:9: 320 -> 320x180)")
        parser.add_argument("--output", choices=("jpeg", "png"), default="jpeg", help="the page's 'Back as'")
        parser.add_argument("--seconds", type=float, default=20.0, help="measured time after the warm-up")
        parser.add_argument("--num-cpus", type=float, default=float(os.cpu_count() or 1),
                            help="CPUs (= torch threads) of the replica; default: all")

    args = common.parse_args(__doc__, argv, extra)
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.access(path, os.X_OK)]
    report = Report("live_page", "full" if args.full else "quick")
    header("live_page", args.full)
    if missing:
        report.skip(f"{' and '.join(missing)} missing: apt-get install -y chromium chromium-driver")
        print(f"wrote {report.write()}")
        return
    import ray
    from ray import serve

    height = round(args.width * CAMERA_SIZE[0] / CAMERA_SIZE[1] / 2) * 2
    frames = camera_clip(*CAMERA_SIZE, CAMERA_FRAMES)
    sent_size = camera_clip(height, args.width, CAMERA_FRAMES)
    runtime_env = {"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH"))
                                                               if p)}}
    port = free_port()
    ray.init(num_cpus=max(2, int(args.num_cpus)), include_dashboard=False, log_to_driver=False,
             runtime_env=runtime_env)
    driver = None
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        with tempfile.TemporaryDirectory(prefix="vsr-bench-live-") as tmp:
            checkpoint = save_model_checkpoint(args.preset, Path(tmp) / f"{args.preset}.pth")
            direct = Upscaler.from_checkpoint(checkpoint, device="cpu")
            url = deploy(checkpoint, args.num_cpus, port)
            driver = launch_chromium(write_y4m(Path(tmp) / "camera.y4m", frames, CAMERA_FPS))
            processes = serve_processes()
            processes.pop("clients")
            direct_stream(direct, sent_size[:8])  # warm-up
            before = direct_stream(direct, sent_size)
            page = run_page(driver, url, args.width, args.output, args.seconds, processes)
            after = direct_stream(direct, sent_size)
    finally:
        if driver is not None:
            driver.quit()
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
    add_rows(report, args, page, (before[0] + after[0]) / 2, after[1], height)
    report.details = {"page": page, "direct_stream_per_s": [before, after], "preset": args.preset,
                      "replica_cpus": args.num_cpus, "torch_threads_direct": torch.get_num_threads(),
                      "camera": {"size": CAMERA_SIZE, "fps": CAMERA_FPS}}
    print(f"wrote {report.write()}")


def add_rows(report: Report, args, page: dict, direct: float, direct_cpu_ms: float, height: int) -> None:
    label = f"{args.preset} {args.width}x{height}, {args.output} back"
    cpu = ", ".join(f"{name} {value:.0f}" for name, value in page["cpu_ms_per_frame"].items())
    server = page["server_ms_per_frame"]
    report.add(f"{label}: direct Upscaler.stream", direct, "frames/s",
               note=f"CPU per frame {direct_cpu_ms:.0f} ms; load {page['load'][0]}")
    report.add(f"{label}: page camera, frames sent", page["sent_per_s"], "frames/s",
               note=f"camera {CAMERA_FPS} frames/s")
    report.add(f"{label}: page camera, frames back", page["back_per_s"], "frames/s", "direct Upscaler.stream",
               page["back_per_s"] / direct, note=f"{page['frames_back']} frames in {page['seconds']:.1f} s; "
               f"page shows '{page['page_shows']}'; load {page['load'][0]} -> {page['load'][1]}")
    report.add(f"{label}: latency sent -> back, p50", page["latency_ms_p50"], "ms",
               note=f"p90 {page['latency_ms_p90']:.0f} ms (2 frames behind by design)")
    report.add(f"{label}: CPU per frame back", sum(page["cpu_ms_per_frame"].values()), "ms",
               note=f"{cpu} ms; server per frame: decode {server['decode_ms']:.0f}, batch {server['batch_ms']:.0f}, "
                    f"model {server['model_ms']:.0f}, encode {server['encode_ms']:.0f} ms")
    report.add(f"{label}: model busy with the stream", server["model_busy"], "fraction",
               note=f"{server['windows_per_pass']:.1f} windows per forward pass (whole stream, warm-up included)")


if __name__ == "__main__":
    main()
