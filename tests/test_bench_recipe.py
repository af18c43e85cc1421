"""benchmarks/bench_recipe.py, the recipe's gain-against-minutes table, on a tiny run of a few
seconds: a snapshot at each mark with the run's step there, the run stopped after the last mark,
each snapshot scored as the model it is (an independent scoring of the same checkpoint agrees),
the run's own validations read back for the plot."""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))  # the benchmarks import their siblings by name

import bench_recipe  # noqa: E402
import common  # noqa: E402
from conftest import write_clips  # noqa: E402


def test_snapshots_at_each_mark_are_scored_and_plotted(tmp_path, monkeypatch):
    from vsr_core.config import TrainConfig
    from vsr_core.data.validation_set import build_validation_set
    from vsr_core.data.datasets import load_clip
    from vsr_core.evaluate import evaluate_clip
    from vsr_core.inference import Upscaler

    clips = write_clips(tmp_path, num_frames=36, height=36, width=48)
    sets = {"validation": build_validation_set([("val.mp4", load_clip(clips["val"]))], [], 3),
            "carphone": build_validation_set([("train.mp4", load_clip(clips["train"]))], [], 2)}
    monkeypatch.setattr(bench_recipe, "scoring_sets", lambda config: (sets, clips["val"]))
    monkeypatch.setattr(bench_recipe, "RESULTS_DIR", tmp_path / "results")
    monkeypatch.setattr(common, "RESULTS_DIR", tmp_path / "results")
    out = tmp_path / "recipe"
    overrides = {"PRESET": "tiny", "PATCH_SIZE": 8, "BATCH_SIZE": 2, "NUM_PATCHES": 64, "NUM_WORKERS": 0,
                 "VAL_STEP_EVERY": 20, "VAL_MAX_FRAMES": 3, "TRAIN_ON_VAL_DATA": False,
                 "TRAIN_DATA": [str(clips["train"])], "VAL_DATA": [str(clips["val"])]}
    args = ["--minutes", "0.05", "0.15", "--max-steps", "1000000", "--save-every", "5", "--out", str(out),
            "--plot", str(tmp_path / "plot.png"), *sum((["--set", f"{k}={json.dumps(v) if isinstance(v, list) else v}"]
                                                        for k, v in overrides.items()), [])]
    assert bench_recipe.main(args) == 0

    result = json.loads((tmp_path / "results" / "recipe.json").read_text())
    rows = result["rows"]
    assert [r["minutes"] for r in rows] == [0.05, 0.15]
    assert rows[0]["seconds"] >= 3 and rows[1]["seconds"] >= 9
    assert 0 < rows[0]["step"] < rows[1]["step"] < 1_000_000  # the run went on between marks, and was stopped
    assert "done: step 1000000" not in (out / "train.log").read_text()
    # each row is the snapshot's own model: scoring it independently gives the same first-frames gain
    upscaler = Upscaler.from_checkpoint(out / rows[1]["checkpoint"], device="cpu")
    assert upscaler.checkpoint_info["step"] == rows[1]["step"]
    expected = (evaluate_clip(upscaler, clips["val"], 30).y_psnr
                - evaluate_clip(Upscaler.bicubic(device="cpu"), clips["val"], 30).y_psnr)
    assert abs(rows[1]["gain_carphone_first30_db"] - expected) < 1e-9
    assert rows[0]["gain_carphone_first30_db"] != rows[1]["gain_carphone_first30_db"]
    for row in rows:
        assert all(abs(row[k]) < 20 for k in ("gain_validation_db", "gain_carphone_db"))
    # the run's own validations (every 20 steps) make the plot's line
    curve = result["validation_curve"]
    assert curve and all(point["step"] % 20 == 0 for point in curve)
    assert [p["seconds"] for p in curve] == sorted(p["seconds"] for p in curve)
    assert TrainConfig.from_json(out / "run" / "train_config.json").max_steps == 1_000_000
    assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # --score-only scores the same snapshots again, here drawn beside the first result
    assert bench_recipe.main(["--out", str(out), "--score-only", "--name", "again", "--plot", str(tmp_path / "again.png"),
                              "--compare", str(tmp_path / "results" / "recipe.json")]) == 0
    again = json.loads((tmp_path / "results" / "again.json").read_text())["rows"]
    assert result["preset"] == "tiny" and (tmp_path / "again.png").stat().st_size > 0
    assert [r["step"] for r in again] == [r["step"] for r in rows]
    assert abs(again[1]["gain_carphone_first30_db"] - rows[1]["gain_carphone_first30_db"]) < 1e-9
