"""Where each frame's time goes in ``vsr upscale``: decode, colour conversion, uint8 -> tensor,
feature extraction, the rest of the forward pass, output conversion, encode or PNG write, and
waiting, in ms per output frame, per thread.

``vsr upscale`` runs in-process (``vsr_core.cli.main``) on 320x180 video (``bench_pipeline``'s
clip) with every stage's function wrapped by a timer: its *self* time (nested stages
subtracted) is added to its stage, in the thread that called it. A thread's "other" is the
rest of its time in the run: Python between the stages (and, in the model's thread, waiting
where it is not measured). With the stages overlapped their times add up to more than the run.

``--compare-to REF`` also profiles the code of git revision REF (``git archive`` into a
temporary folder, run in a child process with that ``vsr_core`` first on the path), the two
trees alternating (before, after, before, ...), and reports the median of each; a preset that
REF does not know (e.g. ``realtime``) is added to its preset table for the run.

    python benchmarks/bench_profile.py                          # this tree: realtime and small, mp4 and PNG
    python benchmarks/bench_profile.py --compare-to f5cd93a     # before (f5cd93a) and after, side by side
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

from common import ROOT, Report, header

HEIGHT, WIDTH = 180, 320
FRAMES = {"realtime": 48, "small": 24, "tiny": 48, "full": 4}
OUTPUTS = ("mp4", "png")
# (module or class path, attribute, stage): the functions timed, where this tree or an older one has them
STAGES = (
    ("vsr_core.data.video_io", "to_rgb", "colour conversion (decode)"),
    ("vsr_core.inference", "to_tensor", "uint8 -> tensor"),
    ("vsr_core.archs.vsrppp_v2:VSRPPPv2", "extract_features", "feature extraction"),
    ("vsr_core.archs.vsrppp_v2:VSRPPPv2", "reconstruct_subpixels", "forward (after the features)"),
    ("vsr_core.archs.vsrppp_v2:VSRPPPv2", "reconstruct_frames", "forward (after the features)"),
    ("vsr_core.inference", "to_frames", "output conversion (float -> uint8)"),
    ("vsr_core.inference", "subpixels_to_frames", "output conversion (float -> uint8)"),
    ("vsr_core.data.video_io", "from_rgb", "colour conversion (encode)"),
    ("vsr_core.data.video_io:FrameWriter", "write", "encode (x264) or PNG write"),
    ("vsr_core.data.video_io:FrameWriter", "close", "encode (x264) or PNG write"),  # x264's last frames
    ("vsr_core.overlap:BackgroundSink", "put", "waiting for the encoder"),
    ("vsr_core.video.chunk:EncodingChunk", "finish", "waiting for the encoder"),
)
ORDER = ("decode", "colour conversion (decode)", "uint8 -> tensor", "feature extraction",
         "forward (after the features)", "output conversion (float -> uint8)", "colour conversion (encode)",
         "encode (x264) or PNG write", "waiting for decoded frames", "waiting for the encoder", "other")


class StageClock:
    """Self time per (thread, stage), wall and the calling thread's CPU: nested timed calls are
    subtracted from their caller's."""

    def __init__(self):
        self.seconds: dict[tuple[str, str], float] = defaultdict(float)
        self.cpu: dict[tuple[str, str], float] = defaultdict(float)
        self.local = threading.local()

    def clear(self) -> None:
        self.seconds.clear()
        self.cpu.clear()

    def timed(self, stage: str, fn):
        clock = self

        def wrapper(*args, **kwargs):
            stack = clock.local.__dict__.setdefault("stack", [])
            stack.append([0.0, 0.0])
            start, cpu_start = time.perf_counter(), time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                elapsed, cpu = time.perf_counter() - start, time.thread_time() - cpu_start
                nested, nested_cpu = stack.pop()
                key = (threading.current_thread().name, stage)
                clock.seconds[key] += elapsed - nested
                clock.cpu[key] += cpu - nested_cpu
                if stack:
                    stack[-1][0] += elapsed
                    stack[-1][1] += cpu
        return wrapper

    def timed_iterator(self, stage: str, make):
        """``make(...)`` returns an iterator; each ``next`` on it is timed (e.g. decoding a frame)."""
        clock = self

        def wrapper(*args, **kwargs):
            iterator = iter(make(*args, **kwargs))
            step = clock.timed(stage, lambda: next(iterator, _DONE))
            try:
                while (item := step()) is not _DONE:
                    yield item
            finally:
                close = getattr(iterator, "close", None)
                if close is not None:
                    close()
        return wrapper


_DONE = object()


def install(clock: StageClock) -> None:
    import importlib

    for where, attribute, stage in STAGES:
        module_name, _, class_name = where.partition(":")
        try:
            owner = importlib.import_module(module_name)
        except ImportError:  # e.g. vsr_core.overlap in an older tree
            continue
        owner = getattr(owner, class_name, None) if class_name else owner  # None: not in an older tree
        if owner is not None and hasattr(owner, attribute):
            setattr(owner, attribute, clock.timed(stage, getattr(owner, attribute)))
    import vsr_core.video.chunk as chunk

    chunk.iter_timed_frames = clock.timed_iterator("decode", chunk.iter_timed_frames)
    if hasattr(chunk, "background"):  # the model's thread waiting for the decoder's
        chunk.background = clock.timed_iterator("waiting for decoded frames", chunk.background)


def profile_run(preset: str, output: str, num_frames: int, tmp: Path) -> dict:
    """One ``vsr upscale`` with the stages timed: {thread: {stage: ms per frame}}, wall ms per frame."""
    import bench_pipeline
    from vsr_core.archs import vsrppp_v2

    if preset not in vsrppp_v2.PRESETS:  # an older tree: the preset's size from this one
        vsrppp_v2.PRESETS[preset] = vsrppp_v2.ModelSpec(*json.loads(os.environ["VSR_BENCH_PRESET_SPEC"]))
    clip = tmp / f"clip_{num_frames}.mp4"
    if not clip.exists():
        bench_pipeline.write_clip(clip, num_frames, HEIGHT, WIDTH)
    checkpoint = bench_pipeline.save_model_checkpoint(preset, tmp / f"{preset}.pth")
    clock = StageClock()
    install(clock)
    target = tmp / ("out.mp4" if output == "mp4" else f"frames_{time.time_ns()}")
    argv = ["upscale", str(clip), str(target), "--checkpoint", str(checkpoint), "--device", "cpu"]
    bench_pipeline.run_cli(argv)  # warm-up (and the clip's first decode)
    clock.clear()
    target = tmp / ("out.mp4" if output == "mp4" else f"frames_{time.time_ns()}")
    cpu_start, start = time.process_time(), time.perf_counter()
    fps = bench_pipeline.run_cli([argv[0], argv[1], str(target), *argv[3:]])
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    stages: dict[str, dict[str, float]] = defaultdict(dict)
    stage_cpu: dict[str, dict[str, float]] = defaultdict(dict)
    for (thread, stage), seconds in clock.seconds.items():
        stages[_role(thread)][stage] = 1e3 * seconds / num_frames
        stage_cpu[_role(thread)][stage] = 1e3 * clock.cpu[(thread, stage)] / num_frames
    stages["model"]["other"] = 1e3 * wall / num_frames - sum(stages["model"].values())  # (main thread)
    return {"stages": stages, "stage_cpu": stage_cpu, "wall_ms": 1e3 * wall / num_frames,
            "cpu_ms": 1e3 * cpu / num_frames, "fps": fps, "frames": num_frames,
            "torch_threads": torch_threads()}


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def _role(thread: str) -> str:
    return {"vsr-decode": "decoder", "vsr-encode": "encoder"}.get(thread, "model")


def child_main(argv: list[str]) -> None:
    preset, output, frames, tmp, threads = argv
    if int(threads):
        import torch

        torch.set_num_threads(int(threads))
    print(json.dumps(profile_run(preset, output, int(frames), Path(tmp))))


def run_child(tree: Path | None, preset: str, output: str, frames: int, tmp: Path, threads: int = 0) -> dict:
    from vsr_core.archs import PRESETS

    paths = [str(tree)] if tree else []
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([*paths, str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "VSR_BENCH_PRESET_SPEC": json.dumps([PRESETS[preset].channels, PRESETS[preset].blocks_per_branch])}
    proc = subprocess.run([sys.executable, __file__, "--child", preset, output, str(frames), str(tmp), str(threads)],
                          capture_output=True, text=True, env=env, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"profile child failed: {proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def export_tree(ref: str, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "vsr_core"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive.stdout, check=True)
    return folder


def median_profile(runs: list[dict]) -> dict:
    medians = {}
    for field in ("stages", "stage_cpu"):
        table: dict[str, dict[str, float]] = defaultdict(dict)
        for role in {r for run in runs for r in run[field]}:
            for stage in {s for run in runs for s in run[field].get(role, {})}:
                table[role][stage] = statistics.median(run[field].get(role, {}).get(stage, 0.0) for run in runs)
        medians[field] = table
    return {**medians, **{k: statistics.median(run[k] for run in runs) for k in ("wall_ms", "cpu_ms", "fps")}}


def add_rows(report: Report, label: str, profile: dict, before: dict | None) -> None:
    """A row per stage: ms per frame in the thread(s) that ran it; the note has the serial
    "before" (every stage in one thread)."""
    for stage in ORDER:
        roles = [role for role in ("decoder", "model", "encoder") if stage in profile["stages"].get(role, {})]
        before_ms = None if before is None else before["stages"].get("model", {}).get(stage)
        if not roles and not before_ms:
            continue
        value = sum(profile["stages"][role][stage] for role in roles)
        cpu = sum(profile["stage_cpu"].get(role, {}).get(stage, 0.0) for role in roles)
        note = f"CPU in its thread {cpu:.1f}" + ("" if before_ms is None else f"; before {before_ms:.1f} ms, CPU "
                                                 f"{before['stage_cpu'].get('model', {}).get(stage, 0.0):.1f}")
        report.add(f"{label}: {stage} [{'/'.join(roles) or 'none'}]", value, "ms/frame", note=note)
    note = "" if before is None else f"; before {before['wall_ms']:.1f} ms/frame, CPU {before['cpu_ms']:.0f}"
    report.add(f"{label}: end to end", profile["wall_ms"], "ms/frame", "before" if before else "",
               None if before is None else profile["wall_ms"] / before["wall_ms"],
               note=f"CPU {profile['cpu_ms']:.0f} ms/frame{note}")


def main(argv: list[str] | None = None) -> None:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--child":
        return child_main(sys.argv[2:])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="3 runs of each instead of 1")
    parser.add_argument("--compare-to", metavar="REF", help="also profile git revision REF (the 'before')")
    parser.add_argument("--presets", nargs="+", default=["realtime", "small"])
    parser.add_argument("--outputs", nargs="+", default=list(OUTPUTS), choices=OUTPUTS)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's, one per core); "
                        "1 puts every stage's whole CPU time in the thread that calls it")
    args = parser.parse_args(argv)
    header("profile", args.full)
    report = Report("profile", "full" if args.full else "quick")
    rounds = 3 if args.full else 1
    details: dict = {"size": [HEIGHT, WIDTH], "compare_to": args.compare_to, "rounds": rounds,
                     "torch_threads": args.threads or "default", "cases": {}}
    with tempfile.TemporaryDirectory(prefix="vsr-profile-") as tmp:
        tmp = Path(tmp)
        tree = export_tree(args.compare_to, tmp / "before") if args.compare_to else None
        for preset in args.presets:
            for output in args.outputs:
                frames = FRAMES[preset]
                runs: dict[str, list[dict]] = {"after": [], "before": []}
                for _ in range(rounds):  # the two trees alternate
                    if tree:
                        runs["before"].append(run_child(tree, preset, output, frames, tmp, args.threads))
                    runs["after"].append(run_child(None, preset, output, frames, tmp, args.threads))
                after = median_profile(runs["after"])
                before = median_profile(runs["before"]) if tree else None
                add_rows(report, f"{preset} {output}", after, before)
                details["cases"][f"{preset} {output}"] = {"after": after, "before": before, "runs": runs}
    report.details = details
    print(f"wrote {report.write()}")


if __name__ == "__main__":
    main()
