"""How every run starts: ``start_run`` builds the ``Trainer`` from what there is to continue.

One rule for ``vsr train``, single-process Tune trials and the workers of a data-parallel run:

1. a *reported* checkpoint (the run's own last report: ``tune.get_checkpoint()`` of a retried or
   restored trial, ``ray.train.get_checkpoint()`` of a restarted worker group) is where the run is,
   so it continues from there, whatever it was started from;
2. else an explicit resume file (``--resume``) continues that run;
3. else a fine-tune source (``--finetune-from``) gives the starting weights (a new run);
4. else a fresh model.

A fine-tune is only ever started from its source's weights when there is nothing to resume: a
restarted fine-tune continues from its own checkpoint (loading the source again would undo its
steps, and the Trainer refuses both at once). Giving both an explicit resume file and a fine-tune
source is the caller's mistake and raises ``ValueError``.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Protocol

from vsr_core.checkpoint import CHECKPOINT_FILE
from vsr_core.config import TrainConfig
from vsr_core.engine.distributed import DataParallel
from vsr_core.engine.trainer import Trainer



class ReportedCheckpoint(Protocol):
    """A checkpoint folder as Ray hands it back (``ray.tune.Checkpoint``, ``ray.train.Checkpoint``)."""

    def as_directory(self) -> contextlib.AbstractContextManager[str]: ...


def start_run(config: TrainConfig, *, reported: ReportedCheckpoint | None = None,
              resume_from: str | Path | None = None, finetune_from: str | Path | None = None,
              log_dir: str | Path | None = None, parallel: DataParallel | None = None) -> Trainer:
    """The Trainer for ``config``, continuing from ``reported`` (a folder holding ``CHECKPOINT_FILE``), else
    from ``resume_from``, else starting from ``finetune_from``'s weights, else fresh (see the module docstring)."""
    if resume_from and finetune_from:
        raise ValueError("give either a checkpoint to resume (continue a run) or one to fine-tune from (a new run "
                         "from its weights), not both")
    with contextlib.ExitStack() as stack:
        if reported is not None:  # a local folder is used in place; a remote one is downloaded for the load
            resume_from = Path(stack.enter_context(reported.as_directory())) / CHECKPOINT_FILE
        return Trainer(config, resume_from=resume_from, finetune_from=None if resume_from else finetune_from,
                       log_dir=log_dir, parallel=parallel)
