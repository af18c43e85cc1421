"""3. Whole-video pipeline (the ``vsr upscale`` path: decode, windows, model, encode)
frames/s as a fraction of model-only frames/s at the same size, measured side by side
(round-robin) in one process; and the peak memory (RSS growth, VmHWM) of ``vsr upscale``
in a fresh subprocess for a 100-frame and a 400-frame generated clip, which must be flat.

Side by side:
  model only        Upscaler.stream over frames already decoded in memory (no decode/encode)
  vsr upscale       vsr_core.cli.main(["upscale", ...]): decode, stream, encode in one thread
  overlapped        the same with Upscaler.stream(prefetch=...): decode thread -> bounded queue
                    -> model thread -> bounded queue -> encode in the caller
  decode only / encode only   the two I/O stages alone, to explain the gap
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench_inference import random_model, synthetic_frames
from common import ROOT, Report, header, measure, parse_args, peak_rss_mb
from vsr_core.checkpoint import save_checkpoint
from vsr_core.data.video_io import FrameWriter, iter_frames, probe_video
from vsr_core.inference import Upscaler


def save_model_checkpoint(preset: str, path: Path) -> Path:
    model = random_model(preset)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=10)
    return save_checkpoint({
        "step": 0, "epoch": 0, "model_state_dict": model.state_dict(), "optimizer_state_dict": optimizer.state_dict(),
        "scaler_state_dict": {}, "scheduler_state_dict": scheduler.state_dict(),
        "config": {"PRESET": preset}, "training_phase": "pretrain",
    }, path)


def write_clip(path: Path, num_frames: int, height: int, width: int) -> Path:
    chunk = 25
    with FrameWriter(path, fps=25.0) as writer:
        for start in range(0, num_frames, chunk):
            for frame in synthetic_frames(min(chunk, num_frames - start), height, width, seed=start):
                writer.write(frame)
    return path


def run_cli(argv: list[str]) -> float:
    """``vsr upscale`` in this process; its own frames/s (measured around the stream loop)."""
    from vsr_core.cli import main as vsr_main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        code = vsr_main(argv)
    if code != 0:
        raise RuntimeError(f"vsr {' '.join(argv)} failed ({code}): {out.getvalue()}")
    match = re.search(r"\(([\d.]+) frames/s\)", out.getvalue())
    return float(match.group(1))


def overlapped_upscale(upscaler: Upscaler, source: Path, target: Path, prefetch: int) -> int:
    """cmd_upscale with the threaded stream: what `vsr upscale` does, with decode/model/encode overlapped."""
    info = probe_video(source)
    with FrameWriter(target, fps=info.fps) as writer:
        for frame in upscaler.stream(iter_frames(source), prefetch=prefetch):
            writer.write(frame)
    return writer.count


def cpu_seconds(fn) -> float:
    """CPU time (user + system, all threads of this process) of one call."""
    before = resource.getrusage(resource.RUSAGE_SELF)
    fn()
    after = resource.getrusage(resource.RUSAGE_SELF)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


# --- memory: `vsr upscale` in a fresh process ----------------------------------------------
def child(argv: list[str]) -> None:
    """Run `vsr upscale argv` and print {rss_before_mb, hwm_mb, fps} as JSON (last line)."""
    import vsr_core.cli  # noqa: F401 - torch and the CLI imported before the baseline

    rss_before = _status_mb("VmRSS")
    fps = run_cli(argv)
    print(json.dumps({"rss_before_mb": rss_before, "hwm_mb": peak_rss_mb(), "fps": fps}))


def _status_mb(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def memory_run(argv: list[str]) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, __file__, "--child", *argv], capture_output=True, text=True, env=env,
                          timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"child failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def throughput_case(report: Report, tmp: Path, preset: str, height: int, width: int, num_frames: int,
                    repeats: int, batch_size: int, prefetch: int) -> dict:
    checkpoint = save_model_checkpoint(preset, tmp / f"{preset}.pth")
    clip = write_clip(tmp / f"clip_{preset}_{num_frames}.mp4", num_frames, height, width)
    decoded = list(iter_frames(clip))
    upscaler = Upscaler.from_checkpoint(checkpoint, device="cpu", batch_size=batch_size)
    hr_frames = list(upscaler.stream(iter(decoded)))
    cli_args = ["upscale", str(clip), str(tmp / "out_cli.mp4"), "--checkpoint", str(checkpoint),
                "--device", "cpu", "--batch-size", str(batch_size)]
    cli_fps: list[float] = []

    def encode_only():
        with FrameWriter(tmp / "encode_only.mp4", fps=25.0) as writer:
            for frame in hr_frames:
                writer.write(frame)

    candidates = {
        "model only": lambda: list(upscaler.stream(iter(decoded))),
        "vsr upscale": lambda: cli_fps.append(run_cli(cli_args)),
        "overlapped": lambda: overlapped_upscale(upscaler, clip, tmp / "out_overlap.mp4", prefetch),
        "decode only": lambda: list(iter_frames(clip)),
        "encode only": encode_only,
    }
    timings = measure(candidates, repeats=repeats, warmup=1)
    fps = {k: num_frames / t.median for k, t in timings.items()}
    fps["vsr upscale (own timer)"] = sorted(cli_fps)[len(cli_fps) // 2]
    model_fps = fps["model only"]
    label = f"{preset} {height}x{width}, {num_frames} fr"
    report.add(f"{label}: model only (Upscaler.stream)", model_fps, "frames/s")
    report.add(f"{label}: vsr upscale (serial)", fps["vsr upscale (own timer)"], "frames/s",
               "model only", fps["vsr upscale (own timer)"] / model_fps)
    report.add(f"{label}: overlapped (prefetch={prefetch})", fps["overlapped"], "frames/s", "model only",
               fps["overlapped"] / model_fps)
    report.add(f"{label}: decode only", fps["decode only"], "frames/s", "model only", fps["decode only"] / model_fps)
    report.add(f"{label}: encode only ({3 * width}x{3 * height})", fps["encode only"], "frames/s",
               "model only", fps["encode only"] / model_fps)
    serial_bound = 1 / (1 / model_fps + 1 / fps["decode only"] + 1 / fps["encode only"])
    report.add(f"{label}: serial bound 1/(1/m+1/d+1/e)", serial_bound, "frames/s", "model only",
               serial_bound / model_fps)
    # The best any overlap can do: every core busy, i.e. cores / (CPU seconds per frame of all stages)
    cpu = {name: cpu_seconds(candidates[name]) / num_frames for name in ("model only", "decode only", "encode only")}
    cores = len(os.sched_getaffinity(0))
    cpu_bound = cores / sum(cpu.values())
    report.add(f"{label}: CPU bound {cores}/(cpu_m+cpu_d+cpu_e)", cpu_bound, "frames/s", "model only",
               cpu_bound / model_fps, note="CPU ms/frame: " + ", ".join(
                   f"{k.split()[0]} {1e3 * v:.0f}" for k, v in cpu.items()))
    return {"frames": num_frames, "frames_per_s": fps, "cpu_s_per_frame": cpu,
            "timings": {k: t.to_dict() for k, t in timings.items()}}


def main(argv=None) -> None:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--child":
        return child(sys.argv[2:])
    args = parse_args(__doc__, argv)
    full = args.full
    report = Report("pipeline", "full" if full else "quick")
    header("pipeline", full)
    height, width = 180, 320
    batch_size = 4
    prefetch = 8
    # (preset, frames, repeats): small in quick mode; the full preset (3 s/frame here) only with --full
    cases = [("small", 48, 3), ("full", 8, 2)] if full else [("small", 24, 2)]
    details: dict = {"size": [height, width], "batch_size": batch_size, "prefetch": prefetch, "cases": {}}
    with tempfile.TemporaryDirectory(prefix="vsr-bench-") as tmp:
        tmp = Path(tmp)
        for preset, num_frames, repeats in cases:
            details["cases"][preset] = throughput_case(report, tmp, preset, height, width, num_frames, repeats,
                                                       batch_size, prefetch)

        # memory: flat in the clip's length (small preset: the length matters, not the model)
        checkpoint = save_model_checkpoint("small", tmp / "small_mem.pth")
        mem_h, mem_w = (180, 320) if full else (90, 160)
        memory = {}
        for length in (100, 400):
            source = write_clip(tmp / f"mem_{length}.mp4", length, mem_h, mem_w)
            start = time.perf_counter()
            memory[length] = memory_run(["upscale", str(source), str(tmp / f"mem_out_{length}.mp4"), "--checkpoint",
                                         str(checkpoint), "--device", "cpu", "--batch-size", str(batch_size)])
            memory[length]["wall_s"] = time.perf_counter() - start
            growth = memory[length]["hwm_mb"] - memory[length]["rss_before_mb"]
            memory[length]["growth_mb"] = growth
        for length in (100, 400):
            growth = memory[length]["growth_mb"]
            report.add(f"vsr upscale small {mem_h}x{mem_w}, {length} fr: peak RSS growth", growth, "MiB",
                       "100-frame clip", growth / memory[100]["growth_mb"],
                       note=f"VmHWM {memory[length]['hwm_mb']:.0f} MiB, {memory[length]['fps']:.2f} frames/s")
        details.update(memory=memory, memory_size=[mem_h, mem_w])
        report.details = details
    print(f"wrote {report.write()}")


if __name__ == "__main__":
    main()
