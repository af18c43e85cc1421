"""A data-parallel trial: the trial launches a Ray Train run (``vsr_core.engine.ray_train``) and passes
its reports on to Tune.

The Ray Train workers report to their controller (rank 0's checkpoint persisted under the trial's
storage, in ``ray_train/``); a controller callback hands each report (metrics + checkpoint) to
this trial through a one-slot queue, and the trial calls ``tune.report`` with them, as a
single-process trial would, so Tune's checkpoint management, ASHA, the searcher and the export
of the best checkpoint work unchanged. A lost worker is restarted by Ray Train from its last
checkpoint (``max_failures`` of the sweep); a trial that fails anyway is retried by Tune from the
last checkpoint Tune kept (``tune.get_checkpoint()``, handed to the workers' ``start_run``).

When Tune stops the trial (ASHA, or its last step reached), its actor is ended at once, and the Train
run with it; but the workers' placement group belongs to the whole Ray job and would keep their
CPUs/GPUs until the sweep ends, starving later trials. So rank 0 announces the group's placement
group to the trial, and the trial removes it when Tune stops it.

Why not Ray's own relay, ``ray.tune.integration.ray_train.TuneReportCallback`` (Ray 2.60, a
DeveloperAPI)? It puts each report into the Tune session's inter-actor queue, and the session
reports it with ``report(metrics)``: no checkpoint, only its path as a metric (``checkpoint_path``).
Tune then holds no checkpoint of the trial, so (1) ``CheckpointConfig``'s best-by-gain keeping,
(2) ``Result.best_checkpoints`` / ``get_best_checkpoint``, which the export of ``best/`` reads, and
(3) ``tune.get_checkpoint()`` of a retried or restored trial (``FailureConfig``, ``--resume``) would
all find nothing. (4) It has no hook for the placement group above: the trial's function only
waits in ``TorchTrainer.fit()`` while the session relays, so a trial Tune stops would leave the
group's CPUs/GPUs held. Our callback hands over the checkpoint itself (``tune.Checkpoint`` at the
Train run's persisted path), which ``tune.report`` registers as a one-process trial's.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from ray import tune
from ray.train import UserCallback
from ray.util import remove_placement_group
from ray.util.queue import Empty, Queue

from vsr_core.config import TrainConfig
from vsr_core.engine.ray_train import fit_on_ray_train

POLL_S = 1.0


class HandReportsToTrial(UserCallback):
    """Runs on the Ray Train controller: every report (all workers' metrics agree; rank 0's are taken)
    with its persisted checkpoint goes into the trial's queue. ``put`` waits while the previous
    report is still in the queue, so reports reach Tune in order and none is dropped."""

    def __init__(self, queue: Queue):
        self.queue = queue

    def after_report(self, run_context, metrics: list[dict[str, Any]], checkpoint) -> None:
        self.queue.put(("report", metrics[0], checkpoint))


def run_data_parallel_trial(config: TrainConfig, tune_config: dict[str, Any], trial_dir: Path,
                            checkpoint: tune.Checkpoint | None) -> None:
    """Train ``config`` on ``workers_per_trial`` Ray Train workers; report to Tune as they report."""
    storage = tune_config.get("train_storage_path")  # the sweep's storage (shared or a URI); else the trial folder
    storage = f"{storage.rstrip('/')}/{tune.get_context().get_experiment_name()}/{trial_dir.name}" if storage \
        else str(trial_dir)
    queue: Queue = Queue(maxsize=1, actor_options={"num_cpus": 0})
    outcome: dict[str, BaseException] = {}

    def fit() -> None:
        try:
            fit_on_ray_train(
                config, tune_config["workers_per_trial"], storage_path=storage, name="ray_train",
                cpus_per_worker=tune_config.get("cpus_per_worker", 1),
                gpus_per_worker=tune_config.get("gpus_per_worker", 0),
                max_failures=tune_config.get("train_max_failures", 2), resume_checkpoint=checkpoint,
                finetune_from=tune_config.get("finetune_from"),  # start_run: only when there is nothing to resume
                log_dir=str(trial_dir / "tensorboard"), callbacks=[HandReportsToTrial(queue)], announce_to=queue)
        except BaseException as exc:  # raised in the trial below
            outcome["error"] = exc

    runner = threading.Thread(target=fit, name="ray-train-run", daemon=True)
    runner.start()
    placement_group = None
    while runner.is_alive() or not queue.empty():
        try:
            kind, *item = queue.get(timeout=POLL_S)
        except Empty:
            continue
        if kind == "placement_group":
            placement_group = item[0]
            continue
        metrics, reported = item
        try:
            tune.report(metrics, checkpoint=tune.Checkpoint(reported.path, reported.filesystem) if reported else None)
        except SystemExit:  # Tune stops this trial: release the workers' CPUs/GPUs now
            if placement_group is not None:
                remove_placement_group(placement_group)
            raise
    if "error" in outcome:
        raise outcome["error"]
