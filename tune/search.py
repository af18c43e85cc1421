"""Search learning rate and weight decay with Ray Tune (Optuna TPE + ASHA): ``vsr sweep`` or
``python tune/search.py`` (the same flags, defined in ``tune/cli.py``; ``--help`` shows examples).

At the end the best trial's best checkpoint is exported to <storage>/<name>/best/
(checkpoint.pth + best.json), which the Serve app loads.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow.fs
from ray.tune import Callback, Stopper
from ray.tune.result import TRIAL_ID

from tune.cli import build_parser, finish_args
from vsr_core.engine import report_keys as keys

if TYPE_CHECKING:
    from vsr_core.checkpoint import BestInfo

METRIC, MODE = keys.GAIN, "max"  # dB over bicubic on the validation set (vsr_core.metrics.gain_over_bicubic)
# A data-parallel trial only waits on its Ray Train run, whose workers hold the CPUs/GPUs; Tune needs a
# non-empty request, so it asks for a token share of one CPU.
DATA_PARALLEL_TRIAL_CPUS = 0.01


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The flags of ``python tune/search.py`` (= ``vsr sweep``), with their derived defaults."""
    return finish_args(build_parser().parse_args(argv))


def data_parallel_space(args: argparse.Namespace) -> dict[str, Any]:
    """What a trial needs to run as a Ray Train run (nothing when it is one process)."""
    if args.workers_per_trial < 1:
        raise ValueError(f"--workers-per-trial must be >= 1, got {args.workers_per_trial}")
    if args.workers_per_trial == 1:
        return {}
    return {"workers_per_trial": args.workers_per_trial, "cpus_per_worker": args.cpus_per_worker,
            "gpus_per_worker": args.gpus_per_worker, "lr_scaling": args.lr_scaling,
            "train_storage_path": args.storage_path, "train_max_failures": args.max_failures}


def base_config(args: argparse.Namespace) -> dict[str, Any]:
    """The base train config with the flags applied; validated here, on the driver, so a typo or a
    missing data path fails in a second instead of in every trial."""
    from vsr_core.config import TrainConfig
    from vsr_core.configs import config_path
    from vsr_core.data.datasets import expand_sources
    from vsr_core.data.samples import DEFAULT_TRAIN_CLIP, DEFAULT_VAL_CLIP
    from vsr_core.engine.cli import parse_overrides

    values = TrainConfig.from_json(config_path(args.config)).to_dict()
    if args.data:
        values["TRAIN_DATA"] = [str(Path(p).resolve()) for p in args.data]  # trials run in their own folders
    if args.val_data:
        values["VAL_DATA"] = [str(Path(p).resolve()) for p in args.val_data]
    if args.preset:
        values["PRESET"] = args.preset
    if args.max_steps:
        values["MAX_STEPS"] = args.max_steps
    values["SEED"] = args.seed
    if args.finetune_from:
        from tune.finetune import finetune_base

        values, args.finetune_from = finetune_base(values, args.finetune_from)
    config = TrainConfig.from_dict({**values, **parse_overrides(args.set)})
    expand_sources(config.train_data, DEFAULT_TRAIN_CLIP)
    expand_sources(config.val_data, DEFAULT_VAL_CLIP)
    return config.to_dict()


def start_ray(args: argparse.Namespace) -> None:
    """Join ``--address`` or start a local Ray with its dashboard (nothing when this process has Ray: tests,
    a notebook), and say where to watch the sweep."""
    from vsr_core.ray_connect import connect_ray

    context = connect_ray(args.address, dashboard=True, dashboard_port=args.dashboard_port)
    if context is None:
        return
    url = context.dashboard_url
    token = Path.home() / ".ray" / "auth_token"
    print("=" * 78)
    if url:
        print(f"Ray dashboard: http://{url}  (token auth is on: log in with the token in {token})")
    print(f"TensorBoard:   tensorboard --logdir {args.storage_path}/{args.name}")
    print("=" * 78, flush=True)


def trial_dirname(trial) -> str:
    # Short folder names: the default embeds the whole (long) config.
    return f"trial_{trial.trial_id}"


def _last_error_line(trial) -> str:
    """The exception line (``Type: message``) of a trial's latest failure, trial id masked."""
    try:
        lines = [line.strip() for line in Path(trial.error_file).read_text().splitlines() if line.strip()]
        return lines[-1].replace(trial.trial_id, "<trial>")
    except (OSError, TypeError, IndexError):
        return "unknown error (no error file)"


class FailFast(Callback, Stopper):
    """Ends the sweep when ``after`` trial attempts have failed with the same error before any
    trial reported a result: a broken environment or unusable data fails every trial alike,
    and retrying (``--max-failures``) or starting more trials would only repeat it.

    Prints one line per failed attempt instead of Tune's traceback (the traceback is in the
    trial's error file). A sweep in which some trial reports is left to Tune's retries."""

    def __init__(self, after: int = 2):
        self.after = after
        self.failures: list[str] = []  # the error line of each failed attempt
        self.results = 0

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.results += 1

    def on_trial_recover(self, iteration, trials, trial, **info):
        self._failed(trial, "retrying")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._failed(trial, "gave up")

    def _failed(self, trial, outcome: str) -> None:
        line = _last_error_line(trial)
        self.failures.append(line)
        print(f"trial {trial.trial_id} failed ({outcome}): {line}", file=sys.stderr, flush=True)

    @property
    def tripped(self) -> bool:
        return self.results == 0 and len(self.failures) >= self.after and len(set(self.failures)) == 1

    # the Stopper side: Tune asks after every event whether to end the whole experiment
    def __call__(self, trial_id, result) -> bool:
        return False

    def stop_all(self) -> bool:
        return self.tripped


def base_point(base: dict[str, Any], args: argparse.Namespace) -> list[dict[str, float]] | None:
    """The base config's own LR and WD as the first trial (when inside the searched ranges), so a
    sweep never ends worse than the config it started from."""
    lr, wd = 10 ** base["LR_EXPONENT"], base["WEIGHT_DECAY"]
    if args.lr_range[0] <= lr <= args.lr_range[1] and args.wd_range[0] <= wd <= args.wd_range[1]:
        return [{"LR_EXPONENT": base["LR_EXPONENT"], "WEIGHT_DECAY": wd}]
    return None


def build_tuner(args: argparse.Namespace, base: dict[str, Any], experiment_path: str,
                points_to_evaluate: list[dict[str, float]] | None = None):
    """The Tuner for a new experiment, or the restored one when ``experiment_path`` holds one.
    ``points_to_evaluate``: hyperparameters to try first (e.g. a known-good setting)."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    from tune.trainable import train_vsr

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # our CLIReporter table instead of Tune's default output
    os.environ.setdefault("TUNE_PRINT_ALL_TRIAL_ERRORS", "0")  # FailFast prints one line per failure instead
    trainable = tune.with_resources(train_vsr, {"cpu": args.cpus_per_trial, "gpu": args.gpus_per_trial}
                                    if args.workers_per_trial == 1 else {"cpu": DATA_PARALLEL_TRIAL_CPUS})
    if args.resume or tune.Tuner.can_restore(experiment_path):
        print(f"resuming experiment {experiment_path} (finished trials are not re-run)")
        return tune.Tuner.restore(experiment_path, trainable=trainable, resume_unfinished=True, resume_errored=True)

    max_steps = base["MAX_STEPS"]
    val_every = base["VAL_STEP_EVERY"]
    param_space = {
        "base_config": base,
        "cpus_per_trial": args.cpus_per_trial,
        **data_parallel_space(args),
        "finetune_from": getattr(args, "finetune_from", None),
        "LR_EXPONENT": tune.uniform(math.log10(args.lr_range[0]), math.log10(args.lr_range[1])),
        "WEIGHT_DECAY": tune.loguniform(*args.wd_range),
    }
    if points_to_evaluate is None and not args.skip_base_trial:
        points_to_evaluate = base_point(base, args)
    searcher = ConcurrencyLimiter(OptunaSearch(seed=args.seed, points_to_evaluate=points_to_evaluate),
                                  max_concurrent=args.max_concurrent)
    scheduler = ASHAScheduler(time_attr=keys.STEP, max_t=max_steps,
                              grace_period=min(max_steps, args.grace_steps or 2 * val_every),
                              reduction_factor=2)
    fail_fast = FailFast()
    reporter = tune.CLIReporter(
        parameter_columns={"LR_EXPONENT": "lr_exp", "WEIGHT_DECAY": "wd"},
        metric_columns={keys.STEP: "step", keys.LOSS_L1: "L1", keys.LOSS_PERCEPTUAL: "perc",
                        keys.LOSS_TOTAL: "total", keys.GAIN: "gain dB", keys.PSNR: "PSNR", keys.CONVERGENCE: "status",
                        keys.COLD_LAYERS: "cold"},
        max_report_frequency=15,
    )
    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(metric=METRIC, mode=MODE, search_alg=searcher, scheduler=scheduler,
                                    num_samples=args.num_samples, trial_dirname_creator=trial_dirname,
                                    time_budget_s=args.time_budget_min * 60 if args.time_budget_min else None,
                                    trial_name_creator=trial_dirname),
        run_config=tune.RunConfig(
            name=args.name,
            storage_path=args.storage_path,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=args.keep_checkpoints or None,
                                                    checkpoint_score_attribute=METRIC, checkpoint_score_order=MODE),
            failure_config=tune.FailureConfig(max_failures=args.max_failures),
            stop=fail_fast, callbacks=[fail_fast],
            sync_config=tune.SyncConfig(sync_artifacts=True),  # per-trial TensorBoard files reach the storage
            progress_reporter=reporter,
            verbose=1,  # the status table only; per-trial details are in TensorBoard and the dashboard
        ),
    )


def trial_failure(result) -> tuple[str, str] | None:
    """(exception line with the trial folder masked, error file) of the trial's last failure,
    or None if it never failed. Tune keeps ``error.txt`` even when a retry then succeeded."""
    if result.path is None:
        return None
    error_file = f"{result.path.rstrip('/')}/error.txt"
    try:
        with result.filesystem.open_input_stream(error_file) as f:
            lines = [line.strip() for line in f.read().decode("utf-8", errors="replace").splitlines() if line.strip()]
    except OSError:  # no error file: the trial never failed
        return (str(result.error).strip().splitlines()[-1], "") if result.error else None
    line = lines[-1] if lines else "unknown error"
    return line.replace(Path(result.path).name, "<trial>"), error_file


def trial_status(result) -> str:
    metrics = result.metrics or {}
    if result.error:
        return "error"
    if keys.STEP not in metrics:
        return "failed" if trial_failure(result) else "not started"
    if metrics.get(keys.DIVERGED):
        return "diverged"
    if metrics.get(keys.STEP, 0) < metrics.get("config", {}).get("base_config", {}).get("MAX_STEPS", 0):
        return "stopped early"
    return "finished"


def summary_rows(results) -> list[dict[str, Any]]:
    rows = []
    for result in results:
        frame = result.metrics_dataframe
        scored = frame is not None and METRIC in frame and frame[METRIC].notna().any()
        best = frame.loc[frame[METRIC].idxmax()] if scored else {}
        config = result.config or {}
        rows.append({
            "trial": (result.metrics or {}).get(TRIAL_ID, Path(result.path or "?").name[:20]),
            "lr": 10 ** config.get("LR_EXPONENT", float("nan")),
            "wd": config.get("WEIGHT_DECAY", float("nan")),
            "gain": float(best.get(METRIC, float("nan"))),
            "psnr": float(best.get(keys.PSNR, float("nan"))),
            "status": trial_status(result),
            "steps": (result.metrics or {}).get(keys.STEP, 0),
        })
    return rows


def print_summary(rows: list[dict[str, Any]]) -> None:
    print(f"\n{'trial':<22} {'LR':>9} {'WD':>9} {'gain dB':>8} {'PSNR':>7} {'status':<14} {'steps':>6}")
    for r in sorted(rows, key=lambda r: -r["gain"] if r["gain"] == r["gain"] else math.inf):
        print(f"{r['trial']:<22} {r['lr']:>9.2e} {r['wd']:>9.2e} {r['gain']:>+8.2f} {r['psnr']:>7.2f} "
              f"{r['status']:<14} {r['steps']:>6}")


def export_best(results, experiment_path: str) -> tuple[BestInfo, str] | None:
    """Copy the best trial's best checkpoint to <experiment>/best/ with its best.json; (info, folder)."""
    from vsr_core.checkpoint import BEST_DIR, BestInfo, write_best
    from vsr_core.engine.run_start import CHECKPOINT_FILE

    try:
        best = results.get_best_result(metric=METRIC, mode=MODE, scope="all")
    except RuntimeError:
        return None
    checkpoint = best.get_best_checkpoint(metric=METRIC, mode=MODE) if best.best_checkpoints else None
    if checkpoint is None:
        return None
    metrics = next(m for c, m in best.best_checkpoints if c.path == checkpoint.path)
    info = BestInfo(
        checkpoint_file=CHECKPOINT_FILE,
        metrics={k: v for k, v in metrics.items()
                 if isinstance(v, (int, float, str)) and not isinstance(v, bool)
                 and not k.startswith(keys.LAYER_PREFIX)},
        step=metrics.get(keys.STEP),
        trial_id=metrics.get(TRIAL_ID),
        trial_path=best.path,
        config={k: v for k, v in best.config.items() if k != "base_config"} | {"base_config": best.config["base_config"]},
    )
    fs, root = pyarrow.fs.FileSystem.from_uri(experiment_path) if "://" in experiment_path else (
        pyarrow.fs.LocalFileSystem(), experiment_path)
    destination = f"{root.rstrip('/')}/{BEST_DIR}"
    with tempfile.TemporaryDirectory() as staging:
        checkpoint.to_directory(staging)
        write_best(staging, info)
        fs.create_dir(destination, recursive=True)
        pyarrow.fs.copy_files(staging, destination, destination_filesystem=fs)
    return info, destination


def main(argv: list[str] | None = None) -> int:
    """``python tune/search.py``: errors end as ``vsr sweep``'s do (a user error in one line, exit code 2)."""
    from vsr_core.cli_errors import run_reporting_errors

    args = parse_args(argv)
    return run_reporting_errors(lambda: run(args))


def run(args: argparse.Namespace) -> int:
    """The sweep of ``vsr sweep`` / ``python tune/search.py``: check the config, start or join Ray, fit, export.
    The config and the flags are checked before Ray starts: a typo or a missing data path fails in a second."""
    base = base_config(args)
    data_parallel_space(args)  # checks the data-parallel flags
    if "://" not in args.storage_path:
        args.storage_path = str(Path(args.storage_path).resolve())
    experiment_path = f"{args.storage_path.rstrip('/')}/{args.name}"

    import ray

    start_ray(args)
    try:
        return run_sweep(args, base, experiment_path)
    finally:
        ray.shutdown()


def run_sweep(args: argparse.Namespace, base: dict[str, Any], experiment_path: str) -> int:
    """Fit (or resume), print the summary, export the best checkpoint. Ray must be running."""
    results = build_tuner(args, base, experiment_path).fit()
    rows = summary_rows(results)
    print_summary(rows)
    failures = [f for f in map(trial_failure, results) if f]
    if failures and not any(keys.STEP in (r.metrics or {}) for r in results):
        # Every trial failed before its first report (FailFast ended the sweep): one clear summary.
        messages = sorted({line for line, _ in failures})
        print(f"\nerror: every trial failed before reporting a result ({len(rows)} started); the sweep stopped. "
              f"{'Error' if len(messages) == 1 else 'Errors'}:", file=sys.stderr)
        for message in messages:
            print(f"  {message}", file=sys.stderr)
        print(f"full traceback: {failures[0][1] or 'see the Tune output above'}", file=sys.stderr)
        return 1
    errors = [r for r in results if r.error]
    if errors:
        print(f"\n{len(errors)} of {len(rows)} trials failed; first error:\n  "
              f"{str(errors[0].error).strip().splitlines()[-1]}", file=sys.stderr)
    exported = export_best(results, experiment_path)
    if exported is None:
        hint = (f"; the time budget ({args.time_budget_min:g} min) ended before any trial reached its first "
                f"validation at step {base['VAL_STEP_EVERY']}: a busy machine? raise --time-budget-min"
                if args.time_budget_min else "")
        print(f"no trial produced a checkpoint: nothing to export{hint}", file=sys.stderr)
        return 1
    info, destination = exported
    metrics = info.metrics
    print(f"\nbest: trial {info.trial_id} {metrics.get(METRIC, float('nan')):+.2f} dB over bicubic at step {info.step} "
          f"(Y-PSNR {metrics.get(keys.PSNR, float('nan')):.2f} dB, bicubic on the same validation items "
          f"{metrics.get(keys.BICUBIC_PSNR, float('nan')):.2f} dB, phase {metrics.get(keys.TRAINING_PHASE, '?')}) "
          f"-> {destination}")
    return 0 if len(errors) < len(rows) else 1


if __name__ == "__main__":  # `python tune/search.py` or `python -m tune.search`; both import the installed `tune`
    sys.exit(main())
