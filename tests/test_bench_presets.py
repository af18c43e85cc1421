"""benchmarks/bench_presets.py, the speed/quality table, on a tiny checkpoint and a tiny size: every
figure it promises is there, the quality of a checkpoint is its own (an untrained model is the
bilinear anchor: below bicubic), and the plot is written."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))  # the benchmarks import their siblings by name

import bench_presets  # noqa: E402
import common  # noqa: E402
from conftest import random_model  # noqa: E402
from vsr_core.archs import VSRPPPv2, count_parameters  # noqa: E402


def test_the_table_has_speed_quality_and_a_plot(tmp_path, monkeypatch):
    from bench_pipeline import save_model_checkpoint

    monkeypatch.setattr(common, "RESULTS_DIR", tmp_path)
    every_item = bench_presets.quality_sets  # a few items of each set: the scoring is the same on all
    monkeypatch.setattr(bench_presets, "quality_sets", lambda: {k: v[:3] for k, v in every_item().items()})
    untrained = save_model_checkpoint("tiny", tmp_path / "tiny.pth", VSRPPPv2.from_preset("tiny"))
    args = [str(untrained), "--presets", "tiny", "realtime", "--sizes", "12x16", "24x20", "--plot",
            str(tmp_path / "plot.png")]
    bench_presets.main(args)
    data = json.loads((tmp_path / "presets.json").read_text())
    rows = {row["preset"]: row for row in data["details"]["rows"]}
    assert set(rows) == {"tiny", "realtime"}
    for preset, row in rows.items():
        assert row["parameters"] == count_parameters(VSRPPPv2.from_preset(preset))
        assert set(row["fps"]) == {"12x16", "24x20"}
        for size in row["fps"].values():
            assert set(size) == {"forward", "stream", "vsr upscale"} and min(size.values()) > 0
    # the checkpoint given is scored; the preset without one is speed only
    tiny = rows["tiny"]
    assert tiny["checkpoint"] == str(untrained)
    for key in ("gain_validation_db", "gain_carphone_db"):
        assert -10 < tiny[key] < 0  # an untrained model is the bilinear anchor: worse than bicubic
    assert rows["realtime"].get("gain_carphone_db") is None
    assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_checkpoints_are_matched_to_their_presets(tmp_path):
    from bench_pipeline import save_model_checkpoint

    paths = [save_model_checkpoint(p, tmp_path / f"{p}.pth", random_model(p)) for p in ("tiny", "small")]
    assert bench_presets.checkpoints_by_preset([str(p) for p in paths]) == {"tiny": paths[0], "small": paths[1]}
    with pytest.raises(Exception, match="not found"):
        bench_presets.checkpoints_by_preset([str(tmp_path / "missing.pth")])
