"""The HTTP side of the Serve app: the FastAPI object, JSON errors, the catch-all middleware,
request bodies read with a size limit and a pace (``BodyPace``: a body that stalls or trickles
is cut off with 408, so a slow client cannot hold a request slot), and the OpenAPI
descriptions of the raw bodies.

Every error is JSON ``{"error": CODE, "detail": MESSAGE}``. An unexpected exception is
logged with an error id and answered with that id only: no exception text, paths or hosts.
"""
from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import numpy as np
from fastapi import FastAPI, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBearer
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartParser
from starlette.requests import ClientDisconnect

from serve.formats import HTTP_TYPES, NotAcceptable, negotiate
from serve.settings import API_KEY_ENV
from vsr_core.archs import NUM_FRAMES
from vsr_core.image_io import (
    ImageTooLargeError,
    InvalidImageError,
    UnsupportedImageError,
    decode_image,
    load_npy_window,
    stack_window,
)

logger = logging.getLogger("ray.serve")

NPY_TYPES = ("application/octet-stream", "application/x-npy")
VIDEO_TYPES = ("video/mp4", "video/quicktime", "video/x-matroska", "video/webm", "application/octet-stream")
MULTIPART = "multipart/form-data"
JSON = "application/json"
READ_CHUNK = 1 << 20


api = FastAPI(
    title="VSR+++ v2 3x super-resolution",
    version="2.0",
    description="Upscale 5-frame windows (center frame) or whole videos by 3x. "
    'Errors are JSON: {"error": CODE, "detail": MESSAGE}.\n\n'
    "**Authentication.** When the server has API keys (`VSR_API_KEY` or `user_config.api_key_file`), "
    "the /v1 endpoints need the header `Authorization: Bearer <key>` (in this page: *Authorize*); "
    "without it or with a wrong key they answer 401. `/healthz`, `/docs` and `/openapi.json` stay open.",
)
# Declares the bearer scheme in OpenAPI (the Authorize button in /docs); the handlers check the key.
bearer_auth = Security(HTTPBearer(auto_error=False,
                                  description=f"the server's API key (${API_KEY_ENV} or user_config api_key_file)"))


class ApiError(Exception):
    def __init__(self, status: int, error: str, detail: str, headers: dict[str, str] | None = None):
        super().__init__(f"{status} {error}: {detail}")
        self.status, self.error, self.detail, self.headers = status, error, detail, headers


def error_response(status: int, error: str, detail: str, headers=None) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail}, status_code=status, headers=headers)


def _image_error_status(exc: InvalidImageError) -> int:
    if isinstance(exc, ImageTooLargeError):
        return 413
    if isinstance(exc, UnsupportedImageError):
        return 415
    return 400


class CatchAllMiddleware:
    """Last line of defence: an unexpected exception becomes a JSON 500 (503 for out of
    memory) instead of propagating into the replica. Plain ASGI, so it does not re-raise."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:  # noqa: BLE001 - this is the catch-all
            if isinstance(exc, ClientDisconnect):
                status, error, detail = 400, "client_disconnected", "the client closed the connection mid-request"
            elif isinstance(exc, MemoryError):
                status, error, detail = 503, "out_of_memory", "the replica ran out of memory; send smaller frames"
            else:
                error_id = secrets.token_hex(6)
                status, error = 500, "internal_error"
                detail = f"unexpected error (id {error_id}; the server log has the details)"
                logger.exception("unhandled error %s in %s %s", error_id, scope.get("method"), scope.get("path"))
            if not started:
                await error_response(status, error, detail)(scope, receive, send)


def _install_error_handlers(api: FastAPI) -> None:
    api.add_middleware(CatchAllMiddleware)

    @api.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.error, exc.detail, exc.headers)

    @api.exception_handler(InvalidImageError)
    async def _image_error(request: Request, exc: InvalidImageError) -> JSONResponse:
        return error_response(_image_error_status(exc), exc.code, str(exc))

    @api.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        error = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, f"http_{exc.status_code}")
        return error_response(exc.status_code, error, str(exc.detail), getattr(exc, "headers", None))

    @api.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, "invalid_request", str(exc.errors()))


_install_error_handlers(api)


# --- request bodies -------------------------------------------------------------------------
def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def declared_length(request: Request, limit: int) -> int | None:
    """The body's size by Content-Length (None without one): 400 if it is not a number, 413 above ``limit``."""
    declared = request.headers.get("content-length")
    if declared is None:
        return None
    if not declared.strip().isdigit():
        raise ApiError(400, "invalid_content_length", f"Content-Length is not a number: {declared[:40]!r}")
    size = int(declared)
    if size > limit:
        raise ApiError(413, "body_too_large", f"the body is {size} bytes (Content-Length); the limit is {limit} bytes")
    return size


@dataclass(frozen=True)
class BodyPace:
    """How fast a request body must arrive: its first bytes, and every chunk after a pause, within
    ``timeout_s``; and from then on ``min_bytes_per_s`` on average (so by time t after the
    start, at least ``min_bytes_per_s * (t - timeout_s)`` bytes)."""

    timeout_s: float
    min_bytes_per_s: int

    def deadline(self, started: float, received: int) -> float:
        """The monotonic time by which the next chunk must have arrived."""
        return started + self.timeout_s + received / self.min_bytes_per_s


def body_pace(settings) -> BodyPace:
    """The pace a ``ServeSettings`` asks of request bodies."""
    return BodyPace(settings.body_timeout_s, settings.min_body_bytes_per_s)


async def limited_stream(request: Request, limit: int, pace: BodyPace | None = None) -> AsyncIterator[bytes]:
    """The request body chunk by chunk; 413 as soon as more than ``limit`` bytes arrived
    (whatever Content-Length said, and for chunked uploads without one), 408 when it falls
    behind ``pace``."""
    declared_length(request, limit)
    total, started = 0, time.monotonic()
    chunks = request.stream().__aiter__()
    while True:
        try:
            if pace is None:
                chunk = await chunks.__anext__()
            else:
                chunk = await asyncio.wait_for(chunks.__anext__(), pace.deadline(started, total) - time.monotonic())
        except StopAsyncIteration:
            return
        except asyncio.TimeoutError:
            raise ApiError(408, "body_timeout", f"the body arrived too slowly ({total} bytes in "
                           f"{time.monotonic() - started:.0f} s; a pause may last {pace.timeout_s:g} s, and the "
                           f"body must keep up {pace.min_bytes_per_s} bytes/s on average)") from None
        total += len(chunk)
        if total > limit:
            raise ApiError(413, "body_too_large", f"the body exceeds the limit of {limit} bytes")
        if chunk:
            yield chunk


async def read_body(request: Request, limit: int, pace: BodyPace | None = None) -> bytes:
    return b"".join([chunk async for chunk in limited_stream(request, limit, pace)])


class _InMemoryParts(MultiPartParser):
    """Starlette's parser, keeping file parts in memory (the body is at most ``max_body_bytes``
    and is read into memory anyway), never in the system's temporary folder."""

    spool_max_size = 2**62


async def read_form(request: Request, limit: int, max_files: int, pace: BodyPace | None = None):
    parser = _InMemoryParts(request.headers, limited_stream(request, limit, pace), max_files=max_files,
                            max_fields=16)
    try:
        return await parser.parse()
    except ApiError:
        raise
    except Exception as exc:  # MultiPartException, python-multipart parse errors
        raise ApiError(400, "invalid_multipart", f"cannot parse the multipart body: {exc}") from None


def unsupported_type(request: Request, accepted: str) -> ApiError:
    got = request.headers.get("content-type") or "no Content-Type"
    return ApiError(415, "unsupported_media_type", f"got {got}; send {accepted}")


async def window_from(request: Request, max_body_bytes: int, max_pixels: int,
                      pace: BodyPace | None = None) -> np.ndarray:
    """The [5,H,W,3] uint8 window of a /v1/upscale request (multipart PNG/JPEG frames or a
    .npy body), decoded off the event loop; 4xx ApiError / InvalidImageError for bad input."""
    kind = media_type(request)
    if kind == MULTIPART:
        form = await read_form(request, max_body_bytes, max_files=4 * NUM_FRAMES, pace=pace)
        try:
            parts = form.getlist("frames")
            if not parts:
                raise ApiError(400, "missing_frames", f"expected {NUM_FRAMES} file parts named 'frames'; "
                               f"got fields {sorted(set(form.keys()))}")
            if len(parts) != NUM_FRAMES:
                raise ApiError(400, "wrong_frame_count", f"expected {NUM_FRAMES} frames, got {len(parts)}")
            if not all(isinstance(part, UploadFile) for part in parts):
                raise ApiError(400, "invalid_multipart", "each 'frames' part must be a file (with a filename)")
            blobs = [await part.read() for part in parts]
        finally:
            await form.close()

        def decode_window() -> np.ndarray:
            return stack_window([decode_image(blob, max_pixels, f"frame {i} ({parts[i].filename})")
                                 for i, blob in enumerate(blobs)])

        return await asyncio.to_thread(decode_window)
    if kind in NPY_TYPES:
        body = await read_body(request, max_body_bytes, pace)
        return await asyncio.to_thread(load_npy_window, body, max_pixels)
    raise unsupported_type(request, f"{MULTIPART} with {NUM_FRAMES} 'frames' files, or a .npy window as "
                           "application/octet-stream")


def response_type(request: Request) -> str:
    """The media type the 3x frame goes back in (``serve.formats.negotiate``); 406 if none fits."""
    try:
        return negotiate(request.headers.get("accept"))
    except NotAcceptable as exc:
        raise ApiError(406, "not_acceptable", str(exc)) from None


def server_timing(times: list[float], model_s: float) -> str:
    """A ``Server-Timing`` header from the perf_counter readings after reading + decoding the
    window, after its batch and after encoding: where a request's time went on the replica
    ("batch" includes waiting for the batch to fill and the model thread; "model" is the pass)."""
    names = ("decode", "batch", "encode")
    parts = [f"{name};dur={1e3 * (end - start):.1f}" for name, start, end in zip(names, times, times[1:])]
    return ", ".join(parts + [f"model;dur={1e3 * model_s:.1f}"])


# --- OpenAPI descriptions of the raw bodies (the handlers parse them themselves) ---------
def _error(text: str, example: str = "...") -> dict:
    return {"description": text, "content": {JSON: {"example": {"error": example, "detail": "..."}}}}


ERRORS = {
    400: _error("bad input (wrong frame count, mismatched sizes, not an image or video, truncated file ...)"),
    413: _error("body, frame or clip too large"),
    406: _error("no acceptable response format (Accept)", "not_acceptable"),
    408: _error("the body arrived too slowly", "body_timeout"),
    415: _error("unsupported Content-Type or image format"),
    429: _error("too many uploads, downloads or jobs at once (Retry-After says when to try again)"),
    503: _error("no model loaded"),
}
AUTH_ERROR = {401: _error("missing or wrong API key (when the server has one)", "unauthorized"),
              403: _error("a Host or browser Origin this server does not answer to", "origin_not_allowed")}
JOB_ERRORS = {404: _error("no such job (or another API key's)", "not_found"),
              507: _error("the server's job storage is full", "insufficient_storage")}
_BINARY = {"type": "string", "format": "binary"}
FRAME_TYPES = {media: {"schema": _BINARY} for media in HTTP_TYPES}
WINDOW_BODY = {"requestBody": {"required": True, "content": {
    MULTIPART: {"schema": {"type": "object", "required": ["frames"], "properties": {"frames": {
        "type": "array", "items": _BINARY, "minItems": NUM_FRAMES, "maxItems": NUM_FRAMES,
        "description": "5 PNG/JPEG frames of equal size, in temporal order"}}}},
    "application/octet-stream": {"schema": {**_BINARY, "description": ".npy array [5,H,W,3] uint8"}},
}}}
VIDEO_BODY = {"requestBody": {"required": True, "content": {
    "video/mp4": {"schema": _BINARY},
    "application/octet-stream": {"schema": _BINARY},
    MULTIPART: {"schema": {"type": "object", "required": ["video"], "properties": {"video": _BINARY}}},
}}}
JOB_BODY = {"requestBody": {"required": True, "content": {
    **VIDEO_BODY["requestBody"]["content"],
    JSON: {"schema": {"type": "object", "required": ["source"], "properties": {"source": {
        "type": "string", "description": "a path or URI under one of the server's job_source_roots"}}}},
}}}
