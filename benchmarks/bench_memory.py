"""8. The memory budget: peak RSS of one window (full preset, random weights) upscaled under a
budget, each run in a fresh process, against the budget and against the same window without a
budget (the reference, same run). Also the time it costs: budgeted / unbudgeted seconds.

Quick: a 640x360 LR window (a 1.9 Mpixel output). --full: also 1280x720, the Serve default
``max_pixels_per_frame``, under two budgets (the unbudgeted reference needs ~6 GB there).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

from common import ROOT, Report, header, parse_args

MiB = 2**20

# One window in a fresh process: plan, seconds, peak RSS (VmHWM: the whole process).
CHILD = """
import json, sys, time
import torch
from vsr_core.archs import VSRPPPv2
from vsr_core.inference import Upscaler
from common import peak_rss_mb
height, width, budget = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
torch.manual_seed(0)
model = VSRPPPv2.from_preset("full")
torch.nn.init.normal_(model.upsample[0].weight, std=0.05)
upscaler = Upscaler(model, device="cpu", memory_budget=None if budget == "none" else int(budget))
plan = upscaler.memory.plan(1, height, width) if upscaler.memory else None
windows = torch.rand(1, 5, 3, height, width, generator=torch.Generator().manual_seed(0))
baseline = peak_rss_mb()
start = time.perf_counter()
upscaler.upscale_windows(windows)
seconds = time.perf_counter() - start
print(json.dumps({"peak_mb": peak_rss_mb(), "baseline_mb": baseline, "seconds": seconds,
                  "tile": f"{plan.tile_width}x{plan.tile_height}" if plan and plan.tiled else "none", "threads": torch.get_num_threads()}))
"""


def run_one(height: int, width: int, budget_mb: int | None) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "benchmarks")])}
    budget = "none" if budget_mb is None else str(budget_mb * MiB)
    done = subprocess.run([sys.executable, "-c", CHILD, str(height), str(width), budget], capture_output=True,
                          text=True, env=env, cwd=ROOT, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    args = parse_args(__doc__, argv)
    report = Report("memory", "full" if args.full else "quick")
    header("memory", args.full)
    cases = [(360, 640, [1536])]
    if args.full:
        cases.append((720, 1280, [2048, 4096]))
    details = []
    for height, width, budgets in cases:
        # the reference and the budgeted runs back to back, each in a fresh process
        runs = {"none": run_one(height, width, None)}
        for budget in budgets:
            runs[budget] = run_one(height, width, budget)
        reference = runs["none"]
        report.add(f"full {width}x{height} no budget: peak RSS", reference["peak_mb"], "MiB",
                   note=f"baseline {reference['baseline_mb']:.0f} MiB, {reference['seconds']:.1f} s")
        for budget in budgets:
            run = runs[budget]
            report.add(f"full {width}x{height} budget {budget} MiB: peak RSS", run["peak_mb"], "MiB",
                       "the budget", run["peak_mb"] / budget, note=f"tile {run['tile']}")
            report.add(f"full {width}x{height} budget {budget} MiB: peak RSS", run["peak_mb"], "MiB",
                       "no budget", run["peak_mb"] / reference["peak_mb"])
            report.add(f"full {width}x{height} budget {budget} MiB: time", run["seconds"], "s",
                       "no budget", run["seconds"] / reference["seconds"])
        details.append({"height": height, "width": width, "runs": {str(k): v for k, v in runs.items()}})
    report.details = {"cases": details}
    print(f"wrote {report.write()}")


if __name__ == "__main__":
    main()
