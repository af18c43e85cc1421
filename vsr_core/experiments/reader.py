"""``ExperimentsReader``: the experiments under some folders or URIs, and the checkpoints in them."""
from __future__ import annotations

import os
import threading
from typing import Any

import pyarrow.fs

from vsr_core import storage
from vsr_core.checkpoint import CHECKPOINT_FILE, CheckpointError, resolve_checkpoint_path
from vsr_core.engine import report_keys as keys
from vsr_core.experiments.folders import (
    TUNE_CHECKPOINT_DIR,
    Experiment,
    Trial,
    experiment_folders,
    finite,
    read_experiment,
    unique_name,
)
from vsr_core.experiments.summary import describe_experiment


class TrialNotFound(LookupError):
    pass


class ExperimentsReader:
    """The experiments under ``locations`` (each an experiment folder or a folder of them; paths or URIs).
    Thread-safe; every call reads what is new on disk first."""

    def __init__(self, locations: list[str] | tuple[str, ...]):
        self.roots = [storage.filesystem(location) for location in locations]
        self._experiments: dict[tuple[int, str], Experiment] = {}
        self._lock = threading.RLock()  # the records change while they are read: one call at a time

    # --- reading ----------------------------------------------------------------------------
    def refresh(self) -> list[Experiment]:
        with self._lock:
            found = []
            for index, (fs, root) in enumerate(self.roots):
                for folder in experiment_folders(fs, root):
                    experiment = self._experiments.get((index, folder))
                    if experiment is None:
                        experiment = self._experiments[(index, folder)] = Experiment(unique_name(
                            folder.rstrip("/").rsplit("/", 1)[-1], [e.name for e in self._experiments.values()]),
                            folder)
                    read_experiment(fs, experiment)
                    found.append(experiment)
            return found

    def snapshot(self, expose_paths: bool = False) -> list[dict[str, Any]]:
        """Every experiment and its trials as JSON-able dicts (see ``describe_experiment``)."""
        described = []
        with self._lock:
            for experiment in self.refresh():
                kept = {t.dirname: self.best_checkpoint(experiment, t) for t in experiment.trials.values()}
                steps = {name: found[1][keys.STEP] for name, found in kept.items() if found}
                described.append(describe_experiment(experiment, self._fs_of(experiment), steps, expose_paths))
        return described

    def _fs_of(self, experiment: Experiment) -> pyarrow.fs.FileSystem:
        return next(self.roots[i][0] for (i, folder), e in self._experiments.items() if e is experiment)

    # --- checkpoints ------------------------------------------------------------------------
    def find_trial(self, trial_id: str, experiment: str | None = None) -> tuple[Experiment, Trial]:
        """The trial with this id (in ``experiment`` when given); TrialNotFound when there is none or
        the id is in several experiments (then ``experiment`` must say which)."""
        with self._lock:
            matches = [(e, t) for e in self.refresh() if experiment in (None, e.name)
                       for t in e.trials.values() if t.trial_id == trial_id]
        if len(matches) == 1:
            return matches[0]
        where = f" in experiment {experiment!r}" if experiment else ""
        if not matches:
            raise TrialNotFound(f"no trial {trial_id!r}{where} (known: {self._known_trials()})")
        names = sorted(e.name for e, _ in matches)
        raise TrialNotFound(f"trial {trial_id!r} is in several experiments ({', '.join(names)}): name one")

    def _known_trials(self) -> str:
        ids = [t.trial_id for e in self._experiments.values() for t in e.trials.values()]
        return ", ".join(sorted(ids)[:20]) or "none"

    def best_checkpoint(self, experiment: Experiment, trial: Trial) -> tuple[str, dict[str, Any]] | None:
        """(location of the checkpoint file, its report) of the trial's best report whose checkpoint Tune
        still keeps; None when no kept checkpoint has a score."""
        fs = self._fs_of(experiment)
        with self._lock:
            candidates = sorted((row for row in trial.rows.values() if row.get(TUNE_CHECKPOINT_DIR)
                                 and finite(row.get(keys.GAIN)) is not None), key=lambda row: -row[keys.GAIN])
        for row in candidates:
            path = f"{experiment.folder}/{trial.dirname}/{row[TUNE_CHECKPOINT_DIR]}/{CHECKPOINT_FILE}"
            if fs.get_file_info(path).type == pyarrow.fs.FileType.File:
                return _location(fs, path), row
        return None

    def contains(self, location: str) -> bool:
        """Whether a local path or URI lies inside one of the experiments' roots (after resolving
        ``..`` and, for local paths, symlinks)."""
        fs, path = storage.filesystem(location)
        path = _normalized(path)
        for root_fs, root in self.roots:
            same_fs = type(root_fs) is type(fs) and (isinstance(fs, pyarrow.fs.LocalFileSystem)
                                                     or root_fs.equals(fs))
            if same_fs and (path == root or path.startswith(root.rstrip("/") + "/")):
                return True
        return False

    def locate_checkpoint(self, path: str) -> str:
        """The checkpoint file ``path`` names inside the experiments (a local path or URI): a checkpoint
        file, a reported ``checkpoint_NNNNNN`` folder or an exported ``best/`` folder; a relative path is
        taken from each root in turn. PermissionError when it lies outside them (symlinks resolved),
        FileNotFoundError when there is no checkpoint there."""
        absolute = storage.is_uri(path) or os.path.isabs(os.path.expanduser(path))
        candidates = [path] if absolute else [_location(fs, f"{root}/{path}") for fs, root in self.roots]
        outside = False
        for candidate in candidates:
            if not self.contains(candidate):
                outside = True
                continue
            found = _checkpoint_file(candidate)
            if found is not None:
                if not self.contains(found):  # a link inside pointing out
                    raise PermissionError("the checkpoint lies outside the experiment folders")
                return _location(*storage.filesystem(found))  # links resolved: the file that was checked
        if outside and len(candidates) == 1:
            raise PermissionError("the checkpoint lies outside the experiment folders")
        raise FileNotFoundError("no checkpoint there (a checkpoint file, a checkpoint_NNNNNN folder or a best/ folder)")

    def experiment_of(self, location: str) -> str | None:
        """The name of the experiment whose folder holds ``location`` (e.g. its best/ export), if one does."""
        fs, path = storage.filesystem(location)
        with self._lock:
            for experiment in self.refresh():
                if path.startswith(experiment.folder.rstrip("/") + "/") and fs.equals(self._fs_of(experiment)):
                    return experiment.name
        return None

    def trial_of(self, location: str) -> tuple[Experiment, Trial, dict[str, Any]] | None:
        """The trial and report whose checkpoint ``location`` is, when it is one."""
        fs, path = storage.filesystem(location)
        with self._lock:
            for experiment in self.refresh():
                for trial in experiment.trials.values():
                    for row in trial.rows.values():
                        folder = f"{experiment.folder}/{trial.dirname}/{row.get(TUNE_CHECKPOINT_DIR)}"
                        if path == f"{folder}/{CHECKPOINT_FILE}" and fs.equals(self._fs_of(experiment)):
                            return experiment, trial, row
        return None


def _location(fs: pyarrow.fs.FileSystem, path: str) -> str:
    """A path of ``fs`` as a local path or a URI (what ``storage`` opens)."""
    return path if isinstance(fs, pyarrow.fs.LocalFileSystem) else f"{fs.type_name}://{path}"


def _checkpoint_file(location: str) -> str | None:
    """The checkpoint file at ``location``: the file itself, ``CHECKPOINT_FILE`` in a folder, or what a
    local best/ or run folder names (``checkpoint.resolve_checkpoint_path``)."""
    fs, path = storage.filesystem(location)
    kind = fs.get_file_info(path).type
    if kind == pyarrow.fs.FileType.File:
        return location
    if kind != pyarrow.fs.FileType.Directory:
        return None
    if fs.get_file_info(f"{path}/{CHECKPOINT_FILE}").type == pyarrow.fs.FileType.File:
        return f"{location.rstrip('/')}/{CHECKPOINT_FILE}"
    if storage.is_uri(location):
        return None
    try:
        return str(resolve_checkpoint_path(path).resolve())
    except CheckpointError:
        return None


def _normalized(path: str) -> str:
    parts: list[str] = []
    for part in path.split("/"):
        if part == "..":
            if parts:
                parts.pop()
        elif part not in ("", "."):
            parts.append(part)
    return ("/" if path.startswith("/") else "") + "/".join(parts)
