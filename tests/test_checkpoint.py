"""The exported-model format (best.json, one owner: BestInfo / write_best / read_best) and the
trainable's checkpoints going through save_checkpoint."""
import json

import pytest

from conftest import tiny_train_config, write_clips
from vsr_core.checkpoint import (
    BEST_INFO_NAME,
    BestInfo,
    CheckpointError,
    load_checkpoint,
    read_best,
    resolve_checkpoint_path,
    write_best,
)

INFO = BestInfo(checkpoint_file="checkpoint.pth", metrics={"psnr": 31.5, "ssim": 0.91, "trial_id": "a1"}, step=120,
                trial_id="a1", trial_path="/x/trial_a1", config={"LR_EXPONENT": -3.2, "base_config": {"PRESET": "tiny"}})


def test_best_info_round_trips_through_its_folder_and_its_checkpoint(tmp_path):
    (tmp_path / "checkpoint.pth").write_bytes(b"")
    path = write_best(tmp_path, INFO)
    assert path == tmp_path / BEST_INFO_NAME and json.loads(path.read_text())["metrics"]["psnr"] == 31.5
    assert read_best(tmp_path) == INFO
    assert read_best(tmp_path / "checkpoint.pth") == INFO
    (tmp_path / "other.pth").write_bytes(b"")
    assert read_best(tmp_path / "other.pth") is None  # best.json describes another file
    assert read_best(tmp_path / "empty") is None and not list(tmp_path.glob(".*.tmp"))


def test_resolve_checkpoint_path_follows_best_json(tmp_path):
    best = tmp_path / "sweep" / "best"
    best.mkdir(parents=True)
    (best / "trial_7.pth").write_bytes(b"")
    write_best(best, BestInfo(checkpoint_file="trial_7.pth", metrics={}))
    assert resolve_checkpoint_path(best) == best / "trial_7.pth"
    assert resolve_checkpoint_path(tmp_path / "sweep") == best / "trial_7.pth"


def test_unknown_keys_are_ignored_and_step_is_optional(tmp_path):
    (tmp_path / BEST_INFO_NAME).write_text(json.dumps({"checkpoint_file": "t.pth", "trial": "trial_7",
                                                       "metrics": {"psnr_y": 31.25}}))
    assert read_best(tmp_path) == BestInfo(checkpoint_file="t.pth", metrics={"psnr_y": 31.25})


@pytest.mark.parametrize("content, problem", [
    ("{not json", "Expecting property name"),
    (json.dumps([1]), "expected a JSON object"),
    (json.dumps({"checkpoint_file": "../../etc/passwd", "metrics": {}}), "file name in the same folder"),
    (json.dumps({"checkpoint_file": "c.pth", "metrics": [31.2]}), "metrics must be an object"),
    (json.dumps({"checkpoint_file": "c.pth", "metrics": {}, "step": "12"}), "step must be an integer"),
])
def test_a_malformed_best_json_is_an_error_naming_the_file(tmp_path, content, problem):
    (tmp_path / BEST_INFO_NAME).write_text(content)
    with pytest.raises(CheckpointError, match=rf"cannot read .*{BEST_INFO_NAME}: .*{problem}"):
        read_best(tmp_path)


def test_the_trainable_saves_checkpoints_with_the_key_check(tmp_path, monkeypatch):
    from ray import tune

    from vsr_core.engine import reporting
    from vsr_core.engine.reporting import Reporter, ReportHooks
    from vsr_core.engine.run_start import CHECKPOINT_FILE
    from vsr_core.engine.trainer import Trainer

    monkeypatch.setenv("VSR_CACHE_DIR", str(tmp_path / "cache"))
    trainer = Trainer(tiny_train_config(write_clips(tmp_path), tmp_path / "run", max_steps=1))
    reported = []

    def report(metrics, checkpoint):
        reported.append(load_checkpoint(f"{checkpoint.path}/{CHECKPOINT_FILE}"))

    monkeypatch.setattr(reporting, "report_metrics", lambda *args: {})
    hooks = ReportHooks(Reporter(report, tune.Checkpoint))  # what the trainable reports through (tune.report)
    hooks.on_validation(trainer, None)
    assert reported[0]["step"] == 0 and reported[0]["config"]["PRESET"] == "tiny"

    broken = trainer.checkpoint_dict()
    broken.pop("scaler_state_dict")
    trainer.checkpoint_dict = lambda: broken
    with pytest.raises(CheckpointError, match="scaler_state_dict"):
        hooks.on_validation(trainer, None)
