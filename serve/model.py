"""The model a replica serves: loaded from the checkpoint in the settings, described for
/v1/model, and reloaded only when the file, its ``revision`` or the Upscaler options change."""
from __future__ import annotations

import io
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from serve.settings import ServeSettings
from vsr_core.archs import NUM_FRAMES, SCALE, count_parameters
from vsr_core.checkpoint import BEST_INFO_NAME, resolve_checkpoint_path
from vsr_core.inference import Upscaler

logger = logging.getLogger("ray.serve")


@dataclass(frozen=True)
class LoadedModel:
    upscaler: Upscaler
    info: dict[str, Any]  # what /v1/model reports
    key: tuple  # identifies checkpoint file version + Upscaler options; equal key = no reload needed


def model_key(settings: ServeSettings) -> tuple:
    if not settings.checkpoint:
        raise ValueError("user_config must set 'checkpoint' (a .pth file, a run folder or a best/ folder)")
    path = resolve_checkpoint_path(settings.checkpoint).resolve()
    stat = path.stat()
    return (str(path), stat.st_mtime_ns, stat.st_size, settings.revision, settings.device, settings.tile,
            settings.tile_overlap)


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
        key = model_key(settings)
        path = Path(key[0])
        upscaler = Upscaler.from_checkpoint(path, **options)
        meta = upscaler.checkpoint_info
        if model_key(settings) == key:
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



def model_headers(loaded: LoadedModel) -> dict[str, str]:
    return {"X-VSR-Checkpoint": loaded.info["checkpoint"], "X-VSR-Step": str(loaded.info["step"])}


def encode_png(frame: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def replica_cpus() -> float | None:
    try:
        import ray

        if ray.is_initialized():
            return ray.get_runtime_context().get_assigned_resources().get("CPU")
    except Exception:  # noqa: BLE001 - not in a Ray worker
        pass
    return None
