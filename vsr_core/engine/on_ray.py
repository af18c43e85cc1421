"""One training run across N workers with Ray Train (``TorchTrainer``): data-parallel training.

Each worker runs the engine's ``Trainer`` with a ``DataParallel`` (see ``distributed``): the same
loop as a single process, with DDP, its own share of every micro-batch and rank-0-only writes.
Ray Train starts the workers (one CPU or GPU each, on any nodes), sets up the process group
(gloo on CPU, NCCL on CUDA) and restarts the whole group when a worker dies
(``max_failures``), from the last checkpoint reported to it.

Reports: at each validation every worker calls ``ray.train.report`` with the same metrics (the
validation is rank 0's, shared; losses and layer activity are means over the workers, agreed
in the step's all-reduce); rank 0 adds the checkpoint, the engine's 8-key file ``checkpoint.pth``.
``vsr train --workers N`` and data-parallel Tune trials (``tune/trainable.py``) both launch runs
through ``fit_on_ray_train``. With N = 1 none of this is used.
"""
from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Any, Sequence

import ray
import ray.train
import ray.util
from ray.train.torch import TorchTrainer, get_device

from vsr_core.checkpoint import save_checkpoint
from vsr_core.config import TrainConfig
from vsr_core.engine.console import PlainConsole
from vsr_core.engine.distributed import DataParallel
from vsr_core.engine.health import layer_name
from vsr_core.engine.hooks import StepMetrics, TrainingHooks, ValidationMetrics
from vsr_core.engine.trainer import Trainer, TrainingDiverged

CHECKPOINT_FILE = "checkpoint.pth"  # the engine's checkpoint inside a reported (Train or Tune) checkpoint folder
KEEP_TRAIN_CHECKPOINTS = 3  # > 2: a report's checkpoint outlives its hand-over to Tune (tune/data_parallel.py)


def report_metrics(trainer: Trainer, last_step: StepMetrics | None, validation: ValidationMetrics | None) -> dict:
    """What a run reports at a validation (Tune's result rows): losses, PSNR/SSIM, layer activity, health."""
    health = trainer.health()
    metrics: dict[str, Any] = {
        "step": trainer.step,
        "node_id": ray.get_runtime_context().get_node_id(),
        "lr": trainer.lr,
        "convergence": health["convergence"],
        "cold_layers": health["cold_layers"],
        "skipped_steps": trainer.skipped_steps,
        "workers": trainer.workers,
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


def diverged_metrics(trainer: Trainer, last_step: StepMetrics | None, exc: TrainingDiverged) -> dict:
    """The report of a run that diverged: a result, not an error (a retry would only diverge again)."""
    metrics = report_metrics(trainer, last_step, trainer.last_validation)
    metrics.update(convergence="Diverging ✗", diverged=True, error=str(exc))
    metrics.setdefault("psnr", 0.0)  # worst possible, so searchers and ASHA rank it last
    metrics.setdefault("gain", -100.0)
    return metrics


class TrainReportHooks(TrainingHooks):
    """In every worker: one ``ray.train.report`` per validation (all workers must report alike);
    rank 0 attaches the checkpoint. ``console``: rank 0's log lines (``vsr train --workers``)."""

    def __init__(self, console: TrainingHooks | None = None) -> None:
        self.console = console
        self.last_step: StepMetrics | None = None

    def on_step(self, trainer: Trainer, metrics: StepMetrics) -> None:
        self.last_step = metrics
        if self.console:
            self.console.on_step(trainer, metrics)

    def on_validation(self, trainer: Trainer, validation: ValidationMetrics) -> None:
        if self.console:
            self.console.on_validation(trainer, validation)
        self.report(report_metrics(trainer, self.last_step, validation), trainer)

    def on_checkpoint(self, trainer: Trainer, path: Path) -> None:
        if self.console:
            self.console.on_checkpoint(trainer, path)

    @staticmethod
    def report(metrics: dict, trainer: Trainer | None = None) -> None:
        if trainer is None or not trainer.is_main:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory() as folder:
            save_checkpoint(trainer.checkpoint_dict(), Path(folder) / CHECKPOINT_FILE)  # checks the keys
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))


def train_worker(loop_config: dict[str, Any]) -> None:
    """The function each Ray Train worker runs: the engine's Trainer on this worker's device.
    Resumes from the run's last reported checkpoint after a restart, else from ``resume_checkpoint``
    (a Checkpoint folder holding checkpoint.pth) or ``resume_from`` (a file every node can read);
    a fine-tune (``finetune_from``) starts from its weights only when there is nothing to resume."""
    device = get_device()
    config = TrainConfig.from_dict({**loop_config["config"], "DEVICE": str(device)})
    parallel = DataParallel.from_process_group(device)
    with contextlib.ExitStack() as stack:
        checkpoint = ray.train.get_checkpoint() or loop_config.get("resume_checkpoint")
        resume_from = loop_config.get("resume_from")
        if checkpoint is not None:
            resume_from = Path(stack.enter_context(checkpoint.as_directory())) / CHECKPOINT_FILE
        # a restarted fine-tune continues from its own last checkpoint, not from the weights it started with
        finetune_from = None if resume_from else loop_config.get("finetune_from")
        trainer = Trainer(config, resume_from=resume_from, finetune_from=finetune_from,
                          log_dir=loop_config.get("log_dir"), parallel=parallel)
    announce = loop_config.get("announce_to")  # who must be able to release this group's resources
    if announce is not None and trainer.is_main:
        announce.put(("placement_group", ray.util.get_current_placement_group()))
    # rank 0's log lines reach the driver's terminal (Ray forwards the workers' output)
    hooks = TrainReportHooks(PlainConsole(trainer) if loop_config.get("console") and trainer.is_main else None)
    try:
        trainer.fit(hooks)
    except TrainingDiverged as exc:  # on every worker at the same step (the skips are agreed)
        hooks.report(diverged_metrics(trainer, hooks.last_step, exc))


def fit_on_ray_train(config: TrainConfig, workers: int, *, storage_path: str, name: str,
                     cpus_per_worker: float = 1, gpus_per_worker: float = 0, max_failures: int = 2,
                     resume_from: str | None = None, resume_checkpoint: ray.train.Checkpoint | None = None,
                     finetune_from: str | None = None, log_dir: str | None = None, console: bool = False,
                     callbacks: Sequence[Any] = (), announce_to: Any = None):
    """Train ``config`` on a TorchTrainer of ``workers`` workers; Ray must be running. Ray Train keeps the
    reported checkpoints under ``storage_path/name``; the group is restarted from the last one up to
    ``max_failures`` times. Returns Ray Train's Result.

    ``announce_to``: a ``ray.util.queue.Queue`` that gets ``("placement_group", pg)`` from rank 0 each time a
    worker group starts. The group's placement group outlives a caller that is killed (it belongs to the
    Ray job), so a caller that can be killed at any time, a Tune trial, removes it itself."""
    if not config.num_threads:  # one torch thread per CPU the worker holds
        config = config.replace(num_threads=max(1, int(cpus_per_worker)))
    resources = {"CPU": cpus_per_worker, **({"GPU": gpus_per_worker} if gpus_per_worker else {})}
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={"config": config.to_dict(), "resume_from": resume_from,
                           "resume_checkpoint": resume_checkpoint, "finetune_from": finetune_from,
                           "log_dir": log_dir, "console": console, "announce_to": announce_to},
        scaling_config=ray.train.ScalingConfig(num_workers=workers, use_gpu=gpus_per_worker > 0,
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=name, storage_path=storage_path, callbacks=list(callbacks),
            worker_runtime_env={"env_vars": {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}},  # else each line comes twice
            failure_config=ray.train.FailureConfig(max_failures=max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=KEEP_TRAIN_CHECKPOINTS),
        ),
    )
    return trainer.fit()
