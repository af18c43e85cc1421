"""8. Backends and precisions: the model at LR 320x180 (180x320 pixels -> 960x540) through
``Upscaler.stream`` with each backend and precision, side by side in one process:

  torch fp32           eager, the path before bf16 (the reference)
  torch bf16           eager under bf16 autocast (runs on every CPU; fast only with native bf16)
  onnxruntime fp32     the ONNX export (dynamic shapes) in an ONNX Runtime session
  torch-compile        inductor, at the precision ``auto`` picks here (quick: small preset only)

Each figure: frames/s, achieved GFLOP/s (conv FLOPs of one window per frame, counted from the
model's layers), the ratio to the conv peak at the best precision the CPU runs (a 96-ch 3x3
channels-last conv at 180x320 in fp32 and under bf16 autocast, both measured in this run,
between the model cases), and the first call's time (export / compile included). Then
``vsr upscale`` (decode + model + H.264 encode) for the small preset, with the default
(``auto``) precision against fp32, and what ``auto`` resolved to on this machine.

The other kind of CPU, in a child process: oneDNN limited to AVX2 (``ONEDNN_MAX_CPU_ISA=AVX2``,
no bf16 instructions, as on an AVX2-only CPU): the conv peak and the small preset in fp32 and
bf16, and what ``auto`` picks there.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench_inference import random_model, synthetic_frames
from bench_peak import conv_case
from bench_pipeline import run_cli, save_model_checkpoint, write_clip
from common import Report, header, measure, parse_args
from flops import conv_flops_per_window
from vsr_core.frames import cpu_bf16_speedup, native_bf16, resolve_precision
from vsr_core.inference import Upscaler

HEIGHT, WIDTH = 180, 320


CONV_CALLS = 3  # conv calls per peak measurement: about as long as a model candidate at small


def conv_peak_candidates() -> tuple[dict, int]:
    """The 96-ch conv peak in fp32 and under bf16 autocast, as candidates to measure round-robin
    with the model (so both see the same load); (candidates, FLOPs per candidate call)."""
    run, flops = conv_case()

    def fp32():
        for _ in range(CONV_CALLS):
            run()

    def bf16():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fp32()

    return {"peak fp32": fp32, "peak bf16": bf16}, CONV_CALLS * flops


def first_call(upscaler: Upscaler, frames) -> float:
    start = time.perf_counter()
    list(upscaler.stream(iter(frames)))
    return time.perf_counter() - start


def run_preset(report: Report, preset: str, num_frames: int, batch_size: int, repeats: int,
               compiled: list[str]) -> dict:
    model = random_model(preset)
    frames = synthetic_frames(num_frames, HEIGHT, WIDTH)
    flops_per_frame = conv_flops_per_window(model, HEIGHT, WIDTH)
    variants = {"torch fp32": ("torch", "fp32"), "torch bf16": ("torch", "bf16"),
                "onnxruntime fp32": ("onnxruntime", "fp32")}
    variants.update({f"torch-compile {p}": ("torch-compile", p) for p in compiled})
    upscalers, first = {}, {}
    for name, (backend, precision) in variants.items():
        upscalers[name] = Upscaler(model, device="cpu", batch_size=batch_size, precision=precision, backend=backend)
        first[name] = first_call(upscalers[name], frames)  # export / compile happen here
    peak_candidates, peak_flops = conv_peak_candidates()
    for fn in peak_candidates.values():
        fn()  # warm-up
    candidates = dict(peak_candidates)
    candidates.update({name: (lambda u=u: list(u.stream(iter(frames)))) for name, u in upscalers.items()})
    timings = measure(candidates, repeats=repeats, warmup=0)
    peak = {name.split()[1]: peak_flops / timings.pop(name).median / 1e9 for name in peak_candidates}
    best = max(peak.values())
    label = f"{preset} {HEIGHT}x{WIDTH} b{batch_size}"
    report.add(f"{label}: conv peak fp32 (same run)", peak["fp32"], "GFLOP/s")
    report.add(f"{label}: conv peak bf16 autocast (same run)", peak["bf16"], "GFLOP/s", "fp32 conv peak",
               peak["bf16"] / peak["fp32"], note=f"native bf16 flags: {native_bf16()}")
    reference = num_frames / timings["torch fp32"].median
    fps = {}
    for name, timing in timings.items():
        fps[name] = num_frames / timing.median
        gflops = flops_per_frame * fps[name] / 1e9
        precision = variants[name][1]
        report.add(f"{label}: {name}", fps[name], "frames/s", "torch fp32", fps[name] / reference,
                   note=f"{gflops:.0f} GFLOP/s = {gflops / best:.2f} of the best conv peak ({best:.0f}), "
                   f"{gflops / peak.get(precision, peak['fp32']):.2f} of the {precision} peak; spread "
                   f"{timing.spread:.2f}; best run {num_frames / min(timing.seconds):.2f} frames/s; "
                   f"first call {first[name]:.1f} s")
    for name, seconds in first.items():
        steady = num_frames / fps[name]
        report.add(f"{label}: {name} first call (export/compile)", seconds, "s", "a steady call",
                   seconds / steady)
    compile_names = [n for n in fps if n.startswith("torch-compile")]
    for name in compile_names:  # frames after which the compile has paid for itself
        eager = f"torch {variants[name][1]}"
        saved = 1 / fps[eager] - 1 / fps[name]
        extra = first[name] - first[eager]
        if saved > 0:
            report.add(f"{label}: {name} pays after", extra / saved, "frames", note=f"{extra:.0f} s of compile / "
                       f"{saved * 1000:.0f} ms saved per frame against {eager}")
        else:
            report.add(f"{label}: {name} never pays", 0, "frames", note=f"not faster than {eager}")
    noise = max(t.spread for t in timings.values())
    return {"preset": preset, "frames": num_frames, "batch_size": batch_size, "flops_per_frame": flops_per_frame,
            "conv_peak_gflops": peak, "frames_per_s": fps, "first_call_s": first, "noise": noise,
            "timings": {k: t.to_dict() for k, t in timings.items()}}


def end_to_end(report: Report, num_frames: int, repeats: int, auto: str) -> dict:
    """``vsr upscale`` of a 320x180 clip (small preset): decode + model + encode, auto vs fp32."""
    with tempfile.TemporaryDirectory(prefix="vsr-bench-backends-") as tmp:
        tmp = Path(tmp)
        checkpoint = save_model_checkpoint("small", tmp / "small.pth")
        source = write_clip(tmp / "in.mp4", num_frames, HEIGHT, WIDTH)
        common = ["upscale", str(source), str(tmp / "out.mp4"), "--checkpoint", str(checkpoint), "--device", "cpu"]
        argvs = {"vsr upscale, --precision fp32": common + ["--precision", "fp32"],
                 f"vsr upscale, default (auto = {auto})": common}
        fps = {name: [] for name in argvs}
        for name, argv in argvs.items():  # warm-up (the precision measurement is cached by now)
            run_cli(argv)
        for _ in range(repeats):
            for name, argv in argvs.items():
                fps[name].append(run_cli(argv))
    median = {k: sorted(v)[len(v) // 2] for k, v in fps.items()}
    reference = median["vsr upscale, --precision fp32"]
    for name, value in median.items():
        report.add(f"small {HEIGHT}x{WIDTH}, {num_frames} fr: {name}", value, "frames/s", "fp32", value / reference,
                   note=f"runs {', '.join(f'{v:.1f}' for v in fps[name])}")
    return {"frames": num_frames, "frames_per_s": fps}


def emulated_child() -> None:
    """Run with ONEDNN_MAX_CPU_ISA=AVX2: conv peaks and the small preset, fp32 vs bf16; JSON out."""
    peak_candidates, peak_flops = conv_peak_candidates()
    model = random_model("small")
    frames = synthetic_frames(4, HEIGHT, WIDTH)
    upscalers = {p: Upscaler(model, device="cpu", batch_size=4, precision=p) for p in ("fp32", "bf16")}
    candidates = dict(peak_candidates)
    candidates.update({f"small {p}": (lambda u=u: list(u.stream(iter(frames)))) for p, u in upscalers.items()})
    timings = measure(candidates, repeats=2, warmup=1)
    print(json.dumps({
        "auto": resolve_precision("auto", torch.device("cpu")), "bf16_speedup_measured": cpu_bf16_speedup(),
        "conv_peak_gflops": {k.split()[1]: peak_flops / timings[k].median / 1e9 for k in peak_candidates},
        "small_frames_per_s": {k.split()[1]: len(frames) / timings[k].median for k in timings if k.startswith("small")},
        "timings": {k: t.to_dict() for k, t in timings.items()}}))


def without_native_bf16(report: Report) -> dict:
    with tempfile.TemporaryDirectory() as cache:  # a fresh precision measurement for that "CPU"
        env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "VSR_CACHE_DIR": cache}
        env.pop("VSR_PRECISION", None)
        proc = subprocess.run([sys.executable, __file__, "--emulated-child"], capture_output=True, text=True,
                              env=env, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"child failed: {proc.stderr[-2000:]}")
    child = json.loads(proc.stdout.strip().splitlines()[-1])
    peak, fps = child["conv_peak_gflops"], child["small_frames_per_s"]
    report.add("no native bf16 (oneDNN AVX2): conv peak bf16", peak["bf16"], "GFLOP/s", "its fp32 conv peak",
               peak["bf16"] / peak["fp32"], note=f"fp32 {peak['fp32']:.0f} GFLOP/s")
    report.add(f"no native bf16 (oneDNN AVX2): small {HEIGHT}x{WIDTH} b4 bf16", fps["bf16"], "frames/s",
               "its fp32", fps["bf16"] / fps["fp32"], note=f"fp32 {fps['fp32']:.2f} frames/s")
    report.add("no native bf16 (oneDNN AVX2): auto precision", child["bf16_speedup_measured"], "x",
               note=f"-> {child['auto']}")
    return child


def main(argv=None) -> None:
    if argv is None and sys.argv[1:] == ["--emulated-child"]:
        return emulated_child()
    args = parse_args(__doc__, argv, extra=lambda parser: parser.add_argument(
        "--presets", nargs="+", default=["small", "full"], choices=["small", "full"], help="model presets to run"))
    full = args.full
    report = Report("backends", "full" if full else "quick")
    header("backends", full)
    auto = resolve_precision("auto", torch.device("cpu"))
    speedup = cpu_bf16_speedup()
    report.add("auto precision on this CPU", speedup, "x", note=f"-> {auto} (native bf16 flags: {native_bf16()}; "
               "bf16/fp32 speed of a 64-ch conv, 1 thread, cached per machine)")
    cases = [("small", 16 if full else 8, 4, 5 if full else 3, ["fp32", "bf16"] if full else [auto]),
             ("full", 4 if full else 2, 4 if full else 2, 3 if full else 2, ["fp32", "bf16"] if full else [])]
    results = [run_preset(report, *case) for case in cases if case[0] in args.presets]
    for case in results:  # does anything beat the default by more than the noise?
        fps = case["frames_per_s"]
        default = f"torch {auto}"
        fastest = max(fps, key=fps.get)
        margin = fps[fastest] / fps[default]
        verdict = f"{fastest} wins by more than the noise" if margin > 1 + case["noise"] else \
            "the default is the fastest within the noise"
        report.add(f"{case['preset']}: fastest / the default (torch, auto = {auto})", margin, "x",
                   note=f"fastest: {fastest}; noise (largest spread) {case['noise']:.2f}: {verdict}")
    e2e = end_to_end(report, 96 if full else 48, 3 if full else 2, auto)
    emulated = without_native_bf16(report)
    report.details = {"auto_precision": auto, "bf16_speedup_measured": speedup, "native_bf16": native_bf16(),
                      "cases": results, "end_to_end": e2e, "without_native_bf16": emulated}
    print(f"wrote {report.write()}")


if __name__ == "__main__":
    main()
