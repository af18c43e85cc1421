"""What the deployment's job endpoints do: admit a video, start its job (``serve.jobs``), report
progress, stream the result, cancel and delete. The routes themselves are one-liners in
``serve.app`` (Serve binds the routes of the deployment class only).

Nothing here runs the model or opens a video: uploads are streamed to the job folder
(``serve.uploads``), probed in a child process with memory and time limits
(``vsr_core.data.video_probe``), and the job's runner does the rest on other processes.

Admission, in this order, before the work it guards: the options (400); a transfer slot of the
key (429); the key's and the server's active jobs (429 ``too_many_jobs``) and the disk for the
upload (507), reserved under the job store's lock so that concurrent uploads cannot overshoot
``jobs_max_bytes``; the upload (408, 413); the probe (400, 413); the disk for the result and
the chunk parts (507), reserved too.
"""
import asyncio
import logging
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import FileResponse, Response

from serve import jobs
from serve.admission import Admission
from serve.api import (
    JSON,
    MULTIPART,
    VIDEO_TYPES,
    ApiError,
    body_pace,
    declared_length,
    media_type,
    read_body,
    unsupported_type,
)
from serve.model import LoadedModel, model_headers
from serve.redact import public_text
from serve.schemas import MAX_JOB_JSON_BYTES, InputError, JobRequest, parse_json, validate
from serve.settings import ServeSettings
from serve.uploads import ACCEPTED, receive_video
from vsr_core.data.video_io import VideoReadError, VideoTooLargeError
from vsr_core.data.video_probe import ProbedVideo, ProbeLimitError, ProbeLimits, TooManyFramesError, probe_untrusted

logger = logging.getLogger("ray.serve")

SYNC_POLL_S = 0.2
MAINTENANCE_INTERVAL_S = 5.0  # how often a replica starts queued jobs, restarts orphaned ones, expires old ones
UPLOAD_STALE_S = 120.0  # an upload folder unchanged this long lost its replica
RESULT_BITS_PER_PIXEL = 0.25  # the result's and the chunk parts' estimated size (x264 at CRF 18-23: ~0.1)
JOB_OVERHEAD_BYTES = 1024**2  # the job's own files, headers, audio of short clips
RETRY_JOBS_S = 30


class JobApi:
    def __init__(self, settings: Callable[[], ServeSettings], admission: Admission):
        self._current_settings = settings  # the replica's settings change on reconfigure
        self._admission = admission
        self._replica = secrets.token_hex(8)  # its heartbeat file's name

    @property
    def _settings(self) -> ServeSettings:
        return self._current_settings()

    @property
    def _store(self) -> jobs.JobStore:
        return jobs.JobStore(self._settings.jobs_dir)

    # --- the jobs of all replicas -------------------------------------------------------------------
    async def maintain(self) -> None:
        """Forever (each replica; idempotent): say this replica is alive, remove expired jobs and
        dead uploads, restart jobs whose runner died, start queued jobs."""
        while True:
            try:
                await asyncio.to_thread(self._maintenance_round)
            except Exception:  # noqa: BLE001 - try again next round
                logger.exception("job maintenance failed")
            # the heartbeat comes well within the runners' orphan timeout
            await asyncio.sleep(min(MAINTENANCE_INTERVAL_S, self._settings.job_orphan_timeout_s / 4))

    def _maintenance_round(self) -> None:
        settings, store = self._settings, self._store
        store.heartbeat(self._replica)
        with store.locked():
            store.expire(settings.job_ttl_s, UPLOAD_STALE_S)
            jobs.recover(store, settings.job_orphan_timeout_s)
            jobs.start_queued(store, settings.max_running_jobs, settings.job_orphan_timeout_s)

    def _schedule(self) -> None:
        settings, store = self._settings, self._store
        with store.locked():
            jobs.start_queued(store, settings.max_running_jobs, settings.job_orphan_timeout_s)

    def _own_job(self, job_id: str, owner: str, deleted: bool = False) -> jobs.JobRecord:
        try:
            record = self._store.read(job_id)
        except KeyError:
            record = None
        if record is None or record.owner != owner or (record.state == "deleted" and not deleted):
            raise ApiError(404, "not_found", f"no job {job_id[:40]!r}")  # another key's job does not exist for you
        return record

    # --- admission ----------------------------------------------------------------------------------
    def _admit(self, owner: str, job_id: str, upload_bytes: int | None, limit: int) -> int:
        """Count the job against the key's and the server's jobs, reserve its upload (the
        declared size, else what the limit and the free disk allow) and create its folder; the
        bytes the upload may have."""
        settings, store = self._settings, self._store
        with store.locked():
            store.expire(settings.job_ttl_s, UPLOAD_STALE_S)  # what has expired frees its disk now
            owners = store.active_owners()  # uploads in progress count too
            if owners.count(owner) >= settings.max_jobs_per_key or len(owners) >= settings.max_jobs:
                whose = "your key has" if owners.count(owner) >= settings.max_jobs_per_key else "this server has"
                raise ApiError(429, "too_many_jobs", f"{whose} too many queued and running jobs (at most "
                               f"{settings.max_jobs_per_key} per key, {settings.max_jobs} in all); try again when one "
                               "has ended", headers={"Retry-After": str(RETRY_JOBS_S)})
            free = settings.jobs_max_bytes - store.usage_bytes()
            reserve = min(limit, free) if upload_bytes is None else upload_bytes
            if free <= 0 or reserve > free:
                raise _storage_full(reserve, free)
            store.create(job_id, reserve, owner)
        return reserve

    def _reserve(self, job_id: str, total: int) -> None:
        """The job may grow to ``total`` bytes in all (507 if the disk does not have them)."""
        settings, store = self._settings, self._store
        with store.locked():
            store.reserve(job_id, 0)
            free = settings.jobs_max_bytes - store.usage_bytes() + store.held_bytes(job_id)
            if total > free:
                raise _storage_full(total, free)
            store.reserve(job_id, total)

    async def _video_options(self, request: Request) -> tuple[dict[str, Any], JobRequest | None]:
        """The job's options (query parameters of an upload, fields of a JSON body) and the JSON
        body's request, checked before anything else (400 naming the field)."""
        try:
            if media_type(request) == JSON:
                body = parse_json(await read_body(request, MAX_JOB_JSON_BYTES, body_pace(self._settings)),
                                  MAX_JOB_JSON_BYTES)
                job = validate(JobRequest, body)
                return job.checked(), job
            params = dict(request.query_params)
            params.pop("filename", None)
            return jobs.video_options(params), None
        except InputError as exc:
            raise ApiError(400, "invalid_option" if exc.field else "invalid_json", str(exc)) from None

    async def _create_job(self, request: Request, owner: str, loaded: LoadedModel,
                          sync: bool = False) -> tuple[jobs.JobRecord, ProbedVideo]:
        """Admit, receive and probe the video and queue its job (see the module docstring).
        ``sync``: the limits of /v1/upscale/video (max_body_bytes, max_video_frames)."""
        settings, store = self._settings, self._store
        if media_type(request) not in (JSON, MULTIPART, *VIDEO_TYPES):
            raise unsupported_type(request, ACCEPTED)
        options, json_job = await self._video_options(request)
        limit = settings.max_body_bytes if sync else settings.job_max_upload_bytes
        declared = declared_length(request, limit) if json_job is None else 0
        job_id = store.new_id()
        reserve = await asyncio.to_thread(self._admit, owner, job_id, declared, limit)
        try:
            if json_job is not None:
                source, name, uploaded = self._named_source(json_job.source)
            else:
                source, name = await self._upload(request, store.folder(job_id), reserve, limit)
                uploaded = True
            probe = await self._probe(source, name, settings.max_video_frames if sync else None)
            preview = options["preview"]
            if preview and probe.duration and preview[0] >= probe.duration:
                raise ApiError(400, "invalid_option", f"preview_start: {preview[0]} s is after the end of the "
                               f"video ({probe.duration:.2f} s)")
            upload_bytes = Path(source).stat().st_size if uploaded else 0
            await asyncio.to_thread(self._reserve, job_id, upload_bytes + _estimated_bytes(probe, preview))
            record = jobs.JobRecord(
                job_id, owner, str(source), name, str(loaded.path), settings.job_inference_options().to_dict(),
                {"chunk_frames": settings.job_chunk_frames, "workers": settings.job_workers,
                 "cpus_per_worker": settings.job_cpus_per_worker, "gpus_per_worker": settings.job_gpus_per_worker,
                 **options}, frames_total=probe.frames, uploaded=uploaded)
            store.write(record)
        except BaseException:
            store.purge(job_id)
            raise
        await asyncio.to_thread(self._schedule)
        return record, probe

    def _named_source(self, source: str) -> tuple[str, str, bool]:
        if not jobs.source_allowed(source, self._settings.job_source_roots):
            raise ApiError(403, "source_not_allowed", "this server does not read videos from there "
                           "(user_config job_source_roots)")
        return source, Path(source).name, False

    async def _upload(self, request: Request, folder: Path, reserve: int, limit: int) -> tuple[Path, str]:
        try:
            return await receive_video(request, folder, reserve, body_pace(self._settings))
        except ApiError as exc:
            if exc.error == "body_too_large" and reserve < limit:  # the disk, not the limit, ran out
                raise _storage_full(reserve + 1, reserve) from None
            raise

    async def _probe(self, source: str | Path, name: str, max_frames: int | None) -> ProbedVideo:
        settings = self._settings
        limits = ProbeLimits(settings.max_pixels_per_frame, max_frames)
        try:
            return await asyncio.to_thread(probe_untrusted, str(source), name, limits)
        except VideoTooLargeError as exc:
            raise ApiError(413, "frame_too_large", str(exc)) from None
        except TooManyFramesError:
            raise ApiError(413, "too_many_frames", f"the clip has more than {max_frames} frames, the limit here "
                           "(use POST /v1/jobs for long videos)") from None
        except ProbeLimitError as exc:
            raise ApiError(400, "invalid_video", f"the video is too costly to open ({public_text(str(exc))})") from None
        except VideoReadError as exc:
            logger.info("refused upload %s: %s", name, exc)
            detail = f"the file is corrupt or not a video ({public_text(str(exc))})"
            raise ApiError(400, "invalid_video", detail) from None

    # --- endpoints -------------------------------------------------------------------------------
    async def submit(self, request: Request, owner: str, loaded: LoadedModel) -> dict[str, Any]:
        with self._admission.hold("transfers", owner):
            record, _ = await self._create_job(request, owner, loaded)
        return {**record.public(), "status_url": f"/v1/jobs/{record.id}", "result_url": f"/v1/jobs/{record.id}/result"}

    async def list(self, owner: str) -> dict[str, Any]:
        await asyncio.to_thread(self._store.expire, self._settings.job_ttl_s, UPLOAD_STALE_S)
        records = await asyncio.to_thread(self._store.records)
        return {"jobs": [r.public() for r in records if r.owner == owner and r.state != "deleted"]}

    async def status(self, job_id: str, owner: str) -> dict[str, Any]:
        return self._own_job(job_id, owner).public()

    async def result(self, job_id: str, owner: str) -> Response:
        record = self._own_job(job_id, owner)
        if record.state != "done":
            raise ApiError(409, "not_ready", f"the job is {record.state}; the result exists once it is done")
        suffix = Path(record.result_name).suffix
        filename = f"{Path(record.source_name).stem or 'video'}_x3{suffix}"
        release = self._admission.acquire("transfers", owner)  # given back when the response ends
        return ReleasingFileResponse(self._store.result_path(job_id, record.result_name), release,
                                     media_type=_result_type(suffix), filename=filename)

    async def delete(self, job_id: str, owner: str) -> dict[str, Any]:
        """Idempotent: a finished job is deleted (a tombstone), an unfinished one cancelled (its
        state is "cancelling" until its runner has stopped its workers, then "cancelled")."""
        record = self._own_job(job_id, owner, deleted=True)
        store = self._store
        if record.state in (*jobs.TERMINAL, "deleted"):
            await asyncio.to_thread(store.tombstone, job_id)
            return {"id": job_id, "state": "deleted"}
        state = await asyncio.to_thread(self._cancel, record)
        return {"id": job_id, "state": state}

    def _cancel(self, record: jobs.JobRecord) -> str:
        store = self._store
        with store.locked():  # not while the scheduler starts it
            store.cancel(record.id)
            if record.state == "queued" and not store.starts(record.id):  # no runner will ever see it
                jobs.end_job(store, record, "cancelled")
                return "cancelled"
        return "cancelling"

    async def upscale_video(self, request: Request, owner: str, loaded: LoadedModel) -> Response:
        """A job (same engine, same workers) that this request waits for; a client that goes
        away cancels it. Clips longer than ``max_video_frames`` belong in /v1/jobs."""
        if media_type(request) == JSON:
            raise unsupported_type(request, ACCEPTED)
        release = self._admission.acquire("transfers", owner)
        try:
            record, probe = await self._create_job(request, owner, loaded, sync=True)
            record = await self._wait(request, record.id)
        except BaseException:
            release()
            raise
        store = self._store
        if record is None or record.state != "done":
            release()
            if record is not None:
                await asyncio.to_thread(store.purge, record.id)
            raise _job_error(record)
        result = store.result_path(record.id, record.result_name)
        headers = {**model_headers(loaded), "X-VSR-Frames": str(record.frames_total), "X-VSR-FPS": f"{probe.fps:g}"}

        def done() -> None:
            release()
            store.purge(record.id)

        return ReleasingFileResponse(result, done, media_type=_result_type(result.suffix), headers=headers)

    async def _wait(self, request: Request, job_id: str) -> jobs.JobRecord | None:
        store = self._store
        try:
            while (record := store.read(job_id)) is not None and record.state not in jobs.TERMINAL:
                if await request.is_disconnected():
                    raise asyncio.CancelledError
                await asyncio.sleep(SYNC_POLL_S)
        except asyncio.CancelledError:  # the client went away (or Serve cancelled the request)
            record = store.read(job_id)
            if record is not None and record.state in jobs.ACTIVE:  # in a thread: _cancel may wait for the lock
                asyncio.get_running_loop().run_in_executor(None, self._cancel, record)
            raise
        return record


class ReleasingFileResponse(FileResponse):
    """A file response that calls ``on_end`` when it is over, however it ends (a client that stops
    reading, a disconnect): the transfer slot it holds is given back."""

    def __init__(self, path, on_end: Callable[[], None], **kwargs):
        super().__init__(path, **kwargs)
        self._on_end = on_end

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_end()


SYNC_ERROR_STATUS = {"invalid_video": 400, "invalid_option": 400, "cancelled": 409, "out_of_memory": 503,
                     "worker_lost": 503, "runner_lost": 503}


def _job_error(record: jobs.JobRecord | None) -> ApiError:
    """The answer of /v1/upscale/video for a job that did not end "done" (its public error)."""
    if record is None or record.state == "cancelled":
        return ApiError(409, "cancelled", "the clip's job was cancelled")
    code, _, detail = (record.error or "internal_error: the video could not be upscaled").partition(": ")
    return ApiError(SYNC_ERROR_STATUS.get(code, 500), code, detail)


def _estimated_bytes(probe: ProbedVideo, preview: list[float] | None) -> int:
    """The result and the chunk parts it is joined from (both exist at once), at
    ``RESULT_BITS_PER_PIXEL`` of the 3x frames."""
    frames = probe.frames if not preview else min(probe.frames, int(preview[1] * probe.fps) + 2)
    return int(2 * frames * 9 * probe.width * probe.height * RESULT_BITS_PER_PIXEL / 8) + JOB_OVERHEAD_BYTES


def _storage_full(needed: int, free: int) -> ApiError:
    return ApiError(507, "insufficient_storage", f"the server's job storage is full: this job needs about "
                    f"{needed / 1024**2:.0f} MiB, {max(0, free) / 1024**2:.0f} MiB are free; try again when earlier "
                    "jobs have expired")


def _result_type(suffix: str) -> str:
    return "video/x-matroska" if suffix.lower() == ".mkv" else "video/mp4"
