"""The jobs on disk: one folder per job under ``jobs_dir``, its states, and what it may use.

A job folder holds ``job.json`` (the ``JobRecord``, rewritten atomically), the upload, the
engine's work folder and the result, plus markers that only the replicas write:

    owner       who uploads it (an upload in progress counts against its key's jobs)
    reserved    bytes the job may grow to (admission: upload, chunk parts, result), counted
                against ``jobs_max_bytes`` until the job ends, so concurrent uploads cannot
                overshoot it
    started     one line per start of its runner (capped restarts; the scheduler's turns)
    cancelled   DELETE of an unfinished job: its runner stops and records "cancelled"
    deleted     DELETE of a finished job: a tombstone (the rest of the folder is removed);
                the job answers 404 and never comes back, also not from a runner that writes late

One state machine (``JobStore.read`` gives the state a client sees)::

    queued -> running -> cancelling -> cancelled | done | failed -> deleted

"cancelling" is an unfinished job with a ``cancelled`` marker; "deleted" a job with a tombstone.
Only the replica creates a folder; a runner's ``write`` never does (``JobGone`` when it is
gone). A folder without ``job.json`` is an upload in progress; one that has not changed for a
while (its replica died mid-upload) is removed by the replicas' maintenance.

The replicas share the folder (and a multi-node cluster must share it): admission decisions take
``locked()``, an ``flock`` on ``jobs_dir/.admission.lock``, and each replica touches its file
in ``jobs_dir/.replicas/`` (its heartbeat: runners that stop hearing any stop too).
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import secrets
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

JOB_FILE = "job.json"
RESERVED = "reserved"
OWNER = "owner"
STARTED = "started"
CANCEL_MARKER = "cancelled"
TOMBSTONE = "deleted"
RESULT_NAME = "result.mp4"
TERMINAL = ("done", "failed", "cancelled")
ACTIVE = ("queued", "running", "cancelling")  # what counts against max_jobs
_JOB_ID = re.compile(r"[A-Za-z0-9_-]{22}")  # secrets.token_urlsafe(16)
_KEEP_IN_TOMBSTONE = (JOB_FILE, TOMBSTONE)
HEARTBEATS = ".replicas"
LOCK_FILE = ".admission.lock"


class JobGone(Exception):
    """The job's folder is gone (deleted): whoever was writing it stops."""


@dataclass
class JobRecord:
    id: str
    owner: str  # key_owner() of the API key that submitted it ("" without keys)
    source: str  # the video: the upload in the job folder, or an allowed path/URI
    source_name: str  # shown to users (never a server path)
    checkpoint: str
    inference: dict[str, Any]  # the chunk workers' InferenceOptions.to_dict()
    options: dict[str, Any]  # the job's own: chunk_frames, workers, cpus_per_worker, gpus_per_worker, encoder, preview
    state: str = "queued"  # as stored: queued | running | done | failed | cancelled (read() adds the others)
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    frames_done: int = 0
    frames_total: int | None = None
    fps: float = 0.0
    eta_seconds: float | None = None
    nodes: int = 0
    result_bytes: int | None = None
    error: str | None = None  # public: "code: message" (serve.jobs.public_error)
    uploaded: bool = True  # the source is the job's own copy (deleted when the job ends)
    result_name: str = RESULT_NAME  # result.mkv when an mp4 could not hold the input's streams
    encoder: str | None = None  # the encoder settings used (also in the result's metadata)
    projection: dict[str, Any] | None = None  # a preview's measured fps and projected time and size

    def public(self) -> dict[str, Any]:
        """What the API shows: no server paths, no owner."""
        progress = self.frames_done / self.frames_total if self.frames_total else 0.0
        shown = ("id", "state", "source_name", "created_at", "updated_at", "finished_at", "frames_done",
                 "frames_total", "fps", "eta_seconds", "nodes", "result_bytes", "error", "encoder", "projection")
        return {**{k: getattr(self, k) for k in shown}, "progress": round(progress, 4)}


class JobStore:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser()

    # --- names ------------------------------------------------------------------------------------
    def folder(self, job_id: str) -> Path:
        if not isinstance(job_id, str) or not _JOB_ID.fullmatch(job_id):
            raise KeyError(job_id)
        return self.root / job_id

    def result_path(self, job_id: str, name: str = RESULT_NAME) -> Path:
        return self.folder(job_id) / name

    def work_folder(self, job_id: str) -> Path:
        return self.folder(job_id) / "work"

    def new_id(self) -> str:
        return secrets.token_urlsafe(16)

    def job_ids(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return [entry.name for entry in self.root.iterdir() if _JOB_ID.fullmatch(entry.name)]

    # --- records ------------------------------------------------------------------------------------
    def create(self, job_id: str, reserved_bytes: int, owner: str = "") -> Path:
        """A new job's folder (an upload in progress until ``write``), with its reservation."""
        folder = self.folder(job_id)
        folder.mkdir(parents=True)
        self._write_text(job_id, OWNER, owner)
        self.reserve(job_id, reserved_bytes)
        return folder

    def write(self, record: JobRecord) -> None:
        """Replace the job's record atomically. Never creates the folder: ``JobGone`` if it is gone."""
        record.updated_at = time.time()
        self._write_text(record.id, JOB_FILE, json.dumps(asdict(record)))

    def _write_text(self, job_id: str, name: str, text: str) -> None:
        folder = self.folder(job_id)
        partial = folder / f".{name}.{os.getpid()}.partial"
        try:
            partial.write_text(text)
            os.replace(partial, folder / name)
        except FileNotFoundError:
            raise JobGone(job_id) from None

    def read(self, job_id: str) -> JobRecord | None:
        """The record with the state a client sees (see the module docstring); None if there is none."""
        try:
            folder = self.folder(job_id)
            record = JobRecord(**json.loads((folder / JOB_FILE).read_text()))
        except (KeyError, OSError, ValueError, TypeError):
            return None
        if (folder / TOMBSTONE).exists():
            record.state = "deleted"
        elif record.state not in TERMINAL and (folder / CANCEL_MARKER).exists():
            record.state = "cancelling"
        return record

    def active_owners(self) -> list[str]:
        """The owner of every queued, running or cancelling job and of every upload in progress."""
        owners = []
        for job_id in self.job_ids():
            record = self.read(job_id)
            if record is None:
                try:
                    owners.append((self.folder(job_id) / OWNER).read_text())
                except OSError:
                    pass  # being removed
            elif record.state in ACTIVE:
                owners.append(record.owner)
        return owners

    def records(self) -> list[JobRecord]:
        """Every job that has a record (deleted ones too), oldest first."""
        found = (self.read(job_id) for job_id in self.job_ids())
        return sorted((r for r in found if r is not None), key=lambda r: r.created_at)

    # --- markers -------------------------------------------------------------------------------------
    def reserve(self, job_id: str, reserved_bytes: int) -> None:
        self._write_text(job_id, RESERVED, str(int(reserved_bytes)))

    def cancel(self, job_id: str) -> None:
        self._touch(job_id, CANCEL_MARKER)

    def is_cancelled(self, job_id: str) -> bool:
        """Cancelled or deleted: its runner must stop."""
        folder = self.folder(job_id)
        return not folder.is_dir() or (folder / CANCEL_MARKER).exists() or (folder / TOMBSTONE).exists()

    def mark_started(self, job_id: str) -> int:
        """Record a start of the job's runner; how many starts there have been."""
        try:
            with open(self.folder(job_id) / STARTED, "a") as marker:
                marker.write(f"{time.time():.3f}\n")
        except FileNotFoundError:
            raise JobGone(job_id) from None
        return len(self.starts(job_id))

    def starts(self, job_id: str) -> list[float]:
        try:
            return [float(line) for line in (self.folder(job_id) / STARTED).read_text().split()]
        except (OSError, ValueError):
            return []

    def unmark_started(self, job_id: str) -> None:
        """The job went back to the queue (its runner parked it): it waits for a start again."""
        (self.folder(job_id) / STARTED).unlink(missing_ok=True)

    def _touch(self, job_id: str, name: str) -> None:
        try:
            (self.folder(job_id) / name).touch()
        except FileNotFoundError:
            raise JobGone(job_id) from None

    # --- deleting ------------------------------------------------------------------------------------
    def tombstone(self, job_id: str) -> None:
        """DELETE of a finished job: the tombstone first, then everything else but the record."""
        self._touch(job_id, TOMBSTONE)
        for entry in self.folder(job_id).iterdir():
            if entry.name not in _KEEP_IN_TOMBSTONE:
                shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)

    def purge(self, job_id: str) -> None:
        """Remove the job's folder entirely (an expired job, a refused upload)."""
        shutil.rmtree(self.folder(job_id), ignore_errors=True)

    def expire(self, ttl_s: float, upload_stale_s: float) -> list[str]:
        """Remove jobs that ended (or were deleted) more than ``ttl_s`` ago, and uploads that have
        not changed for ``upload_stale_s`` (their replica died mid-upload)."""
        now, removed = time.time(), []
        for job_id in self.job_ids():
            record = self.read(job_id)
            if record is None:
                if now - _newest_change(self.folder(job_id)) > upload_stale_s:
                    removed.append(job_id)
                continue
            ended = record.finished_at or record.updated_at
            if record.state in (*TERMINAL, "deleted") and now - ended > ttl_s:
                removed.append(job_id)
        for job_id in removed:
            self.purge(job_id)
        return removed

    # --- disk -------------------------------------------------------------------------------------
    def held_bytes(self, job_id: str) -> int:
        """What the job's folder holds now."""
        return _folder_bytes(self.folder(job_id))

    def usage_bytes(self) -> int:
        """What all jobs use: an unfinished job (or upload) its reservation or what it holds,
        whichever is more; a finished one what it holds."""
        total = 0
        for job_id in self.job_ids():
            folder = self.folder(job_id)
            held = _folder_bytes(folder)
            record = self.read(job_id)
            if record is None or record.state in ACTIVE:
                held = max(held, _read_int(folder / RESERVED))
            total += held
        return total

    # --- the replicas --------------------------------------------------------------------------------
    @contextmanager
    def locked(self) -> Iterator[None]:
        """Admission and scheduling decisions, one at a time across the replicas (blocking)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / LOCK_FILE, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def heartbeat(self, replica_id: str) -> None:
        folder = self.root / HEARTBEATS
        folder.mkdir(parents=True, exist_ok=True)
        (folder / replica_id).touch()

    def last_heartbeat(self) -> float | None:
        """When a replica last said it was alive (None: none ever did)."""
        try:
            return max((entry.stat().st_mtime for entry in (self.root / HEARTBEATS).iterdir()), default=None)
        except OSError:
            return None


def _folder_bytes(folder: Path) -> int:
    total = 0
    for parent, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(parent, name)).st_size
            except OSError:
                pass  # deleted meanwhile
    return total


def _newest_change(folder: Path) -> float:
    newest = 0.0
    for parent, _, files in os.walk(folder):
        for name in [".", *files]:
            try:
                newest = max(newest, os.lstat(os.path.join(parent, name)).st_mtime)
            except OSError:
                pass
    return newest


def _read_int(path: Path) -> int:
    try:
        return int(path.read_text())
    except (OSError, ValueError):
        return 0
