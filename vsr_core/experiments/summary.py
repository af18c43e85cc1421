"""What the API shows of an experiment and its trials: JSON-able dicts, paths only when asked for."""
from __future__ import annotations

import time
from typing import Any

import pyarrow.fs

from vsr_core.checkpoint import BEST_DIR, BEST_INFO_NAME, BestInfo
from vsr_core.config import PATH_KEYS, TrainConfig
from vsr_core.engine import report_keys as keys
from vsr_core.experiments.folders import (
    HISTORY,
    SCORES,
    QUIET_WHEN_DONE_S,
    STALE_AFTER_S,
    TENSORBOARD_DIR,
    UNFINISHED,
    Experiment,
    Trial,
    finite,
    read_json,
)


def describe_experiment(experiment: Experiment, fs: pyarrow.fs.FileSystem, checkpoint_steps: dict[str, int],
                        expose_paths: bool = False) -> dict[str, Any]:
    """The experiment for the API; ``checkpoint_steps``: per trial folder, the step of the checkpoint a
    promotion would serve (``ExperimentsReader.best_checkpoint``)."""
    trials = sorted(experiment.trials.values(), key=lambda t: t.dirname)
    best = read_json(fs, f"{experiment.folder}/{BEST_DIR}/{BEST_INFO_NAME}")
    quiet = time.time() - experiment.modified
    if any(t.state in UNFINISHED for t in trials):
        state = "interrupted" if quiet > STALE_AFTER_S else "running"
    elif trials and (best or quiet > QUIET_WHEN_DONE_S):  # not between two trials: exported, or long quiet
        state = "finished"
    else:
        state = "starting" if not trials else "running"
    base = next((t.params.get("base_config", {}) for t in trials if t.params), {})
    described = {
        "name": experiment.name,
        "state": state,
        "metric": keys.GAIN,
        "max_steps": base.get("MAX_STEPS"),
        "config_changes": config_changes(base),
        "best_trial": _exported_trial(best),  # the sweep's export, when it has ended
        "trials": [describe_trial(experiment, t, checkpoint_steps.get(t.dirname), expose_paths) for t in trials],
    }
    if expose_paths:
        described["path"] = experiment.folder
    return described


def describe_trial(experiment: Experiment, trial: Trial, checkpoint_step: int | None = None,
                   expose_paths: bool = False) -> dict[str, Any]:
    config = trial.config
    searched = {k: v for k, v in (trial.params or {}).items() if k.isupper()}
    best = trial.best_row() or {}
    steps, max_steps = trial.steps, config.get("MAX_STEPS")
    history = [trial.rows[step] for step in sorted(trial.rows)]
    tensorboard = f"{experiment.name}/{trial.dirname}/{TENSORBOARD_DIR}"
    return {
        "trial_id": trial.trial_id,
        "experiment": experiment.name,
        "state": trial.state,
        "lr": 10 ** config["LR_EXPONENT"] if "LR_EXPONENT" in config else None,
        "wd": config.get("WEIGHT_DECAY"),
        "params": _shown(searched),
        "steps": steps,
        "max_steps": max_steps,
        # ended before MAX_STEPS without an error or a divergence: ASHA stopped it (or the sweep's time budget)
        "stopped_early": trial.state == "terminated" and not trial.diverged and bool(max_steps)
        and steps < max_steps,
        "diverged": trial.diverged,
        "best": {"step": best.get(keys.STEP), **{name: best.get(key) for name, key in SCORES.items()}},
        "checkpoint_step": checkpoint_step,  # what a promotion serves: its best report Tune still keeps
        "convergence": history[-1].get(keys.CONVERGENCE) if history else None,
        "history": {name: [row.get(key) for row in history] for name, key in HISTORY.items()},
        "layers": dict(sorted(trial.layers.items())),
        "tensorboard": f"{experiment.folder}/{trial.dirname}/{TENSORBOARD_DIR}" if expose_paths else tensorboard,
    }


def config_changes(base: dict[str, Any]) -> dict[str, Any]:
    """The base config's keys that differ from ``TrainConfig``'s defaults (paths as file names)."""
    defaults = TrainConfig().to_dict()
    return _shown({k: v for k, v in base.items() if k in defaults and v != defaults[k]})


def _shown(config: dict[str, Any]) -> dict[str, Any]:
    """A config for the API: path keys as file names only."""
    def name(value: Any) -> Any:
        return str(value).rstrip("/").rsplit("/", 1)[-1] if value else value

    return {k: ([name(v) for v in value] if isinstance(value, list) else name(value)) if k in PATH_KEYS
            else finite(value) for k, value in sorted(config.items())}


def _exported_trial(best: dict[str, Any] | None) -> str | None:
    try:
        return BestInfo.from_dict(best).trial_id if best else None
    except ValueError:
        return None
