"""Video jobs: whole videos of any length, upscaled by the video engine on Ray chunk workers,
with progress, cancel and results that outlive the replica that took the upload.

A job is a folder under ``jobs_dir`` (``serve.job_store``: its record, markers and states).
The replica writes the upload and reads the folder; the work is done by a ``JobRunner``, a
detached Ray actor per job that runs ``vsr_core.video.pipeline.upscale_file`` with its own pool
of chunk workers. So window requests never wait for job chunks (other processes, their own
CPUs), and a replica restart does not touch a running job.

- **Starting.** A job is queued when its upload is accepted; ``start_queued`` starts at most
  ``max_running_jobs`` at once, taking turns between keys (the key whose last start is oldest
  goes first, then its oldest job), and every start is recorded in the job's folder.
- **Recovery.** A job whose runner died (a lost node, a killed process) is started again by any
  replica's maintenance and continues from its finished chunks; after ``MAX_RUNNER_STARTS``
  starts it fails, saying so.
- **Cancel.** DELETE writes a marker the runner checks four times a second (between chunk
  results); it then kills its workers and records "cancelled". A deleted job's runner stops
  the same way and never writes its folder back.
- **Orphans.** A runner that hears no replica's heartbeat for ``job_orphan_timeout_s`` (the app
  was deleted or shut down) stops its workers and puts its job back in the queue, with its
  finished chunks: the app resumes it when it is back (docs/reliability.md).
- **Errors.** A job's error is public: "code: message" for bad input (``VideoReadError`` ...,
  also when raised in a chunk worker: Ray's wrapper is unwrapped), else an error id; no path,
  pid, host or traceback (``serve.redact``). The runner's log keeps the details under that id.
"""
from __future__ import annotations

import logging
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import ray

from serve.job_store import (  # noqa: F401 - re-exported: the job API's names
    ACTIVE,
    CANCEL_MARKER,
    JOB_FILE,
    RESULT_NAME,
    TERMINAL,
    JobGone,
    JobRecord,
    JobStore,
)
from serve.redact import error_id, public_text

logger = logging.getLogger("ray.serve")

RUNNER_NAMESPACE = "vsr-jobs"
PROGRESS_WRITE_S = 0.5
MAX_RUNNER_STARTS = 4  # the first start and 3 restarts after its runner died
ORPHAN_CHECK_S = 2.0  # how often a runner looks for the replicas' heartbeats
CALL_LOST_S = 60.0  # a live runner that has not taken up its started job by then never got the call


def video_options(values: dict[str, Any]) -> dict[str, Any]:
    """The encoder and preview fields of a job request (query parameters, all text, or JSON
    fields), checked (``serve.schemas.JobOptions``): {"encoder": {codec, crf, preset, pix_fmt},
    "preview": [start, duration] or None}. Raises ``InputError`` (a ValueError) naming the field."""
    from serve.schemas import JobOptions, validate

    strings = all(isinstance(value, str) for value in values.values())
    return validate(JobOptions, values, strings=strings).checked()


# --- the runner ---------------------------------------------------------------------------------
class _Orphaned(Exception):
    """No replica is alive: the job goes back to the queue."""


class _Heartbeats:
    """Whether any replica was alive within ``timeout_s`` (checked every ``ORPHAN_CHECK_S``)."""

    def __init__(self, store: JobStore, timeout_s: float):
        self.store, self.timeout_s = store, timeout_s
        self.since = time.time()  # a runner gives the replicas the whole timeout from its start
        self.checked = 0.0
        self.orphaned = False

    def lost(self) -> bool:
        now = time.time()
        if not self.orphaned and now - self.checked >= ORPHAN_CHECK_S:
            self.checked = now
            last = max(self.since, self.store.last_heartbeat() or 0.0)
            self.orphaned = now - last > self.timeout_s
        return self.orphaned


@ray.remote(num_cpus=0, max_restarts=0)
class JobRunner:
    """Runs one job to its end (coordinating only: the chunk workers do the work), then exits.
    Not restarted by Ray: a replica's ``recover`` starts a new one (counted)."""

    def run(self, jobs_dir: str, job_id: str, orphan_timeout_s: float) -> None:
        try:
            _run(JobStore(jobs_dir), job_id, orphan_timeout_s)
        except JobGone:
            logger.info("job %s was deleted; its runner stops", job_id)
        ray.actor.exit_actor()  # the job has ended: free the process (a detached actor lives until it exits)


def _run(store: JobStore, job_id: str, orphan_timeout_s: float) -> None:
    record = store.read(job_id)
    if record is None or record.state in (*TERMINAL, "deleted"):
        return
    if record.state == "cancelling":  # cancelled before it ran
        end_job(store, record, "cancelled")
        return
    record.state = "running"
    store.write(record)
    heartbeats = _Heartbeats(store, orphan_timeout_s)
    try:
        result = _upscale(store, record, lambda: store.is_cancelled(job_id) or heartbeats.lost())
    except Exception as exc:  # noqa: BLE001 - every ending is recorded
        if store.is_cancelled(job_id):
            end_job(store, record, "cancelled")
        elif heartbeats.lost():
            _park(store, record)
        else:
            record.error = public_error(exc, f"job {job_id}")
            end_job(store, record, "failed")
        return
    record.nodes = len(result.nodes)
    record.frames_done = record.frames_total = result.frames
    record.result_name, record.encoder = Path(result.output).name, result.encoder
    record.projection = asdict(result.projection) if result.projection else None
    record.result_bytes = store.result_path(job_id, record.result_name).stat().st_size
    record.eta_seconds = 0.0
    end_job(store, record, "done")


def end_job(store: JobStore, record: JobRecord, state: str) -> None:
    """Record the job's end (its runner's last write; the replica's for a job that never started)."""
    record.state, record.finished_at = state, time.time()
    if state == "cancelled":  # nobody will resume it
        shutil.rmtree(store.work_folder(record.id), ignore_errors=True)
    if record.uploaded and state != "failed":  # a failed job keeps its input for a retry
        Path(record.source).unlink(missing_ok=True)
    store.write(record)


def _park(store: JobStore, record: JobRecord) -> None:
    logger.warning("job %s: no replica has been alive for a while; back to the queue", record.id)
    record.state = "queued"
    store.write(record)
    store.unmark_started(record.id)


def _upscale(store: JobStore, record: JobRecord, should_stop):
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
                        should_stop=should_stop, chunk_frames=options["chunk_frames"],
                        work_folder=store.work_folder(record.id), resume=True,
                        encoder=EncoderSettings(**options["encoder"]), preview=tuple(preview) if preview else None)


# --- errors ----------------------------------------------------------------------------------------
def _worker_lost() -> tuple[type, ...]:
    from ray import exceptions

    return (exceptions.RayActorError, exceptions.WorkerCrashedError, exceptions.NodeDiedError,
            exceptions.ObjectLostError, exceptions.OwnerDiedError, exceptions.OutOfMemoryError,
            exceptions.ActorUnschedulableError, exceptions.TaskUnschedulableError)


def unwrap(exc: BaseException) -> BaseException:
    """The exception a Ray task raised, out of Ray's wrapper (whose text holds pid, ip and actor id)."""
    from ray.exceptions import RayTaskError

    while isinstance(exc, RayTaskError) and exc.cause is not None and exc.cause is not exc:
        exc = exc.cause
    return exc


def public_error(exc: BaseException, where: str) -> str:
    """What a job record (or a response) may say about ``exc``: "code: message" for errors that
    describe the input, else the code and an error id; logged in full with that id."""
    from vsr_core.data.video_color import UnsupportedColorError
    from vsr_core.data.video_encoder import EncoderError
    from vsr_core.data.video_io import VideoReadError

    cause, ident = unwrap(exc), error_id()
    logger.error("%s failed (error id %s)", where, ident, exc_info=exc)
    if isinstance(cause, (VideoReadError, UnsupportedColorError)):
        return "invalid_video: " + public_text(str(cause))
    if isinstance(cause, EncoderError):
        return "invalid_option: " + public_text(str(cause))
    if isinstance(cause, MemoryError):
        return f"out_of_memory: a frame needed more memory than the workers have (error id {ident})"
    if isinstance(cause, _worker_lost()):
        return f"worker_lost: a chunk worker died and could not be restarted (error id {ident})"
    return f"internal_error: the job failed (error id {ident}; the server log has the details)"


# --- starting and recovering runners -----------------------------------------------------------------
def start_runner(jobs_dir: str, job_id: str, orphan_timeout_s: float) -> None:
    """Start the job's runner (one per job: an existing one is reused)."""
    runner = JobRunner.options(name=f"vsr-job-{job_id}", namespace=RUNNER_NAMESPACE, lifetime="detached",
                               get_if_exists=True).remote()
    runner.run.remote(jobs_dir, job_id, orphan_timeout_s)


def start_queued(store: JobStore, max_running: int, orphan_timeout_s: float) -> list[str]:
    """Start queued jobs while fewer than ``max_running`` have a runner, taking turns between
    keys (the key whose last start is oldest first, then its oldest job). Take ``store.locked()``."""
    records = store.records()
    starts = {r.id: store.starts(r.id) for r in records}
    waiting = [r for r in records if r.state == "queued" and not starts[r.id]]
    free = max_running - sum(1 for r in records if r.state in ACTIVE and starts[r.id])
    last_start: dict[str, float] = {}
    for record in records:
        last_start[record.owner] = max([last_start.get(record.owner, 0.0), *starts[record.id]])
    started = []
    while waiting and free > 0:
        record = min(waiting, key=lambda r: (last_start.get(r.owner, 0.0), r.created_at))
        waiting.remove(record)
        store.mark_started(record.id)
        start_runner(str(store.root), record.id, orphan_timeout_s)
        last_start[record.owner] = time.time()
        started.append(record.id)
        free -= 1
    return started


def recover(store: JobStore, orphan_timeout_s: float) -> list[str]:
    """Start a new runner for every started, unfinished job whose runner is gone; a job whose
    runner has been started ``MAX_RUNNER_STARTS`` times fails instead. Take ``store.locked()``."""
    restarted = []
    for record in store.records():
        starts = store.starts(record.id)
        if record.state not in ACTIVE or not starts:
            continue
        if _runner_alive(record.id):
            if record.state == "queued" and time.time() - starts[-1] > CALL_LOST_S:
                start_runner(str(store.root), record.id, orphan_timeout_s)  # its run call never arrived
            continue
        if len(starts) >= MAX_RUNNER_STARTS:
            record.error = (f"runner_lost: the job's runner stopped {len(starts)} times before the job ended "
                            "(a lost node, or out of memory); its finished chunks are kept")
            record.state, record.finished_at = "failed", time.time()
            store.write(record)
            continue
        store.mark_started(record.id)
        start_runner(str(store.root), record.id, orphan_timeout_s)
        restarted.append(record.id)
    return restarted


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
