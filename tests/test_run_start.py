"""How every run starts (run_start.start_run) and what it reports (engine.reporting), without Ray: a
reported checkpoint wins over the fine-tune source; a report carries the checkpoint saved to a folder
that is gone afterwards; every reported key is named in report_keys."""
import contextlib
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import ray
import torch

from conftest import tiny_train_config, write_clips
from vsr_core.checkpoint import load_checkpoint
from vsr_core.engine import report_keys as keys
from vsr_core.engine import reporting
from vsr_core.engine.hooks import StepMetrics, TrainingHooks, ValidationMetrics
from vsr_core.engine.reporting import Reporter, ReportHooks, diverged_metrics, report_checkpoint, report_metrics
from vsr_core.engine.run_start import CHECKPOINT_FILE, start_run
from vsr_core.engine.trainer import Trainer, TrainingDiverged


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    return write_clips(tmp_path_factory.mktemp("clips"))


class FolderCheckpoint:
    """What Ray hands back: a folder holding CHECKPOINT_FILE; records whether the folder is still in use."""

    def __init__(self, folder: Path):
        self.folder, self.open = folder, False

    @contextlib.contextmanager
    def as_directory(self):
        self.open = True
        try:
            yield str(self.folder)
        finally:
            self.open = False


def saved_run(config, path: Path, step: int, seed: int) -> dict:
    """A checkpoint at ``step`` whose weights differ from any other seed's."""
    trainer = Trainer(config.replace(seed=seed))
    trainer.step = step
    trainer.save(path)
    return load_checkpoint(path)


def same_weights(model, checkpoint) -> bool:
    return all(torch.equal(v, checkpoint["model_state_dict"][k]) for k, v in model.state_dict().items())


def test_a_reported_checkpoint_wins_over_the_fine_tune_source_and_the_resume_file(clips, tmp_path):
    config = tiny_train_config(clips, tmp_path / "run", max_steps=20)
    source = saved_run(config, tmp_path / "source.pth", 0, seed=1)
    reported = saved_run(config, tmp_path / "reported" / CHECKPOINT_FILE, 6, seed=2)
    folder = FolderCheckpoint(tmp_path / "reported")
    trainer = start_run(config, reported=folder, finetune_from=tmp_path / "source.pth")
    assert trainer.step == 6 and same_weights(trainer.model, reported) and not same_weights(trainer.model, source)
    assert not folder.open  # loaded while the folder was there; a downloaded one is deleted after the load
    older = saved_run(config, tmp_path / "older.pth", 3, seed=3)
    trainer = start_run(config, reported=folder, resume_from=tmp_path / "older.pth")
    assert trainer.step == 6 and not same_weights(trainer.model, older)


def test_without_a_report_the_resume_file_or_else_the_fine_tune_source_or_else_nothing(clips, tmp_path):
    config = tiny_train_config(clips, tmp_path / "run", max_steps=20)
    source = saved_run(config, tmp_path / "source.pth", 9, seed=1)
    resumed = start_run(config, resume_from=tmp_path / "source.pth")
    assert resumed.step == 9 and resumed.training_phase == "pretrain" and same_weights(resumed.model, source)
    finetuned = start_run(config, finetune_from=tmp_path / "source.pth")
    assert finetuned.step == 0 and finetuned.training_phase == "finetune" and same_weights(finetuned.model, source)
    fresh = start_run(config)
    assert fresh.step == 0 and fresh.training_phase == "pretrain" and not same_weights(fresh.model, source)
    with pytest.raises(ValueError, match="not both"):
        start_run(config, resume_from=tmp_path / "source.pth", finetune_from=tmp_path / "source.pth")


class Recorder:
    """A Reporter's report and Checkpoint class: keeps what a report persists (a copy of the folder)."""

    def __init__(self, kept: Path):
        self.kept, self.reports = kept, []

    def report(self, metrics, checkpoint=None):
        copy = None
        if checkpoint is not None:
            copy = self.kept / f"report_{len(self.reports)}"
            shutil.copytree(checkpoint, copy)
        self.reports.append((metrics, copy, checkpoint))

    def from_directory(self, folder):
        return folder

    def reporter(self) -> Reporter:
        return Reporter(self.report, SimpleNamespace(from_directory=self.from_directory))


def test_a_report_carries_the_engine_checkpoint_in_a_folder_that_is_removed_after(clips, tmp_path):
    trainer = Trainer(tiny_train_config(clips, tmp_path / "run"))
    trainer.step = 4
    recorder = Recorder(tmp_path)
    report_checkpoint(recorder.reporter(), {keys.STEP: 4}, trainer)
    (metrics, copy, folder), = recorder.reports
    assert metrics == {keys.STEP: 4} and not Path(folder).exists()
    assert load_checkpoint(copy / CHECKPOINT_FILE)["step"] == 4


def test_report_hooks_attach_the_checkpoint_only_where_checkpoints_are_written(clips, tmp_path, monkeypatch):
    monkeypatch.setattr(reporting, "report_metrics", lambda trainer, step, validation: {keys.STEP: trainer.step})
    trainer = Trainer(tiny_train_config(clips, tmp_path / "run"))
    seen = []

    class Console(TrainingHooks):
        def on_validation(self, trainer, validation):
            seen.append(validation.step)

    recorder = Recorder(tmp_path)
    hooks = ReportHooks(recorder.reporter(), Console())
    validation = ValidationMetrics(step=0, psnr=30.0, ssim=0.9, l1=0.01, bicubic_psnr=29.0)
    hooks.on_validation(trainer, validation)
    monkeypatch.setattr(trainer, "is_main", False)  # another worker of a data-parallel group
    hooks.on_validation(trainer, validation)
    assert [copy is not None for _, copy, _ in recorder.reports] == [True, False] and seen == [0, 0]


def test_every_reported_key_is_named_in_report_keys(clips, tmp_path, monkeypatch):
    monkeypatch.setattr(ray, "get_runtime_context", lambda: SimpleNamespace(get_node_id=lambda: "node-1"))
    trainer = Trainer(tiny_train_config(clips, tmp_path / "run"))
    step = StepMetrics(step=1, epoch=0, loss_l1=0.1, loss_perceptual=0.0, loss_total=0.1, lr=1e-3,
                       samples_per_s=5.0, skipped=False, skipped_steps=0)
    validation = ValidationMetrics(step=1, psnr=30.0, ssim=0.9, l1=0.01, bicubic_psnr=29.5,
                                   per_clip={"val.mp4": {"psnr": 30.0, "ssim": 0.9, "l1": 0.01, "gain": 0.5}},
                                   tof=0.25, flicker=1.5, bicubic_tof=0.5, bicubic_flicker=2.0)
    metrics = report_metrics(trainer, step, validation)
    assert (metrics[keys.TOF], metrics[keys.FLICKER], metrics[keys.BICUBIC_TOF], metrics[keys.BICUBIC_FLICKER]) == (
        0.25, 1.5, 0.5, 2.0)  # reported for the trials table; the sweep still ranks by the gain
    without = report_metrics(trainer, step, ValidationMetrics(step=1, psnr=30.0, ssim=0.9, l1=0.01, bicubic_psnr=29.5))
    assert keys.TOF not in without and keys.FLICKER not in without  # no temporal frames: not reported as null
    named = {v for k, v in vars(keys).items() if k.isupper() and isinstance(v, str) and not k.endswith("_PREFIX")}
    prefixes = (keys.CLIP_GAIN_PREFIX, keys.LAYER_PREFIX, keys.TEMPORAL_WEIGHT_PREFIX)
    assert not [k for k in metrics if k not in named and not k.startswith(prefixes)]
    assert metrics[keys.GAIN] == pytest.approx(0.5) and metrics[keys.clip_gain("val.mp4")] == 0.5
    assert metrics[keys.NODE_ID] == "node-1" and metrics[keys.STEP] == trainer.step
    assert {keys.layer("Block_00"), keys.temporal_weight("center")} <= set(metrics)

    diverged = diverged_metrics(trainer, step, TrainingDiverged("NaN/Inf in 3 consecutive steps"))
    assert diverged[keys.DIVERGED] is True and diverged[keys.GAIN] == reporting.DIVERGED_GAIN  # no validation yet
    assert "NaN/Inf" in diverged[keys.ERROR]
