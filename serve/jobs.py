"""Video jobs: whole videos of any length, upscaled by the video engine on Ray chunk workers,
with progress, cancel and results that outlive the replica that took the upload.

A job is a folder under ``jobs_dir``: ``job.json`` (state and progress, rewritten
atomically), the upload, the engine's work folder (finished chunks) and the result. The
replica only writes the upload and reads the folder; the work is done by a ``JobRunner``,
a detached Ray actor per job that runs ``vsr_core.video.pipeline.upscale_file`` with its own
pool of chunk workers. So window requests never wait for job chunks (other processes,
their own CPUs), a replica restart does not touch a running job, and a job whose runner
died (node loss) is started again by any replica's recovery loop and continues from its
finished chunks. Cancelling writes a marker the runner checks a few times a second; it
then kills its workers.
"""
from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import ray

logger = logging.getLogger("ray.serve")

RUNNER_NAMESPACE = "vsr-jobs"
JOB_FILE = "job.json"
CANCEL_MARKER = "cancelled"
RESULT_NAME = "result.mp4"
TERMINAL = ("done", "failed", "cancelled")
_JOB_ID = re.compile(r"^[A-Za-z0-9_-]{22}$")  # secrets.token_urlsafe(16)
PROGRESS_WRITE_S = 0.5
STALE_AFTER_S = 60.0  # a running job whose record is older than this has lost its runner


@dataclass
class JobRecord:
    id: str
    owner: str  # key_owner() of the API key that submitted it ("" without keys)
    source: str  # the video: the upload in the job folder, or an allowed path/URI
    source_name: str  # shown to users (never a server path)
    checkpoint: str
    inference: dict[str, Any]  # the chunk workers' InferenceOptions.to_dict()
    options: dict[str, Any]  # the job's own: chunk_frames, workers, cpus_per_worker, gpus_per_worker, encoder, preview
    state: str = "queued"  # queued | running | done | failed | cancelled
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    frames_done: int = 0
    frames_total: int | None = None
    fps: float = 0.0
    eta_seconds: float | None = None
    nodes: int = 0
    result_bytes: int | None = None
    error: str | None = None
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


ENCODER_FIELDS = ("codec", "crf", "preset", "pix_fmt")
PREVIEW_FIELDS = ("preview_start", "preview_duration")


def video_options(values: dict[str, Any]) -> dict[str, Any]:
    """The encoder and preview fields of a job request (query parameters or JSON fields), checked:
    {"encoder": {codec, crf, preset, pix_fmt}, "preview": [start, duration] or None}. Raises
    ValueError naming the field."""
    from vsr_core.data.video_encoder import EncoderSettings

    def number(key: str, kind):
        value = values.get(key)
        if value is None or isinstance(value, kind) and not isinstance(value, bool):
            return value
        try:
            return kind(str(value))
        except ValueError:
            raise ValueError(f"{key}: {value!r} is not {'an integer' if kind is int else 'a number'}") from None

    fields = {"codec": values.get("codec") or "h264", "crf": number("crf", int),
              "preset": None if values.get("preset") is None else str(values["preset"]),
              "pix_fmt": values.get("pix_fmt")}
    EncoderSettings(**fields)  # raises EncoderError (a ValueError) naming the field
    start, duration = number("preview_start", float), number("preview_duration", float)
    if (start is None) != (duration is None):
        raise ValueError("preview_start and preview_duration: give both (seconds) or neither")
    if duration is not None and (start < 0 or duration <= 0):
        raise ValueError(f"preview_start must be >= 0 and preview_duration > 0, got {start} and {duration}")
    return {"encoder": fields, "preview": None if start is None else [start, duration]}


class JobStore:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser()

    def folder(self, job_id: str) -> Path:
        if not _JOB_ID.match(job_id):
            raise KeyError(job_id)
        return self.root / job_id

    def result_path(self, job_id: str, name: str = RESULT_NAME) -> Path:
        return self.folder(job_id) / name

    def work_folder(self, job_id: str) -> Path:
        return self.folder(job_id) / "work"

    def new_id(self) -> str:
        return secrets.token_urlsafe(16)

    def write(self, record: JobRecord) -> None:
        record.updated_at = time.time()
        folder = self.folder(record.id)
        folder.mkdir(parents=True, exist_ok=True)
        partial = folder / f".{JOB_FILE}.{os.getpid()}.partial"
        partial.write_text(json.dumps(asdict(record)))
        os.replace(partial, folder / JOB_FILE)

    def read(self, job_id: str) -> JobRecord | None:
        try:
            folder = self.folder(job_id)
            record = JobRecord(**json.loads((folder / JOB_FILE).read_text()))
        except (KeyError, OSError, ValueError, TypeError):
            return None
        if record.state not in TERMINAL and (folder / CANCEL_MARKER).exists():
            record.state = "cancelled"  # the runner may not have noticed yet; the user's word stands
        return record

    def cancel(self, job_id: str) -> None:
        (self.folder(job_id) / CANCEL_MARKER).touch()

    def is_cancelled(self, job_id: str) -> bool:
        return (self.folder(job_id) / CANCEL_MARKER).exists()

    def delete(self, job_id: str) -> None:
        shutil.rmtree(self.folder(job_id), ignore_errors=True)

    def records(self) -> list[JobRecord]:
        if not self.root.is_dir():
            return []
        found = (self.read(entry.name) for entry in self.root.iterdir() if _JOB_ID.match(entry.name))
        return sorted((r for r in found if r is not None), key=lambda r: r.created_at)

    def usage_bytes(self) -> int:
        total = 0
        for folder, _, files in os.walk(self.root):
            for name in files:
                try:
                    total += os.lstat(os.path.join(folder, name)).st_size
                except OSError:
                    pass  # deleted meanwhile
        return total

    def expire(self, ttl_s: float) -> list[str]:
        """Delete jobs that ended more than ``ttl_s`` ago (result included)."""
        now, expired = time.time(), []
        for record in self.records():
            ended = record.finished_at or (record.updated_at if record.state in TERMINAL else None)
            if ended is not None and now - ended > ttl_s:
                self.delete(record.id)
                expired.append(record.id)
        return expired


# --- the runner ---------------------------------------------------------------------------------
@ray.remote(num_cpus=0, max_restarts=-1)
class JobRunner:
    """Runs one job to its end (coordinating only: the chunk workers do the work). Ray restarts
    a runner that dies; the replicas' ``recover`` then calls ``run`` again, which continues
    from the finished chunks."""

    def run(self, jobs_dir: str, job_id: str) -> None:
        store = JobStore(jobs_dir)
        record = store.read(job_id)
        if record is None or record.state in TERMINAL:  # deleted, or cancelled before it started
            ray.actor.exit_actor()
        record.state = "running"
        store.write(record)
        try:
            result = self._upscale(store, record)
        except Exception as exc:  # noqa: BLE001 - every ending is recorded
            from vsr_core.video.plan import JobCancelled

            cancelled = isinstance(exc, JobCancelled) or store.is_cancelled(job_id)
            record.state = "cancelled" if cancelled else "failed"
            if not cancelled:
                logger.exception("job %s failed", job_id)
                record.error = _public_error(exc, store.folder(job_id), record.source)
            if cancelled:  # nobody will resume it
                shutil.rmtree(store.work_folder(job_id), ignore_errors=True)
        else:
            record.state, record.nodes = "done", len(result.nodes)
            record.frames_done = record.frames_total = result.frames
            record.result_name, record.encoder = Path(result.output).name, result.encoder
            record.projection = asdict(result.projection) if result.projection else None
            record.result_bytes = store.result_path(job_id, record.result_name).stat().st_size
            record.eta_seconds = 0.0
        record.finished_at = time.time()
        if record.uploaded and record.state != "failed":  # a failed job keeps its input for a retry
            Path(record.source).unlink(missing_ok=True)
        store.write(record)
        ray.actor.exit_actor()  # the job has ended: free the process (a detached actor lives until it exits)

    @staticmethod
    def _upscale(store: JobStore, record: JobRecord):
        from vsr_core.checkpoint import model_from_checkpoint
        from vsr_core.data.video_encoder import EncoderSettings
        from vsr_core.options import InferenceOptions
        from vsr_core.video.pipeline import upscale_file
        from vsr_core.video.ray_workers import RayExecutor, RayPool

        options = record.options
        pool = RayPool(workers=options["workers"], num_cpus=options["cpus_per_worker"],
                       num_gpus=options["gpus_per_worker"])
        model, _ = model_from_checkpoint(record.checkpoint)  # on this CPU-only runner; the workers get a copy
        executor = RayExecutor(model, InferenceOptions.from_dict(record.inference), pool)
        last_write = 0.0

        def on_progress(progress) -> None:
            nonlocal last_write
            if time.monotonic() - last_write < PROGRESS_WRITE_S and progress.frames_done < progress.frames_total:
                return
            last_write = time.monotonic()
            record.frames_done, record.frames_total = progress.frames_done, progress.frames_total
            record.fps, record.eta_seconds = round(progress.fps, 3), progress.eta_seconds
            store.write(record)

        preview = options["preview"]
        return upscale_file(record.source, store.result_path(record.id), executor, on_progress=on_progress,
                            should_stop=lambda: store.is_cancelled(record.id), chunk_frames=options["chunk_frames"],
                            work_folder=store.work_folder(record.id), resume=True,
                            encoder=EncoderSettings(**options["encoder"]), preview=tuple(preview) if preview else None)


def _public_error(exc: Exception, job_folder: Path, source: str) -> str:
    """The error for the API: its message without server paths."""
    message = f"{type(exc).__name__}: {exc}"
    for private in (str(job_folder), source, str(Path.home())):
        message = message.replace(private, "<job>" if private != source else "<video>")
    return message[:500]


def start_runner(jobs_dir: str, job_id: str) -> None:
    """Start (or poke) the job's runner. Idempotent: a runner that is already working on the
    job just finishes; one that restarted after a crash continues from the finished chunks."""
    runner = JobRunner.options(name=f"vsr-job-{job_id}", namespace=RUNNER_NAMESPACE, lifetime="detached",
                               get_if_exists=True).remote()
    runner.run.remote(jobs_dir, job_id)


def recover(store: JobStore, already_started: set[str]) -> list[str]:
    """Make sure every unfinished job has a working runner. A job is (re)started when this
    replica has not started it yet (a new replica after a restart), when its runner is gone
    (node or cluster loss), or when its record has not moved for ``STALE_AFTER_S`` (Ray
    restarted its runner, which waits for a ``run`` call). A ``run`` call that reaches a busy
    runner waits behind the running one and then finds the job ended."""
    started = []
    for record in store.records():
        if record.state in TERMINAL:
            continue
        stale = time.time() - record.updated_at > STALE_AFTER_S
        if record.id not in already_started or stale or not _runner_alive(record.id):
            start_runner(str(store.root), record.id)
            already_started.add(record.id)
            started.append(record.id)
    return started


def _runner_alive(job_id: str) -> bool:
    try:
        ray.get_actor(f"vsr-job-{job_id}", namespace=RUNNER_NAMESPACE)
        return True
    except ValueError:
        return False


def source_allowed(source: str, roots: list[str]) -> bool:
    """A path or URI the server may read: under one of ``roots``, with no way out of it."""
    from vsr_core import storage

    if storage.is_uri(source):
        if ".." in source.split("/"):
            return False
        return any(source.startswith(root.rstrip("/") + "/") for root in roots if storage.is_uri(root))
    try:
        path = Path(source).expanduser().resolve(strict=True)
    except (OSError, RuntimeError):
        return False
    return any(path.is_relative_to(Path(root).expanduser().resolve()) for root in roots if not storage.is_uri(root))
