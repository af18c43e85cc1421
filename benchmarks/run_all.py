"""Run every benchmark (each in its own process), then print one table.

    python benchmarks/run_all.py            # quick (a few minutes on 2 cores)
    python benchmarks/run_all.py --full     # longer runs, more sizes and repeats
    python benchmarks/run_all.py --only inference pipeline

Each benchmark writes benchmarks/results/<name>.json (<name>.full.json with --full):
figures, timings, the machine's description and its load average.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

from common import ROOT, machine_info, print_table, result_path  # noqa: E402 (this folder is on sys.path)

BENCHMARKS = ("peak", "inference", "backends", "pipeline", "profile", "presets", "training", "ddp", "serve",
              "live_page", "stream_gil", "video", "encoders", "memory", "tune")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="longer runs, more sizes and repeats")
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, help="run only these")
    args = parser.parse_args(argv)
    names = args.only or BENCHMARKS
    info = machine_info()
    print(f"machine: {info['cpu_model']}, {info['usable_cpus']} usable CPUs, torch {info['torch_version']} "
          f"({info['torch_threads']} threads, {info['cpu_capability']}), load {info['load_average_at_start']}",
          flush=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    failed, start = [], time.perf_counter()
    for name in names:
        print(f"\n--- {name} ---", flush=True)
        began = time.perf_counter()
        code = subprocess.call([sys.executable, str(HERE / f"bench_{name}.py")] + (["--full"] if args.full else []),
                               env=env, cwd=ROOT)
        print(f"--- {name}: {time.perf_counter() - began:.0f} s{'' if code == 0 else f', FAILED (exit {code})'}",
              flush=True)
        if code != 0:
            failed.append(name)
    mode = "full" if args.full else "quick"
    reports = []
    for name in names:
        path = result_path(name, mode)
        if path.exists() and name not in failed:
            reports.append(json.loads(path.read_text()))
    print(f"\n=== all benchmarks ({mode}): {time.perf_counter() - start:.0f} s ===")
    print_table(reports)
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
