"""What a run on Ray reports, and how: one protocol for Tune trials and Ray Train workers.

At each validation a run reports ``report_metrics`` (named in ``report_keys``) and, from the process
that writes checkpoints (the trial's only process; rank 0 of a data-parallel group), its engine
checkpoint: ``report_checkpoint`` saves it as ``CHECKPOINT_FILE`` into a temporary folder, which the
report persists to the run's storage (so the folder is gone right after). A run restarted from such a
report continues from it (``run_start.start_run``). A run that diverges reports ``diverged_metrics``
without a checkpoint: a result, not an error (a retry would only diverge again).

Where the reports go is the caller's: ``Reporter(tune.report, tune.Checkpoint)`` in a Tune trial,
``Reporter(ray.train.report, ray.train.Checkpoint)`` in a Ray Train worker.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import ray

from vsr_core.checkpoint import save_checkpoint
from vsr_core.engine import report_keys as keys
from vsr_core.engine.health import layer_name
from vsr_core.engine.hooks import StepMetrics, TrainingHooks, ValidationMetrics
from vsr_core.engine.run_start import CHECKPOINT_FILE
from vsr_core.engine.trainer import Trainer, TrainingDiverged

DIVERGED_PSNR, DIVERGED_GAIN = 0.0, -100.0  # worse than any real result, so searchers and ASHA rank it last


@dataclass(frozen=True)
class Reporter:
    """Where a run's reports go: ``report(metrics, checkpoint=...)`` and the Checkpoint class it takes."""

    report: Callable[..., None]
    checkpoint_type: Any


def report_metrics(trainer: Trainer, last_step: StepMetrics | None, validation: ValidationMetrics | None) -> dict:
    """What a run reports at a validation (Tune's result rows): losses, PSNR/SSIM, tOF/flicker, layer activity,
    health."""
    health = trainer.health()
    metrics: dict[str, Any] = {
        keys.STEP: trainer.step,
        keys.NODE_ID: ray.get_runtime_context().get_node_id(),
        keys.LR: trainer.lr,
        keys.CONVERGENCE: health["convergence"],
        keys.COLD_LAYERS: health["cold_layers"],
        keys.SKIPPED_STEPS: trainer.skipped_steps,
        keys.WORKERS: trainer.workers,
        keys.TRAINING_PHASE: trainer.training_phase,
    }
    if last_step is not None:
        metrics.update({keys.LOSS_L1: last_step.loss_l1, keys.LOSS_PERCEPTUAL: last_step.loss_perceptual,
                        keys.LOSS_TOTAL: last_step.loss_total, keys.SAMPLES_PER_S: last_step.samples_per_s})
    if validation is not None:
        metrics.update({keys.GAIN: validation.gain, keys.PSNR: validation.psnr, keys.SSIM: validation.ssim,
                        keys.VAL_L1: validation.l1, keys.BICUBIC_PSNR: validation.bicubic_psnr})
        temporal = {keys.TOF: validation.tof, keys.FLICKER: validation.flicker,
                    keys.BICUBIC_TOF: validation.bicubic_tof, keys.BICUBIC_FLICKER: validation.bicubic_flicker}
        metrics.update({key: value for key, value in temporal.items() if value is not None})
        for clip, scores in validation.per_clip.items():
            metrics[keys.clip_gain(clip)] = scores["gain"]
    for name, value in trainer.model.frame_stats.items():
        metrics[keys.temporal_weight(name)] = value
    activity = trainer.activity_history[-1] if trainer.activity_history else trainer.model.layer_activity()
    for i, value in enumerate(activity):
        metrics[keys.layer(layer_name(i))] = value
    return metrics


def diverged_metrics(trainer: Trainer, last_step: StepMetrics | None, exc: TrainingDiverged) -> dict:
    """The report of a run that diverged: its last metrics, marked diverged, ranked last."""
    metrics = report_metrics(trainer, last_step, trainer.last_validation)
    metrics.update({keys.CONVERGENCE: "Diverging ✗", keys.DIVERGED: True, keys.ERROR: str(exc)})
    metrics.setdefault(keys.PSNR, DIVERGED_PSNR)
    metrics.setdefault(keys.GAIN, DIVERGED_GAIN)
    return metrics


def report_checkpoint(reporter: Reporter, metrics: dict, trainer: Trainer) -> None:
    """Report ``metrics`` with the trainer's checkpoint, saved into a temporary folder the report persists."""
    with tempfile.TemporaryDirectory() as folder:
        save_checkpoint(trainer.checkpoint_dict(), Path(folder) / CHECKPOINT_FILE)  # checks the keys
        reporter.report(metrics, checkpoint=reporter.checkpoint_type.from_directory(folder))


class ReportHooks(TrainingHooks):
    """One report per validation, with the checkpoint from the process that writes checkpoints (in a
    data-parallel group every worker must report alike; rank 0 attaches it). ``console``: log lines too."""

    def __init__(self, reporter: Reporter, console: TrainingHooks | None = None) -> None:
        self.reporter = reporter
        self.console = console
        self.last_step: StepMetrics | None = None

    def on_step(self, trainer: Trainer, metrics: StepMetrics) -> None:
        self.last_step = metrics
        if self.console:
            self.console.on_step(trainer, metrics)

    def on_validation(self, trainer: Trainer, validation: ValidationMetrics) -> None:
        if self.console:
            self.console.on_validation(trainer, validation)
        metrics = report_metrics(trainer, self.last_step, validation)
        if trainer.is_main:
            report_checkpoint(self.reporter, metrics, trainer)
        else:
            self.reporter.report(metrics)

    def on_checkpoint(self, trainer: Trainer, path: Path) -> None:
        if self.console:
            self.console.on_checkpoint(trainer, path)


def fit_and_report(trainer: Trainer, reporter: Reporter, console: TrainingHooks | None = None) -> None:
    """``trainer.fit`` with a report at each validation; a divergence is reported, not raised (in a
    data-parallel group it happens on every worker at the same step: the skipped steps are agreed)."""
    hooks = ReportHooks(reporter, console)
    try:
        trainer.fit(hooks)
    except TrainingDiverged as exc:
        reporter.report(diverged_metrics(trainer, hooks.last_step, exc))
