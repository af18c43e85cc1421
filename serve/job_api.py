"""What the deployment's job endpoints do: take a video, start its job (``serve.jobs``),
report progress, stream the result, cancel. The routes themselves are one-liners in
``serve.app`` (Serve binds the routes of the deployment class only).

Nothing here runs the model: uploads are streamed to the job folder and probed, and the
job's runner does the rest on other processes.
"""
import asyncio
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import FileResponse, Response
from starlette.background import BackgroundTask
from starlette.datastructures import UploadFile

from serve import jobs
from serve.api import (
    JSON,
    MULTIPART,
    READ_CHUNK,
    VIDEO_TYPES,
    ApiError,
    limited_stream,
    media_type,
    read_body,
    read_form,
    unsupported_type,
)
from serve.model import LoadedModel, model_headers
from serve.settings import ServeSettings
from vsr_core.data.video_io import VIDEO_EXTENSIONS, VideoReadError, probe_video

logger = logging.getLogger("ray.serve")

SUFFIX_BY_TYPE = {"video/quicktime": ".mov", "video/x-matroska": ".mkv", "video/webm": ".webm"}
SYNC_POLL_S = 0.2
MAINTENANCE_INTERVAL_S = 30.0  # how often a replica restarts orphaned jobs and deletes expired ones
_ACCEPTED = f"a video as video/mp4 or application/octet-stream, or {MULTIPART} with a 'video' file"


class JobApi:
    def __init__(self, settings: Callable[[], ServeSettings]):
        self._current_settings = settings  # the replica's settings change on reconfigure
        self._started: set[str] = set()  # jobs this replica has started (see jobs.recover)

    @property
    def _settings(self) -> ServeSettings:
        return self._current_settings()

    @property
    def _store(self) -> jobs.JobStore:
        return jobs.JobStore(self._settings.jobs_dir)

    async def maintain(self) -> None:
        """Forever: restart orphaned jobs, delete expired ones (each replica; idempotent)."""
        while True:
            try:
                store, ttl = self._store, self._settings.job_ttl_s
                await asyncio.to_thread(store.expire, ttl)
                await asyncio.to_thread(jobs.recover, store, self._started)
            except Exception:  # noqa: BLE001 - try again next round
                logger.exception("job maintenance failed")
            await asyncio.sleep(MAINTENANCE_INTERVAL_S)

    def _own_job(self, job_id: str, owner: str) -> jobs.JobRecord:
        try:
            record = self._store.read(job_id)
        except KeyError:
            record = None
        if record is None or record.owner != owner:  # another key's job does not exist for you
            raise ApiError(404, "not_found", f"no job {job_id!r}")
        return record

    async def _receive_video(self, request: Request, folder: Path, free_bytes: int,
                             max_bytes: int) -> tuple[str, str, bool, dict[str, Any]]:
        """The job's video: (source, name shown, uploaded?, encoder and preview options). An upload
        is streamed into ``folder`` (options as query parameters); a JSON {"source": ...} names a
        file under job_source_roots (options as fields of the same object)."""
        settings = self._settings
        kind = media_type(request)
        if kind == JSON:
            try:
                body = json.loads(await read_body(request, 64 * 1024) or b"{}")
            except ValueError:
                raise ApiError(400, "invalid_json", "the body is not valid JSON") from None
            source = body.get("source") if isinstance(body, dict) else None
            if not isinstance(source, str) or not source:
                raise ApiError(400, "missing_source", 'send {"source": "<path or URI>"} or upload the video')
            options = _video_options(body)
            if not jobs.source_allowed(source, settings.job_source_roots):
                raise ApiError(403, "source_not_allowed", "this server does not read videos from there "
                               "(user_config job_source_roots)")
            return source, Path(source).name, False, options
        options = _video_options(dict(request.query_params))
        limit = min(max_bytes, free_bytes)
        status, error = (413, "body_too_large") if limit == max_bytes else (507, "insufficient_storage")
        try:
            if kind in VIDEO_TYPES:  # the raw video as the body; ?filename=NAME names it
                name = Path(request.query_params.get("filename") or "").name or \
                    "upload" + SUFFIX_BY_TYPE.get(kind, ".mp4")
                suffix = Path(name).suffix.lower()
                target = folder / f"input{suffix if suffix in VIDEO_EXTENSIONS else SUFFIX_BY_TYPE.get(kind, '.mp4')}"
                with open(target, "wb") as f:
                    async for chunk in limited_stream(request, limit):
                        f.write(chunk)
            elif kind == MULTIPART:
                form = await read_form(request, limit, max_files=1)
                try:
                    upload = form.get("video")
                    if not isinstance(upload, UploadFile):
                        raise ApiError(400, "missing_video", "expected a file part named 'video'")
                    name = Path(upload.filename or "upload.mp4").name
                    suffix = Path(name).suffix.lower()
                    target = folder / f"input{suffix if suffix in VIDEO_EXTENSIONS else '.mp4'}"
                    with open(target, "wb") as f:
                        while chunk := await upload.read(READ_CHUNK):
                            f.write(chunk)
                finally:
                    await form.close()
            else:
                raise unsupported_type(request, _ACCEPTED)
        except ApiError as exc:
            if exc.status == 413 and exc.error == "body_too_large":
                raise ApiError(status, error, exc.detail if status == 413 else
                               "the server's job storage is full; try again when earlier jobs have expired") from None
            raise
        if target.stat().st_size == 0:
            raise ApiError(400, "empty_body", "the video is empty (0 bytes)")
        return str(target), name, True, options

    async def _create_job(self, request: Request, owner: str, loaded: LoadedModel, max_frames: int | None = None,
                          max_bytes: int | None = None) -> jobs.JobRecord:
        """Receive the video, check it and start its job. ``max_frames`` / ``max_bytes``: limits
        of the synchronous endpoint (default: job_max_upload_bytes, no frame limit)."""
        settings, store = self._settings, self._store
        await asyncio.to_thread(store.expire, settings.job_ttl_s)
        free = settings.jobs_max_bytes - await asyncio.to_thread(store.usage_bytes)
        if free <= 0:
            raise ApiError(507, "insufficient_storage", "the server's job storage is full; try again later")
        job_id = store.new_id()
        folder = store.folder(job_id)
        folder.mkdir(parents=True)
        try:
            source, name, uploaded, video_options = await self._receive_video(
                request, folder, free, max_bytes or settings.job_max_upload_bytes)
            try:
                info = await asyncio.to_thread(probe_video, source)
            except VideoReadError:
                raise ApiError(400, "invalid_video", "the file is corrupt or not a video") from None
            if info.height * info.width > settings.max_pixels_per_frame:
                raise ApiError(413, "frame_too_large", f"frames are {info.width}x{info.height}; the limit is "
                               f"{settings.max_pixels_per_frame} pixels per frame")
            if max_frames is not None and (info.num_frames or 0) > max_frames:
                raise ApiError(413, "too_many_frames", f"the clip has {info.num_frames} frames; the limit here is "
                               f"{max_frames} (use POST /v1/jobs for long videos)")
            preview = video_options["preview"]
            if preview and info.duration and preview[0] >= info.duration:
                raise ApiError(400, "invalid_option", f"preview_start: {preview[0]} s is after the end of the "
                               f"video ({info.duration:.2f} s)")
            options = {"chunk_frames": settings.job_chunk_frames, "workers": settings.job_workers,
                       "cpus_per_worker": settings.job_cpus_per_worker,
                       "gpus_per_worker": settings.job_gpus_per_worker, **video_options}
            record = jobs.JobRecord(job_id, owner, source, name, str(loaded.path),
                                    settings.job_inference_options().to_dict(), options,
                                    frames_total=info.num_frames, uploaded=uploaded)
            store.write(record)
        except BaseException:
            store.delete(job_id)
            raise
        await asyncio.to_thread(jobs.start_runner, str(store.root), job_id)
        self._started.add(job_id)
        return record

    # --- endpoints ---------------------------------------------------------------------------
    async def submit(self, request: Request, owner: str, loaded: LoadedModel) -> dict[str, Any]:
        record = await self._create_job(request, owner, loaded)
        return {**record.public(), "status_url": f"/v1/jobs/{record.id}", "result_url": f"/v1/jobs/{record.id}/result"}

    async def list(self, owner: str) -> dict[str, Any]:
        await asyncio.to_thread(self._store.expire, self._settings.job_ttl_s)
        records = await asyncio.to_thread(self._store.records)
        return {"jobs": [r.public() for r in records if r.owner == owner]}

    async def status(self, job_id: str, owner: str) -> dict[str, Any]:
        return self._own_job(job_id, owner).public()

    async def result(self, job_id: str, owner: str) -> Response:
        record = self._own_job(job_id, owner)
        if record.state != "done":
            raise ApiError(409, "not_ready", f"the job is {record.state}; the result exists once it is done")
        suffix = Path(record.result_name).suffix
        filename = f"{Path(record.source_name).stem or 'video'}_x3{suffix}"
        return FileResponse(self._store.result_path(job_id, record.result_name), media_type=_result_type(suffix),
                            filename=filename)

    async def delete(self, job_id: str, owner: str) -> dict[str, Any]:
        record = self._own_job(job_id, owner)
        store = self._store
        if record.state in jobs.TERMINAL:
            await asyncio.to_thread(store.delete, job_id)
            return {"id": job_id, "state": "deleted"}
        store.cancel(job_id)  # the runner stops its workers within a fraction of a second, then cleans up
        return {"id": job_id, "state": "cancelled"}

    async def upscale_video(self, request: Request, owner: str, loaded: LoadedModel) -> Response:
        """A job (same engine, same workers) that this request waits for; a client that goes
        away cancels it. Clips longer than ``max_video_frames`` belong in /v1/jobs."""
        if media_type(request) == JSON:
            raise unsupported_type(request, _ACCEPTED)
        settings = self._settings
        job_id = (await self._create_job(request, owner, loaded, settings.max_video_frames,
                                         settings.max_body_bytes)).id
        store = self._store
        try:
            while (record := store.read(job_id)) is not None and record.state not in jobs.TERMINAL:
                if await request.is_disconnected():
                    raise asyncio.CancelledError
                await asyncio.sleep(SYNC_POLL_S)
        except asyncio.CancelledError:  # the client went away (or Serve cancelled the request)
            store.cancel(job_id)
            raise
        if record is None or record.state != "done":
            store.delete(job_id)
            detail = record.error if record and record.error else "the video could not be upscaled"
            raise ApiError(400, "invalid_video", detail)
        result = store.result_path(job_id, record.result_name)
        headers = {**model_headers(loaded), "X-VSR-Frames": str(record.frames_total),
                   "X-VSR-FPS": f"{(await asyncio.to_thread(probe_video, result)).fps:g}"}
        return FileResponse(result, media_type=_result_type(result.suffix), headers=headers,
                            background=BackgroundTask(store.delete, job_id))


def _video_options(values: dict[str, Any]) -> dict[str, Any]:
    """Encoder and preview fields (``jobs.video_options``), or a 400 naming the bad one."""
    try:
        return jobs.video_options(values)
    except ValueError as exc:
        raise ApiError(400, "invalid_option", str(exc)) from None


def _result_type(suffix: str) -> str:
    return "video/x-matroska" if suffix.lower() == ".mkv" else "video/mp4"
