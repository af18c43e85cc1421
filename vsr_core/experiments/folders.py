"""An experiment folder as Tune writes it, read incrementally: ``Experiment`` and its ``Trial`` records, and
the functions that bring them up to date (what is read, and when: ``vsr_core.experiments``)."""
from __future__ import annotations

import fnmatch
import json
import math
from dataclasses import dataclass, field
from typing import Any

import pyarrow.fs

from vsr_core.engine import report_keys as keys

STATE_PATTERN = "experiment_state-*.json"
PARAMS_FILE, RESULT_FILE, TENSORBOARD_DIR = "params.json", "result.json", "tensorboard"
# Tune's own names in a result row and a trial's state
TUNE_CHECKPOINT_DIR, TUNE_TRIAL_ID, TUNE_DONE = "checkpoint_dir_name", "trial_id", "done"
STATES = {"PENDING": "pending", "RUNNING": "running", "PAUSED": "paused", "TERMINATED": "terminated",
          "ERROR": "error"}
UNFINISHED = ("pending", "running", "paused")
STALE_AFTER_S = 300.0  # an unfinished experiment with no write for this long was interrupted
QUIET_WHEN_DONE_S = 60.0  # every trial ended and no export (vsr sweep's best/): finished after this long
# per row of a trial's history: the metric history the page draws, and what a promotion shows
HISTORY = {"step": keys.STEP, "gain": keys.GAIN, "loss": keys.LOSS_TOTAL, "tof": keys.TOF}
SCORES = {"gain": keys.GAIN, "psnr": keys.PSNR, "ssim": keys.SSIM, "bicubic_psnr": keys.BICUBIC_PSNR,
          "tof": keys.TOF, "flicker": keys.FLICKER, "bicubic_tof": keys.BICUBIC_TOF,
          "bicubic_flicker": keys.BICUBIC_FLICKER}
KEPT = (*HISTORY.values(), *SCORES.values(), keys.CONVERGENCE, keys.DIVERGED, keys.TRAINING_PHASE,
        TUNE_CHECKPOINT_DIR)


def finite(value: Any) -> Any:
    """JSON-safe: NaN and infinities (a diverged run) become None."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


@dataclass
class Trial:
    """One trial as read so far. ``rows``: its reports by step (a retried trial reports a step again:
    the later report wins), each with the ``KEPT`` keys only; ``layers``: the last report's activity."""

    experiment: str
    dirname: str
    trial_id: str
    status: str | None = None  # from the state file
    params: dict[str, Any] | None = None
    rows: dict[int, dict[str, Any]] = field(default_factory=dict)
    layers: dict[str, float] = field(default_factory=dict)
    offset: int = 0  # bytes of result.json read (complete lines only)
    modified: float = 0.0

    @property
    def config(self) -> dict[str, Any]:
        """The trial's train config: the base config with its searched keys."""
        params = self.params or {}
        return {**params.get("base_config", {}), **{k: v for k, v in params.items() if k.isupper()}}

    @property
    def steps(self) -> int:
        return max(self.rows, default=0)

    @property
    def diverged(self) -> bool:
        return any(row.get(keys.DIVERGED) for row in self.rows.values())

    @property
    def state(self) -> str:
        if self.status:
            return self.status
        last = self.rows.get(self.steps, {})
        return "terminated" if last.get(TUNE_DONE) else ("running" if self.rows else "pending")

    def best_row(self) -> dict[str, Any] | None:
        scored = [row for row in self.rows.values() if finite(row.get(keys.GAIN)) is not None]
        return max(scored, key=lambda row: row[keys.GAIN]) if scored else None


@dataclass
class Experiment:
    name: str
    folder: str  # the path in its filesystem
    trials: dict[str, Trial] = field(default_factory=dict)  # by folder name
    state_file: tuple[str, int, float] | None = None  # (name, size, mtime) of the state file last read
    modified: float = 0.0


def unique_name(name: str, taken: list[str]) -> str:
    candidate, n = name, 2
    while candidate in taken:
        candidate, n = f"{name}#{n}", n + 1
    return candidate


def list_folder(fs: pyarrow.fs.FileSystem, folder: str) -> list[pyarrow.fs.FileInfo]:
    try:
        return fs.get_file_info(pyarrow.fs.FileSelector(folder, allow_not_found=True))
    except OSError:
        return []


def _is_experiment(fs: pyarrow.fs.FileSystem, entries: list[pyarrow.fs.FileInfo]) -> bool:
    """A state file, Tune's tuner.pkl (written first), or a trial folder (one holding params.json)."""
    if any(fnmatch.fnmatch(e.base_name, STATE_PATTERN) or e.base_name == "tuner.pkl" for e in entries):
        return True
    return any(e.type == pyarrow.fs.FileType.Directory and _is_trial(fs, e.path) for e in entries)


def _is_trial(fs: pyarrow.fs.FileSystem, folder: str) -> bool:
    return fs.get_file_info(f"{folder}/{PARAMS_FILE}").type == pyarrow.fs.FileType.File


def experiment_folders(fs: pyarrow.fs.FileSystem, root: str) -> list[str]:
    """``root`` when it is an experiment folder, else its sub-folders that are."""
    entries = list_folder(fs, root)
    if _is_experiment(fs, entries):
        return [root]
    folders = sorted(e.path for e in entries if e.type == pyarrow.fs.FileType.Directory)
    return [folder for folder in folders if _is_experiment(fs, list_folder(fs, folder))]


def mtime(info: pyarrow.fs.FileInfo) -> float:
    return info.mtime.timestamp() if info.mtime is not None else 0.0


def read_experiment(fs: pyarrow.fs.FileSystem, experiment: Experiment) -> None:
    entries = list_folder(fs, experiment.folder)
    states = sorted((e for e in entries if fnmatch.fnmatch(e.base_name, STATE_PATTERN)), key=mtime)
    statuses = _read_state(fs, experiment, states[-1]) if states else None
    for entry in entries:
        if entry.type == pyarrow.fs.FileType.Directory and entry.base_name not in experiment.trials:
            if _is_trial(fs, entry.path):
                experiment.trials[entry.base_name] = Trial(experiment.name, entry.base_name,
                                                           entry.base_name.removeprefix("trial_"))
    for dirname, (trial_id, status) in (statuses or {}).items():
        trial = experiment.trials.setdefault(dirname, Trial(experiment.name, dirname, trial_id))
        trial.trial_id, trial.status = trial_id, status
    for trial in experiment.trials.values():
        _read_trial(fs, experiment.folder, trial)
    experiment.modified = max([mtime(e) for e in states] + [t.modified for t in experiment.trials.values()],
                              default=0.0)


def _read_state(fs: pyarrow.fs.FileSystem, experiment: Experiment, info: pyarrow.fs.FileInfo
                ) -> dict[str, tuple[str, str]] | None:
    """{trial folder: (trial id, state)} from the newest state file, when it changed since the last read
    (None: unchanged or unreadable, e.g. caught mid-write)."""
    key = (info.base_name, info.size, mtime(info))
    if key == experiment.state_file:
        return None
    try:
        with fs.open_input_stream(info.path) as f:
            trial_data = json.loads(f.read().decode("utf-8"))["trial_data"]
        trials = [json.loads(pair[0]) for pair in trial_data]
        statuses = {str(t["relative_logdir"]): (str(t["trial_id"]), STATES.get(t.get("status"), "unknown"))
                    for t in trials}
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None
    experiment.state_file = key
    return statuses


def _read_trial(fs: pyarrow.fs.FileSystem, folder: str, trial: Trial) -> None:
    base = f"{folder}/{trial.dirname}"
    if trial.params is None:
        trial.params = read_json(fs, f"{base}/{PARAMS_FILE}")
    info = fs.get_file_info(f"{base}/{RESULT_FILE}")
    if info.type != pyarrow.fs.FileType.File:
        return
    if info.size < trial.offset:  # replaced by a shorter file: read it again
        trial.rows.clear()
        trial.offset = 0
    if info.size == trial.offset:
        return
    with fs.open_input_file(info.path) as f:
        f.seek(trial.offset)
        data = f.read(info.size - trial.offset)
    complete = data[: data.rfind(b"\n") + 1]  # a half-written last line waits for the next read
    trial.offset += len(complete)
    trial.modified = mtime(info)
    for line in complete.splitlines():
        _add_row(trial, line)


def read_json(fs: pyarrow.fs.FileSystem, path: str) -> dict[str, Any] | None:
    try:
        with fs.open_input_stream(path) as f:
            value = json.loads(f.read().decode("utf-8"))
    except (OSError, ValueError):
        return None  # not there yet, or mid-write: read again next time
    return value if isinstance(value, dict) else None


def _add_row(trial: Trial, line: bytes) -> None:
    try:
        row = json.loads(line.decode("utf-8", errors="replace"))
    except ValueError:
        return  # a damaged line: the others still count
    if not isinstance(row, dict) or not isinstance(row.get(keys.STEP), (int, float)):
        return
    if isinstance(row.get(TUNE_TRIAL_ID), str):
        trial.trial_id = row[TUNE_TRIAL_ID]
    trial.rows[int(row[keys.STEP])] = {k: finite(row[k]) for k in (*KEPT, TUNE_DONE) if k in row}
    layers = {k[len(keys.LAYER_PREFIX):]: finite(v) for k, v in row.items() if k.startswith(keys.LAYER_PREFIX)}
    if layers:
        trial.layers = layers
