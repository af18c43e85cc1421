"""Shared helpers of the benchmarks: machine description, timing, results, table.

Every figure is a ratio against a reference measured in the same run (the same
process where possible), so a figure stays meaningful on a machine shared with other
jobs: both sides see the same contention. Timings are medians of repeated runs after
warm-up; references and candidates are measured round-robin (interleaved), not one
after the other, so a burst of load hits both.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vsr_core.cpu import cpu_model

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "benchmarks" / "results"
# The project's packages come from the install (`pip install -e .`); sibling benchmark modules
# (common, bench_inference, ...) from the script's own folder, which Python puts on sys.path.


# --- machine ------------------------------------------------------------------------------
def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def machine_info() -> dict[str, Any]:
    import torch

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {
        "cpu_model": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "cuda": torch.cuda.is_available(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average_at_start": load_average(),
    }


# --- timing -------------------------------------------------------------------------------
@dataclass
class Timing:
    seconds: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def spread(self) -> float:
        """(max - min) / median of the repeats: how noisy the figure is."""
        return (max(self.seconds) - min(self.seconds)) / self.median if self.median else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"median_s": self.median, "runs_s": [round(s, 6) for s in self.seconds], "spread": round(self.spread, 3)}


def time_call(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(candidates: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1) -> dict[str, Timing]:
    """Median-of-``repeats`` wall time of each callable after ``warmup`` calls, measured
    round-robin (a, b, c, a, b, c, ...) so that contention affects every candidate alike."""
    for _ in range(warmup):
        for fn in candidates.values():
            fn()
    runs: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, fn in candidates.items():
            runs[name].append(time_call(fn))
    return {name: Timing(seconds) for name, seconds in runs.items()}


def peak_rss_mb() -> float:
    """This process's peak resident set size (VmHWM) in MiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --- results --------------------------------------------------------------------------------
@dataclass
class Row:
    figure: str
    value: float
    unit: str
    reference: str = ""  # what the ratio is against
    ratio: float | None = None  # value / reference value (or the fraction the figure is about)
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()}


@dataclass
class Report:
    name: str
    mode: str
    rows: list[Row] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    skipped: str | None = None
    started: float = field(default_factory=time.time)
    load_at_start: list[float] | None = field(default_factory=load_average)

    def add(self, figure: str, value: float, unit: str, reference: str = "", ratio: float | None = None,
            note: str = "") -> Row:
        row = Row(figure, value, unit, reference, ratio, note)
        self.rows.append(row)
        print(format_row(row), flush=True)
        return row

    def skip(self, reason: str) -> None:
        self.skipped = reason
        print(f"SKIPPED {self.name}: {reason}", flush=True)

    def write(self) -> Path:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        machine = machine_info()
        machine["load_average_at_start"] = self.load_at_start
        machine["load_average_at_end"] = load_average()
        data = {
            "benchmark": self.name,
            "mode": self.mode,
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "wall_time_s": round(time.time() - self.started, 1),
            "machine": machine,
            "skipped": self.skipped,
            "rows": [r.to_dict() for r in self.rows],
            "details": self.details,
        }
        path = result_path(self.name, self.mode)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(data, indent=2, default=_json_default) + "\n")
        os.replace(tmp, path)
        return path


def result_path(name: str, mode: str) -> Path:
    """results/<name>.json for the quick run, results/<name>.full.json for --full."""
    return RESULTS_DIR / (f"{name}.json" if mode == "quick" else f"{name}.{mode}.json")


def _json_default(value):
    if isinstance(value, Timing):
        return value.to_dict()
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None:
        return ""
    if value != value:  # NaN
        return "nan"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.{digits}g}"


HEADER = f"{'figure':<58} {'value':>10} {'unit':<10} {'ratio':>7}  {'vs':<34}"


def format_row(row: Row) -> str:
    ratio = "" if row.ratio is None else f"{row.ratio:.2f}"
    text = f"{row.figure:<58} {_fmt(row.value):>10} {row.unit:<10} {ratio:>7}  {row.reference:<34}"
    return text + (f" {row.note}" if row.note else "")


def print_table(reports: list[dict[str, Any]]) -> None:
    print(HEADER)
    print("-" * len(HEADER))
    for data in reports:
        print(f"[{data['benchmark']}]  ({data['mode']}, {data.get('wall_time_s', '?')} s, load "
              f"{data['machine'].get('load_average_at_start')} -> {data['machine'].get('load_average_at_end')})")
        if data.get("skipped"):
            print(f"  SKIPPED: {data['skipped']}")
        for r in data["rows"]:
            print(format_row(Row(**r)))


# --- command line -----------------------------------------------------------------------------
def parse_args(description: str, argv: list[str] | None = None, extra: Callable | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--full", action="store_true", help="longer runs, more sizes and repeats")
    if extra:
        extra(parser)
    return parser.parse_args(argv)


def header(name: str, full: bool) -> None:
    info = machine_info()
    print(f"== {name} ({'full' if full else 'quick'}) on {info['cpu_model']}, {info['usable_cpus']} CPUs, "
          f"torch {info['torch_version']} ({info['torch_threads']} threads, {info['cpu_capability']}), "
          f"load {info['load_average_at_start']}", flush=True)
    print(HEADER, flush=True)
