"""POST /v1/compare: the same frames through two models and bicubic, scored against the original.

The request is multipart: a ``video`` file (``start`` and ``count`` pick consecutive frames) or 1 to
``max_compare_frames`` ``frames`` files (PNG/JPEG, in temporal order), and the fields

* ``models``: two model ids, comma-separated: ``served``, ``previous`` (what a rollback would serve),
  a trial id or ``<experiment>/<trial id>``; default ``served,previous``;
* ``reference``: ``true`` (default) when the frames are the HR original: each is cropped to a multiple
  of 3 and degraded by the server (``vsr_core.evaluate.degrade_frame``, the degradation every model is
  trained and measured with), the low-res frames are upscaled, and every result is scored against the
  original (per-frame Y-PSNR, and tOF and flicker from frame to frame: ``vsr_core.evaluate.score_frames``);
  ``false`` when they are low-res input: upscaled, not scored.

The answer is JSON: per result (``bicubic``, each model, and ``original`` with a reference) its frames as
PNG data URLs, its scores and what it is (trial, experiment, step). Models run one after the other on
the replica's model thread (``serve.models``: at most ``max_compare_models`` stay loaded).
"""
from __future__ import annotations

import asyncio
import base64
import tempfile
import time
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import Request
from starlette.datastructures import UploadFile

from serve.api import MULTIPART, ApiError, body_pace, read_form, unsupported_type
from serve.formats import PNG, encode_frame
from serve.model import LoadedModel
from serve.models import ModelChoice, ModelStore
from serve.settings import ServeSettings
from vsr_core.archs import SCALE
from vsr_core.data.degradation import crop_to_scale
from vsr_core.data.video_io import VIDEO_EXTENSIONS, VideoReadError, iter_frames, probe_video
from vsr_core.image_io import decode_image
from vsr_core.inference import Upscaler

DEFAULT_MODELS = "served,previous"
DEFAULT_COUNT = 6
_BINARY = {"type": "string", "format": "binary"}
COMPARE_BODY = {"requestBody": {"required": True, "content": {MULTIPART: {"schema": {"type": "object", "properties": {
    "video": {**_BINARY, "description": "a clip (or send frames)"},
    "frames": {"type": "array", "items": _BINARY, "description": "PNG/JPEG frames in temporal order"},
    "models": {"type": "string", "default": DEFAULT_MODELS,
               "description": "two model ids: served, previous, a trial id or experiment/trial id"},
    "reference": {"type": "boolean", "default": True, "description": "the frames are the HR original: "
                  "degrade them, upscale, score (PSNR per frame, tOF, flicker)"},
    "start": {"type": "integer", "default": 0}, "count": {"type": "integer", "default": DEFAULT_COUNT}}}}}}}


async def compare(request: Request, settings: ServeSettings, store: ModelStore, served: LoadedModel,
                  model_thread: Executor) -> dict[str, Any]:
    """The answer of POST /v1/compare (see the module docstring)."""
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != MULTIPART:
        raise unsupported_type(request, f"{MULTIPART} with a 'video' file or 'frames' files")
    # one file more than allowed gets through the parser, so that too many frames is a 413 naming the limit
    form = await read_form(request, settings.max_body_bytes, max_files=settings.max_compare_frames + 1,
                           pace=body_pace(settings))
    try:
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
        reference = _flag(fields.get("reference", "true"), "reference")
        refs = _model_ids(fields.get("models", DEFAULT_MODELS))
        frames = await _input_frames(form, fields, settings, reference)
    finally:
        await form.close()
    choices = [await asyncio.to_thread(_choice, store, ref) for ref in refs]  # reads the experiments: 4xx early
    work = lambda: _run(frames, reference, list(zip(refs, choices)), settings, store, served)  # noqa: E731
    return await asyncio.get_running_loop().run_in_executor(model_thread, work)


def _flag(value: str, name: str) -> bool:
    if value.lower() in ("true", "1", "yes", "on"):
        return True
    if value.lower() in ("false", "0", "no", "off"):
        return False
    raise ApiError(400, "invalid_field", f"{name}: expected true or false, got {value!r}")


def _model_ids(value: str) -> list[str]:
    refs = [ref.strip() for ref in value.split(",") if ref.strip()]
    if len(refs) != 2 or refs[0] == refs[1]:
        raise ApiError(400, "invalid_field", f"models: expected two different model ids separated by a comma "
                       f"(served, previous, a trial id or experiment/trial id), got {value!r}")
    return refs


def _count(fields: dict[str, str], name: str, default: int, low: int, high: int | None = None) -> int:
    try:
        value = int(fields.get(name, default))
    except ValueError:
        raise ApiError(400, "invalid_field", f"{name}: expected an integer, got {fields[name]!r}") from None
    if value < low:
        raise ApiError(400, "invalid_field", f"{name}: must be at least {low}, got {value}")
    if high is not None and value > high:
        raise ApiError(413, "too_many_frames", f"{name}: at most {high} frames per compare, got {value}")
    return value


async def _input_frames(form, fields: dict[str, str], settings: ServeSettings, reference: bool) -> list[np.ndarray]:
    """The frames as sent (HR with a reference, else LR), checked against the limits."""
    max_pixels = settings.max_pixels_per_frame * (SCALE * SCALE if reference else 1)
    video, images = form.get("video"), form.getlist("frames")
    if isinstance(video, UploadFile) == bool(images):
        raise ApiError(400, "missing_frames", "send one 'video' file or 'frames' files (not both)")
    if images:
        if not all(isinstance(part, UploadFile) for part in images):
            raise ApiError(400, "invalid_multipart", "each 'frames' part must be a file (with a filename)")
        _count({"frames": str(len(images))}, "frames", 1, 1, settings.max_compare_frames)
        blobs = [await part.read() for part in images]
        frames = await asyncio.to_thread(lambda: [decode_image(b, max_pixels, f"frame {i} ({images[i].filename})")
                                                  for i, b in enumerate(blobs)])
    else:
        count = _count(fields, "count", min(DEFAULT_COUNT, settings.max_compare_frames), 1,
                       settings.max_compare_frames)
        start = _count(fields, "start", 0, 0)
        if start + count > settings.max_video_frames:
            raise ApiError(413, "too_many_frames", f"start + count: frames beyond {settings.max_video_frames} "
                           "(max_video_frames) are not decoded for a compare")
        frames = await _video_frames(video, start, count, max_pixels)
    if len({f.shape for f in frames}) != 1:
        raise ApiError(400, "frame_size_mismatch", "all frames must have the same size")
    return frames


async def _video_frames(video: UploadFile, start: int, count: int, max_pixels: int) -> list[np.ndarray]:
    name = Path(video.filename or "clip.mp4").name
    suffix = Path(name).suffix.lower()
    with tempfile.TemporaryDirectory(prefix="vsr-compare-") as folder:
        path = Path(folder) / f"clip{suffix if suffix in VIDEO_EXTENSIONS else '.mp4'}"
        path.write_bytes(await video.read())

        def decode() -> list[np.ndarray]:
            info = probe_video(path)
            if info.width * info.height > max_pixels:
                raise ApiError(413, "frame_too_large", f"video: {info.width}x{info.height} frames exceed the limit "
                               f"of {max_pixels} pixels")
            return list(iter_frames(path, start + count))[start:]

        try:
            frames = await asyncio.to_thread(decode)
        except VideoReadError as exc:  # its message names the temporary file: name the upload instead
            raise ApiError(400, "invalid_video", f"video: {str(exc).replace(str(path), name)}") from None
    if not frames:
        raise ApiError(400, "invalid_field", f"start: the video has no frame {start}")
    return frames


def _choice(store: ModelStore, ref: str) -> ModelChoice | str:
    """``served`` and ``previous`` stay names (resolved on the model thread); a trial id is looked up now."""
    if ref in ("served", "previous"):
        if ref == "previous" and store.previous() is None:
            raise ApiError(409, "nothing_to_roll_back", "models: no previous model (nothing was promoted)")
        return ref
    experiment, _, trial = ref.rpartition("/")
    body = {"trial": trial, **({"experiment": experiment} if experiment else {})}
    try:
        return store.choice(body)
    except ApiError as exc:
        raise ApiError(exc.status, exc.error, f"models: {exc.detail}") from None


def _run(frames: list[np.ndarray], reference: bool, models: list[tuple[str, ModelChoice | str]],
         settings: ServeSettings, store: ModelStore, served: LoadedModel) -> dict[str, Any]:
    """On the model thread: bicubic and the two models on the same low-res frames, one after the other."""
    # imported here: OpenCV (the optical flow) costs a replica ~150 MB of its memory budget from the start
    from vsr_core.evaluate import degrade_frame
    from vsr_core.metrics.temporal import clip_flows

    hrs = [crop_to_scale(f) for f in frames] if reference else None
    lrs = [degrade_frame(hr) for hr in hrs] if reference else frames
    flows = clip_flows(hrs) if reference and len(hrs) > 1 else None
    results = [_result("bicubic", "bicubic", Upscaler.bicubic(device="cpu"), lrs, hrs, flows, {})]
    for ref, choice in models:
        if choice == "served":
            loaded = served
        elif choice == "previous":
            record = store.record
            if record is None or record.previous is None:
                raise ApiError(409, "nothing_to_roll_back", "models: no previous model (nothing was promoted)")
            loaded = store.get(settings, record.previous, served)
        else:
            loaded = store.get(settings, choice, served)
        results.append(_result(ref, _label(loaded), loaded.upscaler, lrs, hrs, flows, loaded.info))
    if reference:
        results.append({"id": "original", "label": "original", "frames": [_png(f) for f in hrs]})
    height, width = results[0]["size"]
    return {"frames": len(lrs), "width": width, "height": height, "reference": reference, "results": results}


def _label(loaded: LoadedModel) -> str:
    info = loaded.info
    trial = f"trial {info['trial_id']}" if info.get("trial_id") else info["checkpoint"]
    return f"{trial} · step {info['step']}"


def _result(ref: str, label: str, upscaler: Upscaler, lrs: list[np.ndarray], hrs: list[np.ndarray] | None,
            flows: list[np.ndarray] | None, info: dict[str, Any]) -> dict[str, Any]:
    started = time.perf_counter()
    outputs = list(upscaler.stream(lrs))
    seconds = time.perf_counter() - started
    from vsr_core.evaluate import score_frames

    scores = score_frames(outputs, hrs, SCALE, flows) if hrs is not None else None
    return {
        "id": ref, "label": label, "trial_id": info.get("trial_id"), "experiment": info.get("experiment"),
        "step": info.get("step"), "checkpoint_id": info.get("checkpoint_id"), "seconds": round(seconds, 3),
        "size": outputs[0].shape[:2], "frames": [_png(f) for f in outputs],
        "psnr": scores.psnr if scores else None,
        "mean_psnr": float(np.mean(scores.psnr)) if scores else None,
        "tof": scores.tof if scores else None, "flicker": scores.flicker if scores else None,
    }


def _png(frame: np.ndarray) -> str:
    return "data:image/png;base64," + base64.b64encode(encode_frame(frame, PNG)).decode("ascii")
