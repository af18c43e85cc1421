"""The memory budget: Upscaler splits batches and tiles frames so that the process's peak
memory stays within it (measured as peak RSS in a fresh process), and the tiled output equals
the untiled one within the blend tolerance of tests/test_inference.py."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import make_clip, random_model
from serve.settings import ServeSettings
from vsr_core.archs import VSRPPPv2
from vsr_core.cli import _upscaler_from_args, build_parser, main
from vsr_core.data.video_io import FrameWriter
from vsr_core.inference import Upscaler, upscale_grouped
from vsr_core.memory import FRAME_BYTES_PER_PIXEL, MemoryBudgetError, MemoryPlanner, activation_bytes_per_pixel

ROOT = Path(__file__).resolve().parent.parent
MiB = 2**20
BLEND_MEAN_TOLERANCE = 0.01  # tests/test_inference.py: tiles blended without seams

# A fresh process: the full preset (random weights) on one window, under a budget; prints its
# plan and peak RSS and saves the output. Peak RSS (VmHWM) covers the whole process: the
# interpreter, torch, the weights and every activation.
CHILD = """
import json, sys
import numpy as np, torch
torch.set_num_threads(2)
from conftest import random_model
from vsr_core.inference import Upscaler
from vsr_core.memory import current_bytes
height, width, headroom, out_path = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
model = random_model("full", seed=0)
# The budget is this process's own size (it varies with the install: 600-700 MiB) plus a headroom
# too small for the untiled window, so the planner must tile.
budget = current_bytes(torch.device("cpu")) + headroom
upscaler = Upscaler(model, device="cpu", memory_budget=budget)
windows = torch.rand(1, 5, 3, height, width, generator=torch.Generator().manual_seed(0))
plan = upscaler.memory.plan(1, height, width)
np.save(out_path, upscaler.upscale_windows(windows).numpy())
# VmHWM, not ru_maxrss: ru_maxrss survives exec, so it would count the forked test process
peak = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"peak": peak, "budget": budget, "tile": [plan.tile_height, plan.tile_width],
                  "baseline": upscaler.memory.baseline_bytes}))
"""


def run_child(height: int, width: int, headroom: int, out_path: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    done = subprocess.run([sys.executable, "-c", CHILD, str(height), str(width), str(headroom), str(out_path)],
                          capture_output=True, text=True, env=env, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_full_preset_stays_under_its_budget_by_measured_peak_rss(tmp_path):
    """A 320x120 window of the full preset needs ~200 MB of activations and buffers untiled,
    more than the budget leaves after the process's own 600-700 MB and the reserves; so it runs
    in tiles, the whole process peaks below the budget, and the tiles blend into the untiled result."""
    height, width = 120, 320
    result = run_child(height, width, 420 * MiB, tmp_path / "tiled.npy")
    budget = result["budget"]
    assert result["tile"][0] > 0 and result["tile"][1] < width, result  # the budget made it tile
    assert result["peak"] <= budget, f"peak RSS {result['peak'] / MiB:.0f} MiB > budget {budget / MiB:.0f} MiB: {result}"

    windows = torch.rand(1, 5, 3, height, width, generator=torch.Generator().manual_seed(0))
    whole = Upscaler(random_model("full", seed=0), device="cpu").upscale_windows(windows).numpy()
    tiled = np.load(tmp_path / "tiled.npy")
    assert tiled.shape == whole.shape
    assert np.abs(tiled - whole).mean() < BLEND_MEAN_TOLERANCE
    print(f"full preset {width}x{height}: tile {result['tile']}, peak RSS {result['peak'] / MiB:.0f} MiB "
          f"(budget {budget / MiB:.0f} MiB, baseline {result['baseline'] / MiB:.0f} MiB)")


def test_the_largest_allowed_frame_fits_the_default_replica_budget_in_tiles():
    """The Serve limit (max_pixels_per_frame, 1280x720) on the full preset: untiled it needs
    several GB; the plan for a replica's budget runs it in tiles that fit."""
    settings = ServeSettings()
    height, width = 720, settings.max_pixels_per_frame // 720
    assert height * width == settings.max_pixels_per_frame
    model = VSRPPPv2.from_preset("full")
    assert height * width * activation_bytes_per_pixel(model) > 3 * 1024**3  # why the budget matters
    planner = MemoryPlanner(model, 2 * 1024**3, baseline_bytes=600 * MiB, tile_overlap=32,
                            reserve_bytes=256 * MiB)
    plan = planner.plan(1, height, width)
    assert plan.tiled and plan.windows == 1 and 32 < plan.tile_height <= height and 32 < plan.tile_width <= width
    tile_pass = plan.tile_height * plan.tile_width * planner.per_pixel
    frames = height * width * FRAME_BYTES_PER_PIXEL
    assert planner.baseline_bytes + planner.reserve_bytes + frames + tile_pass <= planner.budget_bytes
    # two windows of this size: only one gathered per call (each one tiled)
    assert planner.windows_that_fit(height, width, 8) == 1


def test_batches_split_before_they_tile_and_a_too_small_budget_names_itself():
    model = VSRPPPv2.from_preset("small")
    planner = MemoryPlanner(model, 1024 * MiB, baseline_bytes=500 * MiB, tile_overlap=32)
    per_window = 64 * 64 * (planner.per_pixel + FRAME_BYTES_PER_PIXEL)
    most = planner.available_bytes // per_window
    plan = planner.plan(int(most) + 5, 64, 64)
    assert not plan.tiled and 1 <= plan.windows <= most  # split into passes, whole frames
    assert planner.windows_that_fit(64, 64, 10**6) == most  # gathered: all in one pass
    explicit = MemoryPlanner(model, 1024 * MiB, 500 * MiB, tile_overlap=8, max_tile=40)
    plan = explicit.plan(1, 64, 64)
    assert plan.tiled and max(plan.tile_height, plan.tile_width) <= 40  # an explicit tile is an upper bound
    tight = MemoryPlanner(model, 600 * MiB, baseline_bytes=500 * MiB, tile_overlap=32)
    with pytest.raises(MemoryBudgetError, match=r"memory budget 600 MiB is too small .* 1280x720"):
        tight.plan(1, 720, 1280)
    assert issubclass(MemoryBudgetError, MemoryError)  # Serve answers it with 503 out_of_memory


def test_budgeted_windows_stream_and_batches_match_unbudgeted():
    """A budget that forces batch splits and tiles (tiny preset, receptive field inside the
    overlap, so tiles are exact to float rounding): windows, streams and Serve's grouped
    batches give the unbudgeted results."""
    model = random_model("tiny", seed=4)
    free = Upscaler(model, device="cpu", batch_size=4)
    budgeted = Upscaler(model, device="cpu", batch_size=4, tile_overlap=20, memory_budget=2**40)
    h, w = 60, 80
    # a planner with a known baseline, so that the plan does not depend on this process's RSS
    budget = h * w * FRAME_BYTES_PER_PIXEL + 44 * 44 * activation_bytes_per_pixel(model) + 64 * MiB
    budgeted.memory = MemoryPlanner(model, budget, baseline_bytes=0, tile_overlap=20)
    plan = budgeted.memory.plan(1, h, w)
    assert plan.tiled and plan.tile_height * plan.tile_width <= 44 * 44 and not budgeted.reuses_features(h, w)
    windows = torch.rand(3, 5, 3, h, w, generator=torch.Generator().manual_seed(1))
    with pytest.raises(MemoryBudgetError):
        budgeted.upscale_windows(windows)  # three frames' buffers do not fit: the caller must split
    single = torch.cat([budgeted.upscale_windows(windows[i : i + 1]) for i in range(3)])
    assert (single - free.upscale_windows(windows)).abs().max() < 1e-4

    clip = make_clip(7, h, w, seed=2)
    streamed = np.stack(list(budgeted.stream(iter(clip))))
    reference = np.stack(list(free.stream(iter(clip))))
    assert np.abs(streamed.astype(int) - reference.astype(int)).max() <= 1

    window_list = [make_clip(5, h, w, seed=s) for s in range(3)]
    grouped = upscale_grouped(budgeted, window_list)
    assert [batch for _, batch in grouped] == [1, 1, 1]  # one window per pass under this budget
    for (out, _), window in zip(grouped, window_list):
        assert np.abs(out.astype(int) - free.upscale_window_uint8(window).astype(int)).max() <= 1


def test_vsr_upscale_over_its_budget_fails_with_one_clear_line(tmp_path, capsys):
    clip = tmp_path / "clip.mp4"
    with FrameWriter(clip, fps=25) as writer:
        for frame in make_clip(3, 30, 40):
            writer.write(frame)
    code = main(["upscale", str(clip), str(tmp_path / "out.mp4"), "--bicubic", "--memory-budget", "10"])
    err = capsys.readouterr().err
    assert code == 2 and "\nerror: memory budget 10 MiB is too small" in err and "Traceback" not in err


def test_cli_and_serve_settings_take_a_budget():
    parse = build_parser().parse_args
    assert parse(["upscale", "a.mp4", "b.mp4", "--bicubic"]).memory_budget == "auto"
    assert parse(["upscale", "a.mp4", "b.mp4", "--memory-budget", "1536"]).memory_budget == 1536 * MiB
    assert parse(["upscale", "a.mp4", "b.mp4", "--memory-budget", "off"]).memory_budget is None
    with pytest.raises(SystemExit):
        parse(["upscale", "a.mp4", "b.mp4", "--memory-budget", "-3"])
    upscaler = _upscaler_from_args(parse(["upscale", "a.mp4", "b.mp4", "--bicubic", "--memory-budget", "1536"]))
    assert upscaler.memory.budget_bytes == 1536 * MiB
    assert ServeSettings().memory_budget == "auto"
    assert ServeSettings(memory_budget_mb=4096).memory_budget == 4096 * MiB
    auto = Upscaler(random_model("tiny"), device="cpu", memory_budget="auto").memory.budget_bytes
    assert 0 < auto < os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
