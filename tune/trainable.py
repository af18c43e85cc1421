"""The Tune trainable: a thin adapter that runs the engine's ``Trainer`` inside a trial.

Each validation becomes one ``tune.report`` carrying the losses, PSNR/SSIM, per-layer
activity, cold-layer count, convergence status and temporal weights, plus a checkpoint
in the engine's format. A restarted trial resumes from ``tune.get_checkpoint()``.

With ``workers_per_trial`` > 1 the trial is a Ray Train run of that many workers
(``tune/data_parallel.py``) reporting the same metrics and checkpoints; with 1 it is this process.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from ray import tune

from vsr_core.checkpoint import save_checkpoint
from vsr_core.config import TrainConfig
from vsr_core.engine.distributed import scaled_lr_exponent
from vsr_core.engine.on_ray import CHECKPOINT_FILE, diverged_metrics, report_metrics
from vsr_core.engine.trainer import StepMetrics, Trainer, TrainingDiverged, TrainingHooks, ValidationMetrics

SEARCHED_KEYS = ("LR_EXPONENT", "WEIGHT_DECAY")


def trial_config(tune_config: dict[str, Any], trial_dir: Path) -> TrainConfig:
    """The base train config + the sampled hyperparameters, writing into the trial folder."""
    values = {**tune_config["base_config"], **{k: tune_config[k] for k in SEARCHED_KEYS if k in tune_config}}
    values["OUTPUT_DIR"] = str(trial_dir / "run")
    workers = tune_config.get("workers_per_trial", 1)
    values["NUM_THREADS"] = max(1, int(tune_config.get("cpus_per_worker" if workers > 1 else "cpus_per_trial", 1)))
    values["LR_EXPONENT"] = scaled_lr_exponent(values["LR_EXPONENT"], workers, tune_config.get("lr_scaling", "none"))
    # Tune keeps the checkpoints (reported at each validation); latest.pth only at the end.
    values["SAVE_STEP_EVERY"] = values.get("MAX_STEPS", TrainConfig.max_steps)
    values["MILESTONE_EVERY"] = 0
    return TrainConfig.from_dict(values)


class TuneReportHooks(TrainingHooks):
    def __init__(self) -> None:
        self.last_step: StepMetrics | None = None

    def on_step(self, trainer: Trainer, metrics: StepMetrics) -> None:
        self.last_step = metrics

    def on_validation(self, trainer: Trainer, validation: ValidationMetrics) -> None:
        with tempfile.TemporaryDirectory() as folder:
            save_checkpoint(trainer.checkpoint_dict(), Path(folder) / CHECKPOINT_FILE)  # checks the keys
            tune.report(report_metrics(trainer, self.last_step, validation),
                        checkpoint=tune.Checkpoint.from_directory(folder))


def train_vsr(tune_config: dict[str, Any]) -> None:
    """Function trainable: ``tune_config`` = {"base_config": {...}, "LR_EXPONENT": x, "WEIGHT_DECAY": y,
    "finetune_from": checkpoint or None, ...}."""
    trial_dir = Path(tune.get_context().get_trial_dir())
    config = trial_config(tune_config, trial_dir)
    resume_from = None
    checkpoint = tune.get_checkpoint()
    if tune_config.get("workers_per_trial", 1) > 1:
        from tune.data_parallel import run_data_parallel_trial

        return run_data_parallel_trial(config, tune_config, trial_dir, checkpoint)
    if checkpoint is not None:  # a retried or restored trial continues where it was
        local = trial_dir / "resume"
        checkpoint.to_directory(str(local))
        resume_from = local / CHECKPOINT_FILE
    finetune_from = None if resume_from else tune_config.get("finetune_from")  # a retry resumes its own run
    trainer = Trainer(config, resume_from=resume_from, finetune_from=finetune_from, log_dir=trial_dir / "tensorboard")
    hooks = TuneReportHooks()
    try:
        trainer.fit(hooks)
    except TrainingDiverged as exc:
        tune.report(diverged_metrics(trainer, hooks.last_step, exc))
