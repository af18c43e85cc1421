"""The sweep's command line: one definition of its flags for ``vsr sweep`` and ``python tune/search.py``.

``add_sweep_command`` is the ``vsr sweep`` subcommand (registered through the ``vsr.commands`` entry
point in pyproject.toml); importing this module starts nothing and does not import Ray Tune.
"""
from __future__ import annotations

import argparse

from vsr_core.configs import SWEEP_BASE, shipped_names

DESCRIPTION = "Search learning rate and weight decay with Ray Tune (Optuna TPE + ASHA)."
USAGE = """\
    vsr sweep                                  # default sweep on the sample clips (~10 min on 2 CPU cores)
    vsr sweep --address auto                   # on a running cluster (ray start --head)
    vsr sweep --name my_sweep --resume
    vsr sweep --address auto --workers-per-trial 4 --gpus-per-worker 1   # each trial on 4 GPUs (Ray Train)
    vsr sweep --finetune-from runs/tune/vsr_sweep/best   # the fine-tune phase: LR/WD from the seed's
                                               # -5 / 0.001 first; exports to runs/tune/vsr_finetune/best
    python tune/search.py ...                  # the same flags (also python -m tune.search)

At the end the best trial's best checkpoint is exported to <storage>/<name>/best/
(checkpoint.pth + best.json), which the Serve app loads.
"""
DEFAULT_STORAGE = "runs/tune"
DEFAULT_NAME = "vsr_sweep"


def add_sweep_args(p: argparse.ArgumentParser) -> None:
    """Every flag of a sweep, on ``p``."""
    p.add_argument("--config", default=SWEEP_BASE, help="every trial's base config: a train_config.json or a shipped "
                   f"config's name ({', '.join(shipped_names())}); default %(default)s")
    p.add_argument("--data", nargs="+", help="training videos / frame folders / folders of videos")
    p.add_argument("--val-data", nargs="+", help="validation videos / frame folders")
    p.add_argument("--preset", help="model preset (default: the base config's, 'small')")
    p.add_argument("--num-samples", type=int, default=4, help="number of trials")
    p.add_argument("--max-steps", type=int, help="optimizer steps per trial (default: the base config's)")
    p.add_argument("--max-concurrent", type=int, default=2, help="trials running at once")
    p.add_argument("--cpus-per-trial", type=float, default=1, help="CPUs per trial (torch threads follow)")
    p.add_argument("--gpus-per-trial", type=float, default=0, help="GPUs per trial, fractions allowed")
    p.add_argument("--lr-range", type=float, nargs=2, metavar=("MIN", "MAX"),
                   help="learning-rate range, searched log-uniformly (as LR_EXPONENT); default 1e-4..3e-3, "
                   "with --finetune-from 1e-6..1e-4")
    p.add_argument("--wd-range", type=float, nargs=2, metavar=("MIN", "MAX"),
                   help="weight-decay range, searched log-uniformly; default 1e-4..1e-1, with --finetune-from "
                   "1e-4..1e-2")
    p.add_argument("--finetune-from", metavar="CHECKPOINT",
                   help="the fine-tune phase: every trial starts from this checkpoint's weights (a .pth, run folder "
                   "or best/), training_phase 'finetune', first trial LR_EXPONENT -5 / WEIGHT_DECAY 0.001; "
                   "default --name vsr_finetune")
    p.add_argument("--skip-base-trial", action="store_true",
                   help="do not start with the base config's own LR_EXPONENT / WEIGHT_DECAY as the first trial")
    p.add_argument("--time-budget-min", type=float,
                   help="end the whole sweep after this many minutes (running trials stop; their best checkpoints "
                   "count): a sweep that fits a fixed time on any machine, as `make demo` does")
    p.add_argument("--grace-steps", type=int, help="ASHA: steps before a trial may be stopped (default 2 validations)")
    p.add_argument("--storage-path", default=DEFAULT_STORAGE,
                   help="experiment storage: a local or shared folder, or a URI such as s3://bucket/path (default "
                   "%(default)s, in the current folder)")
    p.add_argument("--name", help="experiment name (a folder under the storage path); default vsr_sweep, "
                   "vsr_finetune with --finetune-from")
    p.add_argument("--resume", action="store_true", help="continue the experiment --name (finished trials are kept)")
    p.add_argument("--address", help="join a running Ray cluster, e.g. 'auto'; default: start a local Ray")
    p.add_argument("--dashboard-port", type=int, default=8265)
    p.add_argument("--max-failures", type=int, default=2, help="retries of a failed trial from its checkpoint")
    p.add_argument("--keep-checkpoints", type=int, default=3,
                   help="best checkpoints kept per trial (by gain over bicubic); 0 keeps all, which makes resuming "
                   "after a killed driver safe (see README)")
    p.add_argument("--seed", type=int, default=0, help="seed of the searcher and of every trial's training")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of the base config, e.g. --set VAL_STEP_EVERY=100 (repeatable; as vsr train)")
    add_data_parallel_args(p)


def add_data_parallel_args(p: argparse.ArgumentParser) -> None:
    from vsr_core.engine.distributed import add_worker_args

    group = p.add_argument_group("data-parallel trials (Ray Train; see README)")
    group.add_argument("--workers-per-trial", type=int, default=1, metavar="N",
                       help="train each trial on N Ray Train workers (DDP); 1 = one process per trial, no Ray Train")
    add_worker_args(group)


def finish_args(args: argparse.Namespace) -> argparse.Namespace:
    """The defaults that depend on other flags: each phase's search ranges and experiment name."""
    from tune.finetune import EXPERIMENT_NAME, search_ranges

    lr_range, wd_range = search_ranges(bool(args.finetune_from))
    args.lr_range = tuple(args.lr_range or lr_range)
    args.wd_range = tuple(args.wd_range or wd_range)
    args.name = args.name or (EXPERIMENT_NAME if args.finetune_from else DEFAULT_NAME)
    return args


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=f"{DESCRIPTION}\n\n{USAGE}",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_sweep_args(parser)
    return parser


def add_sweep_command(subparsers) -> None:
    """``vsr sweep``: the same flags as ``python tune/search.py``."""
    parser = subparsers.add_parser("sweep", help="search LR and weight decay with Ray Tune, export the best checkpoint",
                                   description=f"{DESCRIPTION}\n\n{USAGE}",
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    add_sweep_args(parser)
    parser.set_defaults(func=run_sweep_command)


def run_sweep_command(args: argparse.Namespace) -> int:
    from tune.search import run

    return run(finish_args(args))
