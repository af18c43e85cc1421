"""2. Model inference: frames/s and achieved GFLOP/s of the ``full`` and ``small`` presets
at LR 180x320 and at a small size, as a fraction of the conv peak measured in the same
run (a 96-channel 3x3 channels-last conv), through the one inference path
(``Upscaler.stream`` on decoded frames; no decode/encode here: see bench_pipeline).

Side by side, also: ``upscale_windows`` (every window runs the whole model: the Serve
path), and the path before the speed work (benchmarks/legacy.py: NCHW, no feature
reuse), all on the same weights. FLOPs are counted from the Conv2d layers during the
run (forward hooks), so the feature-reusing stream is credited only the work it does.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import torch

from bench_peak import conv_case
from common import Report, header, measure, parse_args
from flops import conv_flops_per_window, count_conv_flops, cross_check_with_flop_counter
from legacy import LegacyUpscaler
from vsr_core.archs import VSRPPPv2
from vsr_core.frames import window_indices
from vsr_core.inference import Upscaler


def random_model(preset: str, seed: int = 0) -> VSRPPPv2:
    """Random weights, including the last conv (zero at init), so nothing is skipped."""
    torch.manual_seed(seed)
    model = VSRPPPv2.from_preset(preset)
    torch.nn.init.normal_(model.upsample[0].weight, std=0.01)
    return model.eval()


def synthetic_frames(count: int, height: int, width: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    frames = []
    for t in range(count):
        base = np.stack([np.sin((xx + 3 * t) / 9), np.cos((yy - 2 * t) / 7), np.sin((xx + yy + t) / 13)], -1)
        frames.append(np.clip(127 + 90 * base + rng.normal(0, 10, base.shape), 0, 255).astype(np.uint8))
    return frames


def windows_of(frames: list[np.ndarray]) -> torch.Tensor:
    from vsr_core.frames import to_tensor

    clip = to_tensor(np.stack(frames))
    return torch.stack([clip[window_indices(i, len(frames))] for i in range(len(frames))])


def run_case(report: Report, preset: str, height: int, width: int, num_frames: int, batch_size: int,
             repeats: int, paths: tuple[str, ...], conv_fn) -> dict:
    model = random_model(preset)
    frames = synthetic_frames(num_frames, height, width)
    windows = windows_of(frames)
    upscaler = Upscaler(model, device="cpu", batch_size=batch_size)
    no_reuse = Upscaler(model, device="cpu", batch_size=batch_size)
    no_reuse.reuses_features = lambda h, w: False  # every window through the whole model
    old = LegacyUpscaler(model, batch_size=batch_size)
    available = {
        "stream": lambda: list(upscaler.stream(iter(frames))),
        "stream, no reuse": lambda: list(no_reuse.stream(iter(frames))),
        "upscale_windows": lambda: [upscaler.upscale_windows(windows[i:i + batch_size])
                                    for i in range(0, num_frames, batch_size)],
        "before": lambda: list(old.stream(iter(frames))),
    }
    candidates = {"conv peak": lambda: [conv_fn() for _ in range(CONV_CALLS)]}
    candidates.update({name: available[name] for name in ("stream",) + paths})
    # Work actually done, counted from the conv layers during one run of each path (which
    # is also its warm-up run).
    flops = {name: count_conv_flops(model, fn)[0] / num_frames for name, fn in candidates.items()
             if name != "conv peak"}
    conv_fn()
    timings = measure(candidates, repeats=repeats, warmup=0)
    conv_peak = CONV_CALLS * conv_case_flops / timings["conv peak"].median / 1e9
    label = f"{preset} {height}x{width} b{batch_size}"
    fps = {k: num_frames / t.median for k, t in timings.items() if k != "conv peak"}
    gflops = {k: flops[k] * fps[k] / 1e9 for k in fps}
    report.add(f"{label}: stream (feature reuse)", fps["stream"], "frames/s")
    report.add(f"{label}: stream achieved", gflops["stream"], "GFLOP/s", "conv peak", gflops["stream"] / conv_peak,
               note=f"conv peak {conv_peak:.0f} GFLOP/s")
    titles = {"stream, no reuse": "stream, no feature reuse", "upscale_windows": "upscale_windows (Serve path)",
              "before": "before (NCHW, no reuse)"}
    for name in paths:
        note = f"{gflops[name] / conv_peak:.2f} of conv peak"
        if name in ("before", "stream, no reuse"):
            note += f"; stream is {fps['stream'] / fps[name]:.2f}x faster"
        report.add(f"{label}: {titles[name]}", fps[name], "frames/s", "stream", fps[name] / fps["stream"], note=note)
    return {
        "preset": preset, "height": height, "width": width, "frames": num_frames, "batch_size": batch_size,
        "conv_peak_gflops": conv_peak, "flops_per_frame": flops, "frames_per_s": fps, "gflops": gflops,
        "fraction_of_conv_peak": {k: v / conv_peak for k, v in gflops.items()},
        "timings": {k: t.to_dict() for k, t in timings.items()},
    }


conv_case_flops = 0
CONV_CALLS = 3


def untuned_child(preset: str, height: int, width: int, num_frames: int, batch_size: int, repeats: int) -> None:
    """In a process started with VSR_MALLOC_TUNING=0: stream and the old path with glibc's
    default allocator behaviour, and this process's own conv peak; prints JSON."""
    import vsr_core.inference as inference

    conv_fn, flops = conv_case()
    model = random_model(preset)
    frames = synthetic_frames(num_frames, height, width)
    upscaler = Upscaler(model, device="cpu", batch_size=batch_size)
    assert not inference._allocator_tuned
    old = LegacyUpscaler(model, batch_size=batch_size)
    timings = measure({"conv peak": lambda: [conv_fn() for _ in range(CONV_CALLS)],
                       "stream": lambda: list(upscaler.stream(iter(frames))),
                       "before": lambda: list(old.stream(iter(frames)))}, repeats=repeats, warmup=1)
    print(json.dumps({"conv_peak_gflops": CONV_CALLS * flops / timings["conv peak"].median / 1e9,
                      "frames_per_s": {k: num_frames / t.median for k, t in timings.items() if k != "conv peak"},
                      "timings": {k: t.to_dict() for k, t in timings.items()}}))


def run_untuned(report: Report, case: dict, repeats: int) -> dict:
    """The case's stream and old path in a child process without the allocator tuning,
    each normalised by the child's own conv peak (the child runs after this process's
    measurement, so the load may differ; the conv peak is the common yardstick)."""
    args = [str(case[k]) for k in ("preset", "height", "width", "frames", "batch_size")] + [str(repeats)]
    env = {**os.environ, "VSR_MALLOC_TUNING": "0"}
    proc = subprocess.run([sys.executable, __file__, "--untuned-child", *args], capture_output=True, text=True,
                          env=env, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"child failed: {proc.stderr[-2000:]}")
    child = json.loads(proc.stdout.strip().splitlines()[-1])
    label = f"{case['preset']} {case['height']}x{case['width']} b{case['batch_size']}"
    tuned_fraction = case["fraction_of_conv_peak"]["stream"]
    for name, title in (("stream", "stream, glibc default allocator"), ("before", "before, default allocator")):
        fraction = case["flops_per_frame"][name if name in case["flops_per_frame"] else "stream"] * \
            child["frames_per_s"][name] / 1e9 / child["conv_peak_gflops"]
        report.add(f"{label}: {title}", child["frames_per_s"][name], "frames/s", "stream (peak-normalised)",
                   fraction / tuned_fraction, note=f"{fraction:.2f} of its conv peak "
                   f"({child['conv_peak_gflops']:.0f}); stream is {tuned_fraction / fraction:.2f}x faster")
    return child


def main(argv=None) -> None:
    global conv_case_flops
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--untuned-child":
        preset, *numbers = sys.argv[2:]
        return untuned_child(preset, *map(int, numbers))
    args = parse_args(__doc__, argv)
    full = args.full
    report = Report("inference", "full" if full else "quick")
    header("inference", full)
    conv_fn, conv_case_flops = conv_case()  # the conv peak, re-measured inside every case
    # (preset, H, W, frames, batch, repeats, paths besides "stream")
    every = ("stream, no reuse", "upscale_windows", "before")
    if full:
        cases = [("full", 180, 320, 4, 4, 3, every), ("small", 180, 320, 16, 4, 5, every),
                 ("full", 64, 64, 16, 4, 5, every), ("small", 64, 64, 32, 4, 5, every),
                 ("full", 64, 64, 16, 1, 5, ("stream, no reuse",)),  # batching windows: b1 vs b4
                 ("small", 64, 64, 32, 1, 5, ("stream, no reuse",))]
    else:  # ~2 minutes on 2 idle cores
        cases = [("full", 180, 320, 1, 1, 2, ("stream, no reuse", "before")), ("small", 180, 320, 8, 4, 3, every),
                 ("full", 64, 64, 4, 4, 3, ("stream, no reuse", "upscale_windows")),
                 ("small", 64, 64, 16, 4, 3, every)]
    results = [run_case(report, *case, conv_fn=conv_fn) for case in cases]
    # the true "before": also without the allocator tuning (a process-wide setting: a child process)
    untuned = {}
    for case in results:
        if (case["preset"], case["height"]) in ({("small", 180), ("full", 180)} if full else {("small", 180)}):
            untuned[f"{case['preset']} {case['height']}x{case['width']}"] = run_untuned(report, case, 3)
    # the hook count is the model's own arithmetic: cross-check one forward with torch's FlopCounterMode
    model = random_model("full")
    report.details = {
        "cases": results,
        "untuned_allocator": untuned,
        "flops_per_window_full_180x320": {
            "forward_hooks": conv_flops_per_window(model, 180, 320),
            "torch_flop_counter": cross_check_with_flop_counter(model, 180, 320),
        },
    }
    print(f"wrote {report.write()}")


if __name__ == "__main__":
    main()
