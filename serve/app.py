"""Ray Serve app: 3x super-resolution over HTTP (FastAPI ingress).

Endpoints (all errors are JSON ``{"error": CODE, "detail": MESSAGE}``)::

    POST /v1/upscale        5 frames (multipart files "frames", PNG/JPEG, temporal order)
                            or one .npy [5,H,W,3] uint8 (Content-Type: application/octet-stream)
                            -> the 3x center frame, image/png
    POST /v1/upscale/video  an mp4 clip as the body (video/mp4 or application/octet-stream)
                            or multipart field "video" -> the 3x clip, video/mp4 (same fps, frame count)
    GET  /v1/model          checkpoint, step, preset, scale, metrics (best.json), device, limits
    GET  /healthz           200 when a model is loaded
    GET  /docs              OpenAPI UI

With an API key configured ($VSR_API_KEY in the replica, or user_config ``api_key_file``)
the /v1 endpoints need ``Authorization: Bearer <key>`` (else 401); /healthz and /docs stay open.

The model comes from ``user_config`` (see ``ServeSettings``); ``reconfigure`` hot-swaps it:
the new checkpoint is loaded completely (off the event loop) and then one reference is
replaced, so requests already running finish on the old model. Inference goes through
``vsr_core.inference.Upscaler`` only. Concurrent ``/v1/upscale`` windows are batched with
``@serve.batch``; windows of the same size are stacked into one forward pass.

Run it:  ``serve run serve/config.yaml``  |  ``python serve/app.py --checkpoint runs/demo``
         ``serve run serve.app:build_app checkpoint=runs/demo``
Importing this module starts nothing (no Ray, no model).
"""
# No `from __future__ import annotations`: Serve rebuilds the FastAPI routes of the class
# and then needs real (not string) annotations such as `request: Request`.
import asyncio
import hmac
import io
import json
import logging
import math
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fastapi import FastAPI, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPBearer
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from ray import serve as ray_serve  # the top-level folder is also called `serve`
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartParser
from starlette.requests import ClientDisconnect

from vsr_core.archs import NUM_FRAMES, SCALE, count_parameters
from vsr_core.checkpoint import BEST_INFO_NAME, resolve_checkpoint_path
from vsr_core.frames import to_tensor, to_uint8
from vsr_core.data.video_io import FrameWriter, VideoReadError, iter_frames, probe_video
from vsr_core.image_io import (
    ImageTooLargeError,
    InvalidImageError,
    UnsupportedImageError,
    decode_image,
    load_npy_window,
    stack_window,
)
from vsr_core.inference import Upscaler

logger = logging.getLogger("ray.serve")

DEPLOYMENT_NAME = "VSRUpscaler"
NPY_TYPES = ("application/octet-stream", "application/x-npy")
VIDEO_TYPES = ("video/mp4", "application/octet-stream")
MULTIPART = "multipart/form-data"
API_KEY_ENV = "VSR_API_KEY"
_CHUNK = 1 << 20


# --- settings (user_config) -------------------------------------------------------------
class ServeSettings(BaseModel):
    """The deployment's ``user_config``. Changing it in a config file (``serve deploy``)
    reconfigures running replicas in place; a changed checkpoint is hot-swapped."""

    model_config = ConfigDict(extra="forbid")

    checkpoint: str | None = Field(None, description="a .pth file, a training run folder, or a Tune best/ folder")
    device: str = Field("auto", description="'auto' (cuda if available), 'cpu', 'cuda', 'cuda:1' ...")
    revision: str | None = Field(None, description="free-form; change it to reload a checkpoint overwritten in place")
    batch_size: int = Field(4, ge=1, description="windows per forward pass in /v1/upscale/video")
    tile: int = Field(0, ge=0, description="tile size in LR pixels for large frames (0 = no tiling)")
    tile_overlap: int = Field(32, ge=0)
    max_batch_size: int = Field(8, ge=1, description="@serve.batch: max windows batched from concurrent requests")
    batch_wait_timeout_s: float = Field(0.01, ge=0, description="@serve.batch: max wait to fill a batch")
    max_batch_pixels: int = Field(
        1280 * 720, ge=1, description="most LR pixels (windows x H x W) per forward pass; bigger batches are split "
        "(bounds memory; one window always runs, however large)")
    max_body_bytes: int = Field(64 * 1024**2, ge=1, description="largest accepted request body (413 above)")
    max_pixels_per_frame: int = Field(1280 * 720, ge=1, description="largest accepted LR frame, H*W (413 above)")
    max_video_frames: int = Field(300, ge=1, description="longest accepted clip for /v1/upscale/video (413 above)")
    num_threads: int | None = Field(None, ge=1, description="torch threads; default: the replica's num_cpus")
    api_key_file: str | None = Field(
        None, description=f"file holding the API key clients must send as a bearer token; default: ${API_KEY_ENV} "
        "in the replica's environment; neither: no authentication")

    def limits(self) -> dict[str, int]:
        return {
            "max_body_bytes": self.max_body_bytes,
            "max_pixels_per_frame": self.max_pixels_per_frame,
            "max_video_frames": self.max_video_frames,
        }


def load_api_key(settings: ServeSettings) -> str | None:
    """The key clients must send: the contents of ``api_key_file`` (stripped), else
    ``$VSR_API_KEY``, else None (no authentication)."""
    if settings.api_key_file:
        try:
            key = Path(settings.api_key_file).expanduser().read_text().strip()
        except OSError as exc:
            raise ValueError(f"cannot read api_key_file {settings.api_key_file}: {exc.strerror or exc}") from None
        if not key:
            raise ValueError(f"api_key_file {settings.api_key_file} is empty")
        return key
    return os.environ.get(API_KEY_ENV, "").strip() or None


def is_authorized(authorization: str | None, api_key: str | None) -> bool:
    """``Authorization: Bearer <api_key>``, compared in constant time; anything goes without a key."""
    if api_key is None:
        return True
    scheme, _, token = (authorization or "").strip().partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), api_key.encode())


def _settings_from(config: dict[str, Any] | None) -> ServeSettings:
    try:
        return ServeSettings.model_validate(dict(config or {}))
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'user_config'}: {e['msg']}" for e in exc.errors())
        raise ValueError(f"invalid user_config: {problems}") from None


# --- errors ---------------------------------------------------------------------------
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
                status, error = 500, "internal_error"
                detail = f"unexpected {type(exc).__name__} while handling {scope.get('path')}: {exc}"
                logger.exception("unhandled error in %s %s", scope.get("method"), scope.get("path"))
            if not started:
                await error_response(status, error, detail)(scope, receive, send)


api = FastAPI(
    title="VSR+++ v2 3x super-resolution",
    version="1.0",
    description="Upscale 5-frame windows (center frame) or short clips by 3x. "
    'Errors are JSON: {"error": CODE, "detail": MESSAGE}.\n\n'
    "**Authentication.** When the server has an API key (`VSR_API_KEY` or `user_config.api_key_file`), "
    "the /v1 endpoints need the header `Authorization: Bearer <key>` (in this page: *Authorize*); "
    "without it or with a wrong key they answer 401. `/healthz`, `/docs` and `/openapi.json` stay open.",
)
api.add_middleware(CatchAllMiddleware)
# Declares the bearer scheme in OpenAPI (the Authorize button in /docs); the handlers check the key.
bearer_auth = Security(HTTPBearer(auto_error=False,
                                  description=f"the server's API key (${API_KEY_ENV} or user_config api_key_file)"))


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


# --- request bodies -------------------------------------------------------------------------
def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def _check_content_length(request: Request, limit: int) -> None:
    declared = request.headers.get("content-length")
    if declared is None:
        return
    try:
        size = int(declared)
    except ValueError:
        raise ApiError(400, "invalid_content_length", f"Content-Length is not a number: {declared!r}") from None
    if size > limit:
        raise ApiError(413, "body_too_large", f"the body is {size} bytes (Content-Length); the limit is {limit} bytes")


async def _limited_stream(request: Request, limit: int):
    """The request body chunk by chunk; 413 as soon as more than ``limit`` bytes arrived
    (whatever Content-Length said, and for chunked uploads without one)."""
    _check_content_length(request, limit)
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise ApiError(413, "body_too_large", f"the body exceeds the limit of {limit} bytes")
        if chunk:
            yield chunk


async def _read_body(request: Request, limit: int) -> bytes:
    return b"".join([chunk async for chunk in _limited_stream(request, limit)])


async def _read_form(request: Request, limit: int, max_files: int):
    parser = MultiPartParser(request.headers, _limited_stream(request, limit), max_files=max_files, max_fields=16)
    try:
        return await parser.parse()
    except ApiError:
        raise
    except Exception as exc:  # MultiPartException, python-multipart parse errors
        raise ApiError(400, "invalid_multipart", f"cannot parse the multipart body: {exc}") from None


def _unsupported_type(request: Request, accepted: str) -> ApiError:
    got = request.headers.get("content-type") or "no Content-Type"
    return ApiError(415, "unsupported_media_type", f"got {got}; send {accepted}")


# --- the model --------------------------------------------------------------------------------
@dataclass(frozen=True)
class LoadedModel:
    upscaler: Upscaler
    info: dict[str, Any]  # what /v1/model reports
    key: tuple  # identifies checkpoint file version + Upscaler options; equal key = no reload needed


def _model_key(settings: ServeSettings) -> tuple:
    if not settings.checkpoint:
        raise ValueError("user_config must set 'checkpoint' (a .pth file, a run folder or a best/ folder)")
    path = resolve_checkpoint_path(settings.checkpoint).resolve()
    stat = path.stat()
    return (str(path), stat.st_mtime_ns, stat.st_size, settings.device, settings.tile, settings.tile_overlap)


def _read_best_info(path: Path) -> dict[str, Any] | None:
    """``best.json`` next to the checkpoint, if it describes this checkpoint file."""
    info_file = path.parent / BEST_INFO_NAME
    if not info_file.is_file():
        return None
    try:
        info = json.loads(info_file.read_text())
    except (OSError, ValueError) as exc:
        logger.warning("ignoring unreadable %s: %s", info_file, exc)
        return None
    if not isinstance(info, dict) or info.get("checkpoint_file", path.name) != path.name:
        return None
    return info


def load_model(settings: ServeSettings) -> LoadedModel:
    """Load the checkpoint completely (blocking; run it off the event loop)."""
    options = dict(device=settings.device, tile=settings.tile, tile_overlap=settings.tile_overlap)
    for _ in range(3):  # a run's latest.pth may be replaced (atomically) while we read it
        key = _model_key(settings)
        path = Path(key[0])
        upscaler = Upscaler.from_checkpoint(path, **options)
        meta = upscaler.checkpoint_info
        if _model_key(settings) == key:
            break
    else:
        raise RuntimeError(f"checkpoint {path} kept changing while it was loaded")
    best = _read_best_info(path)
    metrics = None
    if best is not None:
        metrics = best.get("metrics") if isinstance(best.get("metrics"), dict) else {
            k: v for k, v in best.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
        }
    info = {
        "checkpoint": str(path),
        "requested_checkpoint": settings.checkpoint,
        "step": int(meta["step"]),
        "epoch": int(meta["epoch"]),
        "training_phase": meta["training_phase"],
        "preset": meta["config"].get("PRESET", "full"),
        "scale": SCALE,
        "num_frames": NUM_FRAMES,
        "parameters": count_parameters(upscaler.model),
        "metrics": metrics,
        "best": best,
        "device": str(upscaler.device),
        "loaded_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    return LoadedModel(upscaler, info, key)


def _windows_per_pass(height: int, width: int, max_batch_pixels: int, most: int) -> int:
    return max(1, min(most, max_batch_pixels // max(1, height * width)))


def upscale_grouped(
    upscaler: Upscaler, windows: list[np.ndarray], max_batch_pixels: int = 2**62
) -> list[tuple[np.ndarray | Exception, int]]:
    """[5,H,W,3] uint8 windows of possibly different sizes -> (3x center frame, number of
    windows in the forward pass that computed it), in order.

    Windows of the same size are stacked into one ``upscale_windows`` call (split so that
    a pass holds at most ``max_batch_pixels`` LR pixels); different sizes run separately.
    A failure affects only its pass (returned as the exception, per window).
    """
    results: list[tuple[np.ndarray | Exception, int] | None] = [None] * len(windows)
    groups: dict[tuple, list[int]] = {}
    for i, window in enumerate(windows):
        groups.setdefault(window.shape, []).append(i)
    passes = []
    for shape, indices in groups.items():
        step = _windows_per_pass(shape[1], shape[2], max_batch_pixels, len(indices))
        passes += [indices[k : k + step] for k in range(0, len(indices), step)]
    for indices in passes:
        try:
            batch = to_tensor(np.stack([windows[i] for i in indices]))
            outputs = to_uint8(upscaler.upscale_windows(batch))
            for j, i in enumerate(indices):
                results[i] = (outputs[j], len(indices))
        except Exception as exc:  # noqa: BLE001 - reported per request
            logger.exception("upscaling %d window(s) of shape %s failed", len(indices), windows[indices[0]].shape)
            for i in indices:
                results[i] = (exc, len(indices))
    return results  # type: ignore[return-value]


def upscale_video_file(upscaler: Upscaler, source: Path, target: Path, settings: ServeSettings) -> tuple[int, float]:
    """Decode ``source``, upscale every frame with ``Upscaler.stream``, encode ``target``
    (same fps). Blocking. Returns (frame count, fps)."""
    max_frames, max_pixels = settings.max_video_frames, settings.max_pixels_per_frame
    try:
        info = probe_video(source)
    except VideoReadError as exc:
        raise ApiError(400, "invalid_video", str(exc).replace(str(source), "the upload")) from None
    if info.height * info.width > max_pixels:
        raise ApiError(413, "frame_too_large", f"frames are {info.width}x{info.height} = {info.height * info.width} "
                       f"pixels; the limit is {max_pixels} pixels per frame")
    if info.num_frames is not None and info.num_frames > max_frames:
        raise ApiError(413, "too_many_frames", f"the clip has {info.num_frames} frames; the limit is {max_frames}")

    def checked_frames():
        for count, frame in enumerate(iter_frames(source, max_frames=max_frames + 1)):
            if count >= max_frames:
                raise ApiError(413, "too_many_frames", f"the clip has more than {max_frames} frames (the limit)")
            if frame.shape[0] * frame.shape[1] > max_pixels:
                raise ApiError(413, "frame_too_large", f"frame {count} is {frame.shape[1]}x{frame.shape[0]}; "
                               f"the limit is {max_pixels} pixels per frame")
            yield frame

    # The loaded model with this clip's batch size (Upscaler.stream reads it): at most
    # batch_size windows per forward pass, fewer for large frames (max_batch_pixels).
    batch = _windows_per_pass(info.height, info.width, settings.max_batch_pixels, settings.batch_size)
    upscaler = Upscaler(upscaler.model, device=upscaler.device, batch_size=batch, tile=upscaler.tile,
                        tile_overlap=upscaler.tile_overlap)
    try:
        with FrameWriter(target, info.fps) as writer:
            for frame in upscaler.stream(checked_frames()):
                writer.write(frame)
    except (VideoReadError, ValueError) as exc:  # corrupt stream, frame size changes mid-clip
        raise ApiError(400, "invalid_video", str(exc).replace(str(source), "the upload")) from None
    if writer.count == 0:
        raise ApiError(400, "invalid_video", "the clip contains no frames")
    return writer.count, info.fps


def _model_headers(loaded: LoadedModel) -> dict[str, str]:
    return {"X-VSR-Checkpoint": loaded.info["checkpoint"], "X-VSR-Step": str(loaded.info["step"])}


def encode_png(frame: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def _replica_cpus() -> float | None:
    try:
        import ray

        if ray.is_initialized():
            return ray.get_runtime_context().get_assigned_resources().get("CPU")
    except Exception:  # noqa: BLE001 - not in a Ray worker
        pass
    return None


# --- OpenAPI descriptions of the raw bodies (the handlers parse them themselves) ---------
_ERRORS = {
    code: {"description": text, "content": {"application/json": {"example": {"error": "...", "detail": "..."}}}}
    for code, text in {
        400: "bad input (wrong frame count, mismatched sizes, not an image, truncated file ...)",
        413: "body, frame or clip too large",
        415: "unsupported Content-Type or image format",
        503: "no model loaded",
    }.items()
}
_AUTH_ERROR = {401: {"description": "missing or wrong API key (when the server has one)",
                     "content": {"application/json": {"example": {"error": "unauthorized", "detail": "..."}}}}}
_WINDOW_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            MULTIPART: {
                "schema": {
                    "type": "object",
                    "required": ["frames"],
                    "properties": {
                        "frames": {"type": "array", "items": {"type": "string", "format": "binary"},
                                   "minItems": NUM_FRAMES, "maxItems": NUM_FRAMES,
                                   "description": "5 PNG/JPEG frames of equal size, in temporal order"}
                    },
                }
            },
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary", "description": ".npy array [5,H,W,3] uint8"}
            },
        },
    }
}
_VIDEO_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "video/mp4": {"schema": {"type": "string", "format": "binary"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            MULTIPART: {"schema": {"type": "object", "required": ["video"],
                                   "properties": {"video": {"type": "string", "format": "binary"}}}},
        },
    }
}


# --- the deployment -----------------------------------------------------------------------
# Serve pickles the ingress app when the class is decorated: every module-level name the
# methods use must be defined above this point.
@ray_serve.deployment(name=DEPLOYMENT_NAME, max_ongoing_requests=16, ray_actor_options={"num_cpus": 1})
@ray_serve.ingress(api)
class VSRUpscaler:
    def __init__(self):
        self._loaded: LoadedModel | None = None  # replaced atomically by reconfigure
        self._settings = ServeSettings()
        self._reload_error: str | None = None
        self._api_key: str | None = None  # None: no authentication
        self._reconfigure_lock = asyncio.Lock()
        # One model thread: forward passes never compete for the replica's CPUs, and
        # the event loop stays free to accept, decode and batch requests.
        self._model_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vsr-model")
        self._threads_from_cpus = _replica_cpus()
        self._set_threads(None)

    # --- configuration ---------------------------------------------------------------
    def _set_threads(self, num_threads: int | None) -> None:
        if num_threads is None and self._threads_from_cpus:
            num_threads = max(1, math.floor(self._threads_from_cpus))
        if num_threads and num_threads != torch.get_num_threads():
            torch.set_num_threads(num_threads)

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply a new user_config. A new checkpoint is loaded completely first, then swapped
        in with one assignment; requests already running keep the old model until they end.

        At startup a bad config fails the replica (Serve reports the error). On a running
        replica the old model and limits stay in service, the error is logged and shown in
        /v1/model as ``reload_error`` (a typo must not take the service down)."""
        async with self._reconfigure_lock:
            try:
                settings = _settings_from(user_config)
                api_key = load_api_key(settings)
                loaded = self._loaded
                if loaded is None or loaded.key != await asyncio.to_thread(_model_key, settings):
                    loaded = await asyncio.to_thread(load_model, settings)
            except Exception as exc:
                if self._loaded is None:
                    raise
                self._reload_error = f"{type(exc).__name__}: {exc}"
                logger.exception("reconfigure failed; still serving %s", self._loaded.info["checkpoint"])
                return
            Image.MAX_IMAGE_PIXELS = settings.max_pixels_per_frame  # PIL's own bomb guard (ours is stricter)
            self._upscale_batch.set_max_batch_size(settings.max_batch_size)
            self._upscale_batch.set_batch_wait_timeout_s(settings.batch_wait_timeout_s)
            self._set_threads(settings.num_threads)
            self._settings = settings
            self._api_key = api_key
            if loaded is not self._loaded:
                logger.info("serving %s (step %s)", loaded.info["checkpoint"], loaded.info["step"])
            self._loaded = loaded  # the swap
            self._reload_error = None

    def check_health(self) -> None:
        if self._loaded is None:
            raise RuntimeError("no model loaded (user_config needs a valid 'checkpoint')")

    def _authorize(self, request: Request) -> None:
        if not is_authorized(request.headers.get("authorization"), self._api_key):
            problem = "wrong API key" if request.headers.get("authorization") else "this server needs an API key"
            raise ApiError(401, "unauthorized", f"{problem}: send the header 'Authorization: Bearer <key>'",
                           headers={"WWW-Authenticate": "Bearer"})

    def _model(self) -> LoadedModel:
        loaded = self._loaded
        if loaded is None:
            raise ApiError(503, "model_not_loaded", "no model is loaded yet")
        return loaded

    # --- batching --------------------------------------------------------------------------
    @ray_serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def _upscale_batch(self, windows: list[np.ndarray]) -> list[tuple[Any, int, LoadedModel | None]]:
        loaded = self._loaded  # the whole batch runs on one model, even across a swap
        if loaded is None:
            error = ApiError(503, "model_not_loaded", "no model is loaded yet")
            return [(error, 0, None)] * len(windows)
        loop = asyncio.get_running_loop()
        outputs = await loop.run_in_executor(
            self._model_executor, upscale_grouped, loaded.upscaler, windows, self._settings.max_batch_pixels
        )
        return [(output, batch, loaded) for output, batch in outputs]

    # --- endpoints -------------------------------------------------------------------------
    @api.post(
        "/v1/upscale",
        response_class=Response,
        summary="Upscale the center frame of a 5-frame window by 3x",
        responses={200: {"content": {"image/png": {}}, "description": "the 3x center frame"}, **_AUTH_ERROR,
                   **_ERRORS},
        openapi_extra=_WINDOW_BODY,
        dependencies=[bearer_auth],
    )
    async def upscale(self, request: Request) -> Response:
        self._authorize(request)
        self._model()
        settings = self._settings
        media_type = _media_type(request)
        if media_type == MULTIPART:
            form = await _read_form(request, settings.max_body_bytes, max_files=4 * NUM_FRAMES)
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
            max_pixels = settings.max_pixels_per_frame

            def decode_window() -> np.ndarray:
                frames = [decode_image(blob, max_pixels, f"frame {i} ({parts[i].filename})")
                          for i, blob in enumerate(blobs)]
                return stack_window(frames)

            window = await asyncio.to_thread(decode_window)
        elif media_type in NPY_TYPES:
            body = await _read_body(request, settings.max_body_bytes)
            window = await asyncio.to_thread(load_npy_window, body, settings.max_pixels_per_frame)
        else:
            raise _unsupported_type(request, f"{MULTIPART} with {NUM_FRAMES} 'frames' files, or a .npy "
                                    "window as application/octet-stream")
        output, batch, loaded = await self._upscale_batch(window)
        if isinstance(output, BaseException):
            raise output
        png = await asyncio.to_thread(encode_png, output)
        headers = {**_model_headers(loaded), "X-VSR-Batch": str(batch)}  # windows in that forward pass
        return Response(png, media_type="image/png", headers=headers)

    @api.post(
        "/v1/upscale/video",
        response_class=Response,
        summary="Upscale a short clip by 3x (same fps and frame count)",
        responses={200: {"content": {"video/mp4": {}}, "description": "the 3x clip"}, **_AUTH_ERROR, **_ERRORS},
        openapi_extra=_VIDEO_BODY,
        dependencies=[bearer_auth],
    )
    async def upscale_video(self, request: Request) -> Response:
        self._authorize(request)
        loaded = self._model()  # the whole clip runs on this model
        settings = self._settings
        media_type = _media_type(request)
        with tempfile.TemporaryDirectory(prefix="vsr-serve-") as tmp:
            source, target = Path(tmp) / "input.mp4", Path(tmp) / "output.mp4"
            if media_type in VIDEO_TYPES:
                with open(source, "wb") as f:
                    async for chunk in _limited_stream(request, settings.max_body_bytes):
                        f.write(chunk)
            elif media_type == MULTIPART:
                form = await _read_form(request, settings.max_body_bytes, max_files=1)
                try:
                    upload = form.get("video")
                    if not isinstance(upload, UploadFile):
                        raise ApiError(400, "missing_video", "expected a file part named 'video'")
                    with open(source, "wb") as f:
                        while chunk := await upload.read(_CHUNK):
                            f.write(chunk)
                finally:
                    await form.close()
            else:
                raise _unsupported_type(request, "an mp4 clip as video/mp4 or application/octet-stream, "
                                        f"or {MULTIPART} with a 'video' file")
            if source.stat().st_size == 0:
                raise ApiError(400, "empty_body", "the clip is empty (0 bytes)")
            loop = asyncio.get_running_loop()
            count, fps = await loop.run_in_executor(
                self._model_executor, upscale_video_file, loaded.upscaler, source, target, settings
            )
            data = await asyncio.to_thread(target.read_bytes)
        headers = {**_model_headers(loaded), "X-VSR-Frames": str(count), "X-VSR-FPS": f"{fps:g}"}
        return Response(data, media_type="video/mp4", headers=headers)

    @api.get("/v1/model", summary="The loaded model: checkpoint, step, preset, metrics, device, limits",
             responses=_AUTH_ERROR, dependencies=[bearer_auth])
    async def model_info(self, request: Request) -> dict[str, Any]:
        self._authorize(request)
        loaded = self._model()
        settings = self._settings
        return {
            **loaded.info,
            "limits": settings.limits(),
            "batching": {"max_batch_size": settings.max_batch_size,
                         "batch_wait_timeout_s": settings.batch_wait_timeout_s,
                         "max_batch_pixels": settings.max_batch_pixels, "video_batch_size": settings.batch_size},
            "num_threads": torch.get_num_threads(),
            "reload_error": self._reload_error,
            "auth": "bearer" if self._api_key else "none",
            "pid": os.getpid(),
        }

    @api.get("/healthz", summary="200 when a model is loaded")
    async def healthz(self) -> dict[str, Any]:
        loaded = self._model()
        return {"status": "ok", "checkpoint": loaded.info["checkpoint"], "step": loaded.info["step"]}


# --- application builders --------------------------------------------------------------------
DEPLOYMENT_ARGS = ("num_replicas", "num_cpus", "num_gpus", "max_ongoing_requests")


def build_app(args: dict[str, Any] | None = None) -> ray_serve.Application:
    """``serve run serve.app:build_app checkpoint=runs/demo num_cpus=2``, or ``import_path``
    + ``args`` in a config file. ``args`` are user_config keys (see ``ServeSettings``)
    plus num_replicas, num_cpus, num_gpus, max_ongoing_requests. A config file's
    ``deployments[].user_config`` replaces the user_config built here."""
    args = dict(args or {})
    deployment_args = {key: args.pop(key) for key in DEPLOYMENT_ARGS if key in args}
    user_config = _settings_from(args).model_dump(exclude_unset=True)  # validates; values typed
    options: dict[str, Any] = {"user_config": user_config}
    if "num_replicas" in deployment_args:
        value = deployment_args["num_replicas"]
        options["num_replicas"] = value if value == "auto" else int(value)
    if "max_ongoing_requests" in deployment_args:
        options["max_ongoing_requests"] = int(deployment_args["max_ongoing_requests"])
    actor_options = {"num_cpus": 1.0}
    for key in ("num_cpus", "num_gpus"):
        if key in deployment_args:
            actor_options[key] = float(deployment_args[key])
    options["ray_actor_options"] = actor_options
    return VSRUpscaler.options(**options).bind()


# `serve run serve/config.yaml` imports this; the config's user_config supplies the checkpoint.
app = build_app()


# --- python serve/app.py --checkpoint PATH ------------------------------------------------------
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def build_parser():
    import argparse

    parser = argparse.ArgumentParser(description="Serve VSR+++ v2 over HTTP on a local Ray instance.")
    parser.add_argument("--checkpoint", required=True, help="checkpoint .pth, training run folder, or best/ folder")
    parser.add_argument("--host", default="127.0.0.1",
                        help="HTTP host (default 127.0.0.1; 0.0.0.0 exposes it: set an API key then)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--api-key-file", help=f"file holding the API key clients must send as "
                        f"'Authorization: Bearer <key>' (default: ${API_KEY_ENV}; neither: no authentication)")
    parser.add_argument("--num-cpus", type=float, default=1.0, help="CPUs per replica (= torch threads)")
    parser.add_argument("--num-gpus", type=float, default=0.0, help="GPUs per replica")
    parser.add_argument("--num-replicas", type=int, default=1)
    parser.add_argument("--address", default=None, help="join a running Ray cluster instead of starting one")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.host not in LOOPBACK_HOSTS and not (args.api_key_file or os.environ.get(API_KEY_ENV)):
        print(f"warning: serving on {args.host} without an API key: anyone who can reach this port can use it. "
              f"Set {API_KEY_ENV} or --api-key-file.", file=sys.stderr)

    import ray

    checkpoint = resolve_checkpoint_path(Path(args.checkpoint).expanduser()).resolve()  # fail fast, absolute
    root = str(Path(__file__).resolve().parent.parent)
    # Replicas import this module as `serve.app`: put the repo root on their path.
    runtime_env = {"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}}
    if args.address:
        context = ray.init(address=args.address, runtime_env=runtime_env)
    else:
        context = ray.init(dashboard_host="127.0.0.1", runtime_env=runtime_env)
    ray_serve.start(http_options={"host": args.host, "port": args.port})
    app_args = {"checkpoint": str(checkpoint), "num_cpus": args.num_cpus, "num_gpus": args.num_gpus,
                "num_replicas": args.num_replicas}
    if args.api_key_file:
        app_args["api_key_file"] = str(Path(args.api_key_file).expanduser().resolve())
    application = build_app(app_args)
    ray_serve.run(application, name="vsr", route_prefix="/")
    base = f"http://{args.host}:{args.port}"
    print(f"serving {checkpoint}")
    print(f"  POST {base}/v1/upscale        5 frames -> 3x center frame (PNG)")
    print(f"  POST {base}/v1/upscale/video  mp4 clip -> 3x mp4")
    print(f"  GET  {base}/v1/model")
    print(f"  docs {base}/docs")
    if getattr(context, "dashboard_url", None):
        print(f"  Ray dashboard http://{context.dashboard_url}")
    print("Ctrl-C to stop.", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("shutting down ...")
    finally:
        ray_serve.shutdown()
        if not args.address:
            ray.shutdown()


if __name__ == "__main__":
    # Run as a script, this file is `__main__`; import it as `serve.app` instead so that the
    # deployment is pickled by reference (replicas import the same module).
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    if sys.path[1:2] == [str(Path(__file__).resolve().parent)]:
        del sys.path[1]  # the script's own folder: keep `serve` meaning this package
    from serve.app import main as _main

    _main()
