"""What `make demo` prints at its end: `vsr evaluate --json` gains and serve/demo.py's summary."""
import json

import pytest

from conftest import random_model, tiny_train_config, write_clips
from serve.demo import gain_summary
from vsr_core.checkpoint import BestInfo, write_best
from vsr_core.cli import main
from vsr_core.engine.trainer import Trainer


@pytest.fixture(autouse=True)
def frame_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VSR_CACHE_DIR", str(tmp_path / "cache"))


def test_evaluate_json_gain_and_the_demo_summary(tmp_path, capsys):
    clips = write_clips(tmp_path)
    trainer = Trainer(tiny_train_config(clips, tmp_path / "run"))
    trainer.model.load_state_dict(random_model("tiny", seed=2).state_dict())
    best = tmp_path / "best"
    best.mkdir()
    trainer.save(best / "checkpoint.pth")
    write_best(best, BestInfo(checkpoint_file="checkpoint.pth", step=7,
                              metrics={"gain": 0.42, "psnr": 30.0, "gain/val.mp4": 0.42}))

    out = tmp_path / "evaluate.json"
    assert main(["evaluate", "--checkpoint", str(best), str(clips["val"]), str(clips["train"]), "--max-frames", "4",
                 "--device", "cpu", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    scored = json.loads(out.read_text())
    rows = {(r["clip"], r["method"]): r for r in scored["rows"]}
    for clip in ("val.mp4", "train.mp4"):
        expected = rows[(clip, "model")]["y_psnr"] - rows[(clip, "bicubic")]["y_psnr"]
        assert scored["gain_y_psnr"][clip] == pytest.approx(expected)
        assert f"{expected:+.2f} dB" in printed
        for method in ("model", "bicubic"):  # temporal consistency of the same 4 frames (values: test_temporal_metrics)
            row = rows[(clip, method)]
            assert row["tof"] > 0 and row["flicker"] > 0
            assert f"{row['tof']:.3f} {row['flicker']:>7.2f}" in printed

    lines = gain_summary(str(best), str(out))
    assert lines[0].startswith("  validation frames (the sweep's metric): +0.42 dB") and "step 7" in lines[0]
    (val_line,) = [line for line in lines if line.startswith("  val.mp4 (first 4 frames, whole): ")]
    model_tof, bicubic_tof = rows[("val.mp4", "model")]["tof"], rows[("val.mp4", "bicubic")]["tof"]
    assert f"{scored['gain_y_psnr']['val.mp4']:+.2f} dB, tOF {model_tof:.3f} (bicubic {bicubic_tof:.3f}" in val_line
    assert gain_summary(str(best / "checkpoint.pth"), None) == []  # a bare .pth has no best.json to report


def test_the_demo_ends_with_the_pages_address(tmp_path):
    from serve.demo import experiments_of, page_lines

    sweep = tmp_path / "tune" / "demo"
    (sweep / "best").mkdir(parents=True)
    assert experiments_of(str(sweep / "best")) is None  # no trial folders: not a sweep
    (sweep / "trial_0001").mkdir()
    assert experiments_of(str(sweep / "best")) == str(sweep.resolve())
    assert experiments_of(str(sweep / "best" / "checkpoint.pth")) is None
    text = page_lines("http://127.0.0.1:8123", tmp_path, [str(sweep)], stays=True)
    assert text.splitlines()[-1] == "the web page: http://127.0.0.1:8123/"
    assert "Experiments" in text and "Ctrl-C" in text
    assert "Experiments" not in page_lines("http://127.0.0.1:8123", tmp_path, [], stays=False)
