"""Ray Tune experiment folders, read as they grow: a sweep's trials, their metric history and the
checkpoint each would serve. No Ray needed: only the files Tune writes, through ``pyarrow.fs``, so a
folder may be local or a storage URI (as ``vsr sweep --storage-path``).

What Tune 2.60 writes in an experiment folder (``<storage>/<name>/``, ``tune/search.py``):

* ``experiment_state-<time>.json``: rewritten by the driver every few seconds; ``trial_data`` holds
  two JSON strings per trial, the first with ``trial_id``, ``status`` (PENDING, RUNNING, PAUSED,
  TERMINATED, ERROR) and ``relative_logdir`` (the trial's folder). Its pickled parts are never read.
* per trial folder (``trial_<id>``): ``params.json`` (the trial's config: the searched keys at the top,
  ``base_config`` below), ``result.json`` (one JSON row per report, appended; its last line may be
  half-written while the trial runs), ``progress.csv`` (the same rows), ``checkpoint_NNNNNN/`` (the
  reported checkpoints Tune keeps: it deletes those outside the best ``--keep-checkpoints``) and
  ``tensorboard/`` (the engine's TensorBoard files).

``ExperimentsReader.snapshot()`` reads only what is new since the last call (a file offset per
``result.json``; the state file when its size or time changed), so a running sweep shows up live.
Metric names come from ``engine.report_keys``. Paths are never in a snapshot unless asked for:
data paths in the config show as file names.
"""
from __future__ import annotations

from vsr_core.experiments.folders import SCORES, Experiment, Trial
from vsr_core.experiments.reader import ExperimentsReader, TrialNotFound

__all__ = ["ExperimentsReader", "TrialNotFound", "Experiment", "Trial", "SCORES"]
