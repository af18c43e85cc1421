"""Ray Serve app: 3x super-resolution over HTTP (FastAPI ingress).

Endpoints (all errors are JSON ``{"error": CODE, "detail": MESSAGE}``)::

    POST   /v1/upscale            5 frames (multipart "frames", PNG/JPEG) or one .npy [5,H,W,3] uint8
                                  -> the 3x center frame as PNG, or as the Accept header asks (serve.formats)
    WS     /v1/stream             a live video, each frame sent once -> its 3x frames, 2 frames behind
                                  (serve.stream has the protocol)
    POST   /v1/jobs               a video (upload, or {"source": path/URI} under job_source_roots)
                                  -> 202 {"id": ...}: upscaled on the Ray cluster by the video engine
    GET    /v1/jobs[/{id}]        state, frames done / total, fps, ETA
    GET    /v1/jobs/{id}/result   the 3x video (mp4, audio kept), streamed from disk
    DELETE /v1/jobs/{id}          cancel ("cancelling" until the workers have stopped) or delete (idempotent)
    POST   /v1/upscale/video      a short clip, synchronously: a job that the request waits for
    GET    /v1/model              checkpoint, step, preset, metrics (best.json), trial, device, limits
    PUT    /v1/model              {"trial": id} | {"checkpoint": path in the experiments} | {"rollback": true}
                                  -> serve that model on every replica (serve.models)
    GET    /v1/experiments        the Tune experiments of user_config ``experiments``: trials, states,
                                  metric history, layer activity (vsr_core.experiments)
    POST   /v1/compare            the same frames through two models and bicubic, scored against the
                                  original: per-frame PSNR, tOF, flicker (serve.compare)
    GET    /healthz               200 when a model is loaded
    GET    /                      the web page (serve/page): upload, progress, compare with bicubic, download
    POST   /v1/bicubic            one PNG/JPEG frame -> its plain 3x bicubic PNG (the page's baseline)
    GET    /docs                  OpenAPI UI

With API keys configured ($VSR_API_KEY, or user_config ``api_key_file``: one key per line) the
/v1 endpoints need ``Authorization: Bearer <key>`` (else 401) and each key sees its own jobs only.
Every /v1 request is also checked for its Host and (from browsers) Origin, and what a key holds
open (streams, uploads, downloads, jobs) is capped (serve.admission): a client without a key
never holds a request slot, and the caps stay below ``max_ongoing_requests``, so /healthz always
finds one.

Windows run on this replica's one model thread, batched across requests and streams (serve.batching);
video jobs run on other processes (``serve.jobs``), so a window never waits for a video.
``reconfigure`` hot-swaps the model: the new checkpoint is loaded completely (off the event
loop), then one reference is replaced; requests already running finish on the old model.

Run it:  ``serve run serve/config.yaml``  |  ``python -m serve --checkpoint demo_output/tune/demo/best``
Importing this module starts nothing (no Ray, no model).
"""
# No `from __future__ import annotations`: Serve rebuilds the FastAPI routes of the class
# and then needs real (not string) annotations such as `request: Request`.
import asyncio
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from fastapi import Request, WebSocket
from fastapi.responses import FileResponse, Response
from PIL import Image
from ray import serve as ray_serve  # the top-level folder is also called `serve`

from serve.admission import Admission, authorize
from serve.batching import ModelQueue, PassResult, Window
from serve.compare import COMPARE_BODY, compare
from serve.job_api import JobApi
from serve.redact import public_text
from serve.schemas import MAX_JOB_JSON_BYTES, InputError, PromoteRequest, parse_json, validate
from serve.api import (
    AUTH_ERROR,
    ERRORS,
    FRAME_TYPES,
    JOB_BODY,
    JOB_ERRORS,
    JSON,
    VIDEO_BODY,
    WINDOW_BODY,
    ApiError,
    api,
    bearer_auth,
    body_pace,
    media_type,
    read_body,
    response_type,
    server_timing,
    unsupported_type,
    window_from,
)
from serve.formats import encode_frame
from serve.model import LoadedModel, model_headers, replica_cpus
from serve.models import FOLLOW_INTERVAL_S, PROMOTE_BODY, ModelStore
from serve.page import IMAGE_TYPES, bicubic_png, page_response
from serve.settings import ServeSettings, load_api_keys, settings_from
from serve.stream import StreamStats, serve_stream

logger = logging.getLogger("ray.serve")

DEPLOYMENT_NAME = "VSRUpscaler"

# Well above what the app itself admits (streams and transfers: serve.admission), so that held
# connections never take the slots of /healthz and of short requests (Serve's proxy sends a replica
# no more than this many at once; the rest wait in its queue).
MAX_ONGOING_REQUESTS = 100


# Serve pickles the ingress app when the class is decorated: every module-level name the
# methods use must be defined above this point.
@ray_serve.deployment(name=DEPLOYMENT_NAME, max_ongoing_requests=MAX_ONGOING_REQUESTS,
                      ray_actor_options={"num_cpus": 1})
@ray_serve.ingress(api)
class VSRUpscaler:
    def __init__(self):
        self._loaded: LoadedModel | None = None  # replaced atomically by reconfigure
        self._settings = ServeSettings()
        self._reload_error: str | None = None
        self._api_keys: list[str] = []  # none: no authentication
        self._reconfigure_lock = asyncio.Lock()
        # One model thread: forward passes never compete for the replica's CPUs, and
        # the event loop stays free to accept, decode and batch requests.
        self._model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vsr-model")
        self._model_queue: ModelQueue[LoadedModel] = ModelQueue(self._model_thread)
        self._models = ModelStore()  # what to serve (promotions), and the models kept for compare / rollback
        self._threads_from_cpus = replica_cpus()
        self._set_threads(None)
        self._admission = Admission(lambda: self._settings)
        self._jobs = JobApi(lambda: self._settings, self._admission)
        self._maintenance: list[asyncio.Task] = []  # the jobs' recovery and expiry loop; following promotions
        self._streams = StreamStats()

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
                settings = settings_from(user_config)
                api_keys = load_api_keys(settings)
                self._models.configure(settings)
                loaded = await asyncio.to_thread(self._models.serving, settings, self._loaded)
            except Exception as exc:
                if self._loaded is None:
                    raise
                error = f"{type(exc).__name__}: {exc}"
                self._reload_error = error if self._settings.expose_paths else public_text(error)
                logger.exception("reconfigure failed; still serving %s", self._loaded.path)
                return
            Image.MAX_IMAGE_PIXELS = settings.max_pixels_per_frame  # PIL's own bomb guard (ours is stricter)
            self._model_queue.configure(settings.max_batch_size, settings.batch_wait_timeout_s,
                                        settings.max_batch_pixels)
            self._set_threads(settings.num_threads)
            self._settings = settings
            self._api_keys = api_keys
            self._swap(loaded)
            self._reload_error = None
            if not self._maintenance:
                loop = asyncio.get_running_loop()
                self._maintenance = [loop.create_task(self._jobs.maintain()), loop.create_task(self._follow_record())]

    def _swap(self, loaded: LoadedModel) -> None:
        """Serve ``loaded`` (one assignment); the model it replaces stays loaded for a rollback or compare."""
        old = self._loaded
        if old is None or old.key != loaded.key:
            logger.info("serving %s (step %s)", loaded.path, loaded.info["step"])
            self._models.keep(old)
        self._loaded = loaded  # the swap

    async def _follow_record(self) -> None:
        """Serve what another replica promoted (serve.models), within FOLLOW_INTERVAL_S."""
        while True:
            await asyncio.sleep(FOLLOW_INTERVAL_S)
            try:
                if await asyncio.to_thread(self._models.record_changed, self._settings):
                    async with self._reconfigure_lock:
                        self._swap(await asyncio.to_thread(self._models.serving, self._settings, self._loaded))
            except Exception:  # noqa: BLE001 - keep following; the model in service stays
                logger.exception("could not follow the serving record")

    def check_health(self) -> None:
        if self._loaded is None:
            raise RuntimeError("no model loaded (user_config needs a valid 'checkpoint')")

    def _authorize(self, request: Request) -> str:
        """The caller's owner id (``serve.admission.authorize``: Host, Origin, key); 403 or 401."""
        return authorize(request.headers, request.method, self._settings, self._api_keys)

    def _model(self) -> LoadedModel:
        loaded = self._loaded
        if loaded is None:
            raise ApiError(503, "model_not_loaded", "no model is loaded yet")
        return loaded

    # --- windows ---------------------------------------------------------------------------
    async def _upscale_window(self, window: Window) -> PassResult[LoadedModel]:
        """The window's answer from the current model's next forward pass (raises that pass's
        error, or 503 without a model)."""
        loaded = self._loaded  # the window runs on this model, even across a swap
        if loaded is None:
            raise ApiError(503, "model_not_loaded", "no model is loaded yet")
        return await self._model_queue.upscale(loaded, window)

    @api.post("/v1/upscale", response_class=Response, summary="Upscale the center frame of a 5-frame window by 3x",
              responses={200: {"content": FRAME_TYPES, "description": "the 3x center frame (as Accept asks)"},
                         **AUTH_ERROR, **ERRORS}, openapi_extra=WINDOW_BODY, dependencies=[bearer_auth])
    async def upscale(self, request: Request) -> Response:
        owner = self._authorize(request)
        self._model()
        media = response_type(request)  # 406 before any work
        settings = self._settings
        with self._admission.hold("transfers", owner):
            times = [time.perf_counter()]
            window = await window_from(request, settings.max_body_bytes, settings.max_pixels_per_frame,
                                       body_pace(settings))
            times.append(time.perf_counter())
            result = await self._upscale_window(window)
        times.append(time.perf_counter())
        body = await asyncio.to_thread(encode_frame, result.frame, media)
        times.append(time.perf_counter())
        headers = {**model_headers(result.model), "X-VSR-Batch": str(result.batch_size),  # windows in that pass
                   "Server-Timing": server_timing(times, result.seconds)}
        return Response(body, media_type=media, headers=headers)

    @api.websocket("/v1/stream")
    async def stream(self, websocket: WebSocket) -> None:
        await serve_stream(websocket, self._settings, self._api_keys, self._admission, self._upscale_window,
                           self._streams)

    # --- videos (serve.job_api) ------------------------------------------------------------------
    @api.post("/v1/jobs", status_code=202, summary="Upscale a whole video on the cluster (returns a job id)",
              responses={**AUTH_ERROR, **ERRORS, **JOB_ERRORS}, openapi_extra=JOB_BODY, dependencies=[bearer_auth])
    async def submit_job(self, request: Request) -> dict[str, Any]:
        return await self._jobs.submit(request, self._authorize(request), self._model())

    @api.get("/v1/jobs", summary="Your jobs, oldest first", responses=AUTH_ERROR, dependencies=[bearer_auth])
    async def list_jobs(self, request: Request) -> dict[str, Any]:
        return await self._jobs.list(self._authorize(request))

    @api.get("/v1/jobs/{job_id}", summary="A job's state, frames done / total, fps and ETA",
             responses={**AUTH_ERROR, **JOB_ERRORS}, dependencies=[bearer_auth])
    async def job_status(self, job_id: str, request: Request) -> dict[str, Any]:
        return await self._jobs.status(job_id, self._authorize(request))

    @api.get("/v1/jobs/{job_id}/result", response_class=FileResponse, summary="The finished job's 3x video (mp4)",
             responses={200: {"content": {"video/mp4": {}}}, **AUTH_ERROR, **JOB_ERRORS}, dependencies=[bearer_auth])
    async def job_result(self, job_id: str, request: Request) -> Response:
        return await self._jobs.result(job_id, self._authorize(request))

    @api.delete("/v1/jobs/{job_id}", summary="Cancel an unfinished job, or delete a finished one and its files",
                responses={**AUTH_ERROR, **JOB_ERRORS}, dependencies=[bearer_auth])
    async def delete_job(self, job_id: str, request: Request) -> dict[str, Any]:
        return await self._jobs.delete(job_id, self._authorize(request))

    @api.post("/v1/upscale/video", response_class=Response, summary="Upscale a short clip and wait for it",
              responses={200: {"content": {"video/mp4": {}}, "description": "the 3x clip"}, **AUTH_ERROR, **ERRORS},
              openapi_extra=VIDEO_BODY, dependencies=[bearer_auth])
    async def upscale_video(self, request: Request) -> Response:
        return await self._jobs.upscale_video(request, self._authorize(request), self._model())

    # --- the model ---------------------------------------------------------------------------
    @api.get("/v1/model", summary="The loaded model: checkpoint, step, preset, metrics, device, limits",
             responses=AUTH_ERROR, dependencies=[bearer_auth])
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
            "auth": "bearer" if self._api_keys else "none",
            "streams": self._streams.as_dict(),
            "admitted": self._admission.as_dict(),
            "previous": self._models.previous(),  # what a rollback serves
            "promote_error": self._models.error,
            "loaded_models": self._models.loaded(),  # kept besides the served one, at most max_compare_models
            "max_compare_models": settings.max_compare_models,
            "experiments": self._models.reader is not None,
        }

    @api.put("/v1/model", summary="Serve another model: a trial of the experiments, a checkpoint in them, or the "
             "previous model", responses={**AUTH_ERROR, **ERRORS}, dependencies=[bearer_auth],
             openapi_extra=PROMOTE_BODY)
    async def set_model(self, request: Request) -> dict[str, Any]:
        self._authorize(request)
        self._model()
        if media_type(request) != JSON:
            raise unsupported_type(request, JSON)
        raw = await read_body(request, MAX_JOB_JSON_BYTES, body_pace(self._settings))
        try:
            parsed = parse_json(raw, MAX_JOB_JSON_BYTES)
        except InputError as exc:
            raise ApiError(400, "invalid_json", str(exc)) from None
        try:
            body = validate(PromoteRequest, parsed).checked()
        except InputError as exc:
            raise ApiError(400, "invalid_field" if exc.field else "invalid_body", str(exc)) from None
        async with self._reconfigure_lock:
            self._swap(await asyncio.to_thread(self._models.promote, body, self._settings, self._model()))
        return await self.model_info(request)

    @api.get("/v1/experiments", summary="The Tune experiments: trials, states, metric history, layer activity",
             responses=AUTH_ERROR, dependencies=[bearer_auth])
    async def experiments(self, request: Request) -> dict[str, Any]:
        self._authorize(request)
        settings, reader = self._settings, self._models.reader
        found = await asyncio.to_thread(reader.snapshot, settings.expose_paths) if reader else []
        return {"experiments": found, "configured": reader is not None, "tensorboard_url": settings.tensorboard_url}

    @api.post("/v1/compare", summary="The same frames through two models and bicubic, scored against the original",
              responses={**AUTH_ERROR, **ERRORS}, dependencies=[bearer_auth], openapi_extra=COMPARE_BODY)
    async def compare_models(self, request: Request) -> dict[str, Any]:
        owner = self._authorize(request)
        with self._admission.hold("transfers", owner):
            return await compare(request, self._settings, self._models, self._model(), self._model_thread)

    # --- the web page (serve/page) ------------------------------------------------------------
    @api.get("/", response_class=Response, include_in_schema=False)
    async def page(self) -> Response:
        return page_response("index.html")

    @api.get("/page/{name}", response_class=Response, include_in_schema=False)
    async def page_file(self, name: str) -> Response:
        return page_response(name)  # an allow-list of the folder's file names: no paths

    @api.post("/v1/bicubic", response_class=Response, summary="Plain 3x bicubic of one frame (the page's baseline)",
              responses={200: {"content": {"image/png": {}}, "description": "the 3x bicubic frame"}, **AUTH_ERROR,
                         **ERRORS}, openapi_extra={"requestBody": {"required": True, "content": {
                             t: {"schema": {"type": "string", "format": "binary"}} for t in IMAGE_TYPES}}},
              dependencies=[bearer_auth])
    async def bicubic(self, request: Request) -> Response:
        owner = self._authorize(request)
        if media_type(request) not in IMAGE_TYPES:
            raise unsupported_type(request, "one PNG or JPEG frame as image/png, image/jpeg or application/octet-stream")
        settings = self._settings
        with self._admission.hold("transfers", owner):
            body = await read_body(request, settings.max_body_bytes, body_pace(settings))
            png = await asyncio.to_thread(bicubic_png, body, settings.max_pixels_per_frame)
        return Response(png, media_type="image/png")

    @api.get("/healthz", summary="200 when a model is loaded")
    async def healthz(self) -> dict[str, Any]:
        loaded = self._model()
        return {"status": "ok", "step": loaded.info["step"]}


# --- application builders --------------------------------------------------------------------
DEPLOYMENT_ARGS = ("num_replicas", "num_cpus", "num_gpus", "max_ongoing_requests")


def build_app(args: dict[str, Any] | None = None) -> ray_serve.Application:
    """``serve run serve.app:build_app checkpoint=runs/demo num_cpus=2``, or ``import_path``
    + ``args`` in a config file. ``args`` are user_config keys (see ``ServeSettings``)
    plus num_replicas, num_cpus, num_gpus, max_ongoing_requests. A config file's
    ``deployments[].user_config`` replaces the user_config built here."""
    args = dict(args or {})
    deployment_args = {key: args.pop(key) for key in DEPLOYMENT_ARGS if key in args}
    user_config = settings_from(args).model_dump(exclude_unset=True)  # validates; values typed
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

if __name__ == "__main__":
    from serve.__main__ import main  # `python serve/app.py ...` = `python -m serve ...`

    main()
