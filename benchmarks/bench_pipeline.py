"""3. Whole-video pipeline: ``vsr upscale`` frames/s against the forward pass, in one process,
round-robin; and the peak memory (RSS growth, VmHWM) of ``vsr upscale`` in a fresh subprocess
for clips of 100, 400 and 800 frames, which must be flat.

The input is real video: ``bigbuckbunny.mp4`` scaled to 320x180 (the issue's test clip). Side
by side, the model's weights random (its speed does not depend on them):

  forward           Upscaler.upscale_windows on batches of 4 windows already in memory (float):
                    the model alone, the reference of every ratio
  stream            Upscaler.stream over decoded uint8 frames in memory (conversions to and from
                    uint8, feature reuse)
  vsr upscale mp4   vsr_core.cli.main(["upscale", ...]) with its defaults: decode, model and encode
                    overlapped (vsr_core.video.chunk)
  vsr upscale png   the same into a folder of PNG frames
  ... --preset veryfast   mp4 with x264's veryfast preset (the real-time choice; -0.3 to -1 dB at CRF 18)
  ..., stages serial  the same two with the stages one after another in one thread (the decoder
                    and encoder threads of vsr_core.video.chunk replaced by plain calls): what the
                    overlap buys, in the same harness (vsr upscale also plans, joins the segments,
                    muxes and reads its output back)
  serial            decode, stream and encode one after the other in one thread, x264 with its own
                    threads (FFmpeg's default), without the video engine around them
  prefetch=8        Upscaler.stream(prefetch=8) (decode thread -> model thread) with the encoder
                    in the caller, in the same harness as serial: the overlap measured and
                    rejected before
  decode only, encode only (default encoder, one thread; PNG)   the stages alone, with CPU time

Targets (issue 24): vsr upscale >= 0.8 of the forward pass (mp4), >= 0.6 (PNG); stream >= 0.9;
the realtime preset: forward >= 40 frames/s, vsr upscale >= 25 frames/s at 320x180.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench_inference import random_model
from common import ROOT, Report, header, measure, parse_args, peak_rss_mb
from vsr_core.checkpoint import save_checkpoint
from vsr_core.data.samples import DEFAULT_TRAIN_CLIP, sample_clip
from vsr_core.data.video_io import FrameWriter, iter_frames, probe_video, read_frames
from vsr_core.frames import to_tensor, window_indices
from vsr_core.inference import Upscaler

BATCH = 4
CLI_PATHS = ("vsr upscale mp4", "vsr upscale png", "vsr upscale mp4, stages serial", "vsr upscale png, stages serial",
             "vsr upscale mp4 --preset veryfast")


def save_model_checkpoint(preset: str, path: Path, model: torch.nn.Module | None = None) -> Path:
    model = model if model is not None else random_model(preset)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=10)
    return save_checkpoint({
        "step": 0, "epoch": 0, "model_state_dict": model.state_dict(), "optimizer_state_dict": optimizer.state_dict(),
        "scaler_state_dict": {}, "scheduler_state_dict": scheduler.state_dict(),
        "config": {"PRESET": preset}, "training_phase": "pretrain",
    }, path)


def write_clip(path: Path, num_frames: int, height: int, width: int) -> Path:
    """``num_frames`` frames of bigbuckbunny.mp4 (132 frames, looped if more are asked for), scaled to
    ``height`` x ``width`` (bicubic, antialiased), as an H.264 clip of quality CRF 12."""
    import torch.nn.functional as F

    from vsr_core.data.video_encoder import EncoderSettings

    source = read_frames(sample_clip(DEFAULT_TRAIN_CLIP), max_frames=num_frames)
    with FrameWriter(path, fps=24.0, encoder=EncoderSettings("h264", 12, "medium")) as writer:
        for i in range(num_frames):
            frame = torch.from_numpy(source[i % len(source)]).permute(2, 0, 1)[None].float()
            small = F.interpolate(frame, size=(height, width), mode="bicubic", antialias=True)
            writer.write(small.clamp(0, 255).round().byte()[0].permute(1, 2, 0).contiguous().numpy())
    return path


def run_cli(argv: list[str]) -> float:
    """``vsr upscale`` in this process; its own frames/s (measured around the upscaling)."""
    from vsr_core.cli import main as vsr_main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        code = vsr_main(argv)
    if code != 0:
        raise RuntimeError(f"vsr {' '.join(argv)} failed ({code}): {out.getvalue()}")
    match = re.search(r"\(([\d.]+) frames/s\)", out.getvalue())
    return float(match.group(1))


def serial_upscale(upscaler: Upscaler, source: Path, target: Path) -> None:
    """Decode, stream and encode in this one thread (the encoder with its own threads): the old vsr upscale."""
    info = probe_video(source)
    with FrameWriter(target, fps=info.fps) as writer:
        for frame in upscaler.stream(iter_frames(source)):
            writer.write(frame)


def overlapped_upscale(upscaler: Upscaler, source: Path, target: Path, prefetch: int) -> int:
    """The overlap measured before: decode thread -> model thread -> the caller encodes."""
    info = probe_video(source)
    with FrameWriter(target, fps=info.fps) as writer:
        for frame in upscaler.stream(iter_frames(source), prefetch=prefetch):
            writer.write(frame)
    return writer.count


class InlineSink:
    """``overlap.BackgroundSink`` without its thread: every item consumed at once, in the caller."""

    def __init__(self, consume, ahead: int, name: str, finish=None):
        self._consume, self._finish = consume, finish

    def put(self, item) -> None:
        self._consume(item)

    def end(self) -> None:
        if self._finish is not None:
            finish, self._finish = self._finish, None
            finish()

    close = end

    def abandon(self) -> None:
        self._finish = None


@contextlib.contextmanager
def stages_serial():
    """vsr upscale with its decoder and encoder in the model's thread, one after the other."""
    import vsr_core.video.chunk as chunk

    saved = chunk.BackgroundSink, chunk.background
    chunk.BackgroundSink, chunk.background = InlineSink, lambda items, ahead, name: iter(items)
    try:
        yield
    finally:
        chunk.BackgroundSink, chunk.background = saved


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


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


# --- throughput ------------------------------------------------------------------------------
def candidates_of(preset: str, tmp: Path, clip: Path, num_frames: int, cpu: dict) -> dict:
    """The paths measured side by side (each call records its CPU seconds in ``cpu``)."""
    checkpoint = save_model_checkpoint(preset, tmp / f"{preset}.pth")
    upscaler = Upscaler.from_checkpoint(checkpoint, device="cpu", batch_size=BATCH)
    decoded = list(iter_frames(clip))
    frames = to_tensor(np.stack(decoded))
    windows = torch.stack([frames[window_indices(i, num_frames)] for i in range(num_frames)])
    hr_frames = list(upscaler.stream(iter(decoded)))
    cli = ["upscale", str(clip), "", "--checkpoint", str(checkpoint), "--device", "cpu"]
    runs = {"png": 0}

    def png_cli() -> float:
        runs["png"] += 1
        target = tmp / f"png_{runs['png']}"
        fps = run_cli([*cli[:2], str(target), *cli[3:]])
        shutil.rmtree(target)
        return fps

    def serially(fn):
        def call():
            with stages_serial():
                return fn()
        return call

    def encode_only(target: str) -> None:
        with FrameWriter(tmp / target, fps=24.0, threads=1) as writer:
            for frame in hr_frames:
                writer.write(frame)

    paths = {
        "forward": lambda: [upscaler.upscale_windows(windows[i:i + BATCH]) for i in range(0, num_frames, BATCH)],
        "stream": lambda: list(upscaler.stream(iter(decoded))),
        "vsr upscale mp4": lambda: run_cli([*cli[:2], str(tmp / "out.mp4"), *cli[3:]]),
        "vsr upscale png": png_cli,
        "vsr upscale mp4, stages serial": serially(lambda: run_cli([*cli[:2], str(tmp / "out_serial.mp4"), *cli[3:]])),
        "vsr upscale png, stages serial": serially(png_cli),
        "vsr upscale mp4 --preset veryfast": lambda: run_cli([*cli[:2], str(tmp / "fast.mp4"), *cli[3:],
                                                              "--preset", "veryfast"]),
        "serial": lambda: serial_upscale(upscaler, clip, tmp / "serial.mp4"),
        "prefetch=8": lambda: overlapped_upscale(upscaler, clip, tmp / "prefetch.mp4", 8),
        "decode only": lambda: list(iter_frames(clip)),
        "encode only (mp4)": lambda: encode_only("encode_only.mp4"),
        "encode only (png)": lambda: encode_only("encode_only_png"),
    }

    def timed(name, fn):
        def call():
            start = cpu_seconds()
            result = fn()
            cpu.setdefault(name, []).append(cpu_seconds() - start)
            return result
        return call

    return {name: timed(name, fn) for name, fn in paths.items()}


def throughput_case(report: Report, tmp: Path, preset: str, height: int, width: int, num_frames: int,
                    repeats: int) -> dict:
    clip = write_clip(tmp / f"clip_{height}x{width}_{num_frames}.mp4", num_frames, height, width)
    cpu: dict[str, list[float]] = {}
    cli_fps: dict[str, list[float]] = {name: [] for name in CLI_PATHS}
    candidates = candidates_of(preset, tmp, clip, num_frames, cpu)
    for name in cli_fps:  # their own timer (the upscaling, without loading the model)
        call = candidates[name]
        candidates[name] = lambda call=call, name=name: cli_fps[name].append(call())
    timings = measure(candidates, repeats=repeats, warmup=1)
    fps = {k: num_frames / t.median for k, t in timings.items()}
    fps.update({k: float(np.median(v[1:])) for k, v in cli_fps.items()})  # without the warm-up run
    cpu_ms = {k: 1e3 * min(v[1:]) / num_frames for k, v in cpu.items()}
    forward = fps["forward"]
    label = f"{preset} {height}x{width}, {num_frames} fr"
    report.add(f"{label}: forward (upscale_windows, batch {BATCH})", forward, "frames/s",
               note=f"CPU {cpu_ms['forward']:.0f} ms/frame")
    for name in ("stream", *CLI_PATHS, "serial", "prefetch=8"):
        note = f"CPU {cpu_ms[name]:.0f} ms/frame"
        if name.endswith("stages serial"):
            overlapped = name.replace(", stages serial", "")
            note += f"; the overlap makes it {fps[overlapped] / fps[name]:.2f}x faster"
        if name == "prefetch=8":
            note += f"; {fps[name] / fps['serial']:.2f}x serial"
        report.add(f"{label}: {name}", fps[name], "frames/s", "forward", fps[name] / forward, note=note)
    for name in ("decode only", "encode only (mp4)", "encode only (png)"):
        report.add(f"{label}: {name}", cpu_ms[name], "ms CPU", "forward CPU", cpu_ms[name] / cpu_ms["forward"],
                   note=f"{fps[name]:.0f} frames/s alone")
    # the best any schedule can do: every core busy with the work of all stages
    cores = len(os.sched_getaffinity(0))
    bound = cores * 1e3 / (cpu_ms["stream"] + cpu_ms["decode only"] + cpu_ms["encode only (mp4)"])
    report.add(f"{label}: CPU bound {cores}/(stream+decode+encode)", bound, "frames/s", "forward", bound / forward)
    return {"frames": num_frames, "frames_per_s": fps, "cpu_ms_per_frame": cpu_ms, "cli_fps_runs": cli_fps,
            "timings": {k: t.to_dict() for k, t in timings.items()}}


MEMORY_LENGTHS = (100, 400, 800)


def memory_case(report: Report, tmp: Path, height: int, width: int) -> dict:
    checkpoint = save_model_checkpoint("small", tmp / "small_mem.pth")
    memory = {}
    for length in MEMORY_LENGTHS:
        source = write_clip(tmp / f"mem_{length}.mp4", length, height, width)
        start = time.perf_counter()
        memory[length] = memory_run(["upscale", str(source), str(tmp / f"mem_out_{length}.mp4"), "--checkpoint",
                                     str(checkpoint), "--device", "cpu", "--batch-size", str(BATCH)])
        memory[length]["wall_s"] = time.perf_counter() - start
        memory[length]["growth_mb"] = memory[length]["hwm_mb"] - memory[length]["rss_before_mb"]
    for length in MEMORY_LENGTHS:
        growth = memory[length]["growth_mb"]
        report.add(f"vsr upscale small {height}x{width}, {length} fr: peak RSS growth", growth, "MiB",
                   "100-frame clip", growth / memory[100]["growth_mb"],
                   note=f"VmHWM {memory[length]['hwm_mb']:.0f} MiB, {memory[length]['fps']:.2f} frames/s")
    return memory


def main(argv=None) -> None:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--child":
        return child(sys.argv[2:])
    args = parse_args(__doc__, argv)
    full = args.full
    report = Report("pipeline", "full" if full else "quick")
    header("pipeline", full)
    height, width = 180, 320
    # (preset, frames, repeats): the full preset (3 s/frame here) only with --full
    cases = [("realtime", 96, 5), ("small", 48, 3), ("full", 8, 2)] if full else [("realtime", 48, 3),
                                                                                  ("small", 24, 2)]
    details: dict = {"size": [height, width], "batch_size": BATCH, "cases": {}}
    with tempfile.TemporaryDirectory(prefix="vsr-bench-") as tmp:
        tmp = Path(tmp)
        for preset, num_frames, repeats in cases:
            details["cases"][preset] = throughput_case(report, tmp, preset, height, width, num_frames, repeats)
        mem_h, mem_w = (180, 320) if full else (90, 160)
        details.update(memory=memory_case(report, tmp, mem_h, mem_w), memory_size=[mem_h, mem_w])
    report.details = details
    print(f"wrote {report.write()}")


if __name__ == "__main__":
    main()
