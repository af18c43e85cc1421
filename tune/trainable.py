"""The Tune trainable: a thin adapter that runs the engine's ``Trainer`` inside a trial.

Each validation becomes one ``tune.report`` carrying the losses, PSNR/SSIM, per-layer
activity, cold-layer count, convergence status and temporal weights, plus a checkpoint
in the engine's format. A restarted trial resumes from ``tune.get_checkpoint()``.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import ray
from ray import tune

from vsr_core.checkpoint import save_checkpoint
from vsr_core.config import TrainConfig
from vsr_core.engine.health import layer_name
from vsr_core.engine.trainer import StepMetrics, Trainer, TrainingDiverged, TrainingHooks, ValidationMetrics

CHECKPOINT_FILE = "checkpoint.pth"
SEARCHED_KEYS = ("LR_EXPONENT", "WEIGHT_DECAY")


def trial_config(tune_config: dict[str, Any], trial_dir: Path) -> TrainConfig:
    """The base train config + the sampled hyperparameters, writing into the trial folder."""
    values = {**tune_config["base_config"], **{k: tune_config[k] for k in SEARCHED_KEYS if k in tune_config}}
    values["OUTPUT_DIR"] = str(trial_dir / "run")
    values["NUM_THREADS"] = max(1, int(tune_config.get("cpus_per_trial", 1)))
    # Tune keeps the checkpoints (reported at each validation); latest.pth only at the end.
    values["SAVE_STEP_EVERY"] = values.get("MAX_STEPS", TrainConfig.max_steps)
    values["MILESTONE_EVERY"] = 0
    return TrainConfig.from_dict(values)


def report_metrics(trainer: Trainer, last_step: StepMetrics | None, validation: ValidationMetrics | None) -> dict:
    health = trainer.health()
    metrics: dict[str, Any] = {
        "step": trainer.step,
        "node_id": ray.get_runtime_context().get_node_id(),
        "lr": trainer.lr,
        "convergence": health["convergence"],
        "cold_layers": health["cold_layers"],
        "skipped_steps": trainer.skipped_steps,
        "training_phase": trainer.training_phase,
    }
    if last_step is not None:
        metrics.update(loss_l1=last_step.loss_l1, loss_perceptual=last_step.loss_perceptual,
                       loss_total=last_step.loss_total, samples_per_s=last_step.samples_per_s)
    if validation is not None:
        metrics.update(gain=validation.gain, psnr=validation.psnr, ssim=validation.ssim, val_l1=validation.l1,
                       bicubic_psnr=validation.bicubic_psnr)
        for clip, scores in validation.per_clip.items():
            metrics[f"gain/{clip}"] = scores["gain"]
    for name, value in trainer.model.frame_stats.items():
        metrics[f"temporal_weight/{name}"] = value
    activity = trainer.activity_history[-1] if trainer.activity_history else trainer.model.layer_activity()
    for i, value in enumerate(activity):
        metrics[f"layer/{layer_name(i)}"] = value
    return metrics


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
        # Report the divergence as a result (not an error): retrying would only diverge again.
        metrics = report_metrics(trainer, hooks.last_step, trainer.last_validation)
        metrics.update(convergence="Diverging ✗", diverged=True, error=str(exc))
        metrics.setdefault("psnr", 0.0)  # worst possible, so searchers and ASHA rank it last
        metrics.setdefault("gain", -100.0)
        tune.report(metrics)
