"""One training run across N workers with Ray Train (``TorchTrainer``): data-parallel training.

Each worker runs the engine's ``Trainer`` with a ``DataParallel`` (see ``distributed``): the same
loop as a single process, with DDP, its own share of every micro-batch and rank-0-only writes.
Ray Train starts the workers (one CPU or GPU each, on any nodes), sets up the process group
(gloo on CPU, NCCL on CUDA) and restarts the whole group when a worker dies
(``max_failures``), from the last checkpoint reported to it.

Reports (``engine.reporting``): at each validation every worker calls ``ray.train.report`` with the
same metrics (the validation is rank 0's, shared; losses and layer activity are means over the
workers, agreed in the step's all-reduce); rank 0 adds the checkpoint, the engine's 8-key file
``checkpoint.pth``. Each worker starts with ``run_start.start_run``, as a one-process run does.
``vsr train --workers N`` and data-parallel Tune trials (``tune/trainable.py``) both launch runs
through ``fit_on_ray_train``. With N = 1 none of this is used.
"""
from __future__ import annotations

from typing import Any, Sequence

import ray
import ray.train
import ray.util
from ray.train.torch import TorchTrainer, get_device

from vsr_core.config import TrainConfig
from vsr_core.engine.console import PlainConsole
from vsr_core.engine.distributed import DataParallel
from vsr_core.engine.reporting import Reporter, fit_and_report
from vsr_core.engine.run_start import start_run

KEEP_TRAIN_CHECKPOINTS = 3  # > 2: a report's checkpoint outlives its hand-over to Tune (tune/data_parallel.py)


def train_worker(loop_config: dict[str, Any]) -> None:
    """The function each Ray Train worker runs: the engine's Trainer on this worker's device, started by
    ``start_run`` from the run's last reported checkpoint after a restart, else from ``resume_checkpoint``
    (a Checkpoint folder: a retried Tune trial's), ``resume_from`` (a file every node can read) or
    ``finetune_from``."""
    device = get_device()
    config = TrainConfig.from_dict({**loop_config["config"], "DEVICE": str(device)})
    trainer = start_run(config, reported=ray.train.get_checkpoint() or loop_config.get("resume_checkpoint"),
                        resume_from=loop_config.get("resume_from"), finetune_from=loop_config.get("finetune_from"),
                        log_dir=loop_config.get("log_dir"), parallel=DataParallel.from_process_group(device))
    announce = loop_config.get("announce_to")  # who must be able to release this group's resources
    if announce is not None and trainer.is_main:
        announce.put(("placement_group", ray.util.get_current_placement_group()))
    # rank 0's log lines reach the driver's terminal (Ray forwards the workers' output)
    console = PlainConsole(trainer) if loop_config.get("console") and trainer.is_main else None
    fit_and_report(trainer, Reporter(ray.train.report, ray.train.Checkpoint), console)


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
