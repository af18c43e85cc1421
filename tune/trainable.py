"""The Tune trainable: a thin adapter that runs the engine's ``Trainer`` inside a trial.

Each validation becomes one ``tune.report`` carrying the losses, PSNR/SSIM, per-layer
activity, cold-layer count, convergence status and temporal weights, plus a checkpoint
in the engine's format (``vsr_core.engine.reporting``). A restarted trial resumes from
``tune.get_checkpoint()`` (``vsr_core.engine.run_start``).

With ``workers_per_trial`` > 1 the trial is a Ray Train run of that many workers
(``tune/data_parallel.py``) reporting the same metrics and checkpoints; with 1 it is this process.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ray import tune

from vsr_core.config import TrainConfig
from vsr_core.engine.distributed import scaled_lr_exponent
from vsr_core.engine.reporting import Reporter, fit_and_report
from vsr_core.engine.run_start import start_run

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


def train_vsr(tune_config: dict[str, Any]) -> None:
    """Function trainable: ``tune_config`` = {"base_config": {...}, "LR_EXPONENT": x, "WEIGHT_DECAY": y,
    "finetune_from": checkpoint or None, ...}. A retried or restored trial continues where it was."""
    trial_dir = Path(tune.get_context().get_trial_dir())
    config = trial_config(tune_config, trial_dir)
    if tune_config.get("workers_per_trial", 1) > 1:
        from tune.data_parallel import run_data_parallel_trial

        return run_data_parallel_trial(config, tune_config, trial_dir, tune.get_checkpoint())
    trainer = start_run(config, reported=tune.get_checkpoint(), finetune_from=tune_config.get("finetune_from"),
                        log_dir=trial_dir / "tensorboard")
    fit_and_report(trainer, Reporter(tune.report, tune.Checkpoint))
