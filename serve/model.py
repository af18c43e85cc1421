"""The model a replica serves: loaded from the checkpoint in the settings, described for
/v1/model, and reloaded only when the file, its ``revision`` or the Upscaler options change."""
from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from serve.settings import ServeSettings
from vsr_core.archs import NUM_FRAMES, SCALE, count_parameters
from vsr_core.checkpoint import CheckpointError, read_best, resolve_checkpoint_path
from vsr_core.frames import pick_device
from vsr_core.inference import Upscaler
from vsr_core.memory import default_memory_budget
from vsr_core.options import InferenceOptions

logger = logging.getLogger("ray.serve")


@dataclass(frozen=True)
class LoadedModel:
    upscaler: Upscaler
    info: dict[str, Any]  # what /v1/model reports
    key: tuple  # identifies checkpoint file version + Upscaler options (model_key); equal key = no reload needed
    path: Path  # the checkpoint file (never shown to clients unless expose_paths)


def model_key(settings: ServeSettings) -> tuple:
    if not settings.checkpoint:
        raise ValueError("user_config must set 'checkpoint' (a .pth file, a run folder or a best/ folder)")
    path = resolve_checkpoint_path(settings.checkpoint).resolve()
    stat = path.stat()
    # the Upscaler's options, and what /v1/model says besides them (the video jobs' backend, the path)
    return (str(path), stat.st_mtime_ns, stat.st_size, settings.revision, window_options(settings), settings.backend,
            settings.expose_paths)


def window_options(settings: ServeSettings) -> InferenceOptions:
    """The replica's own Upscaler (windows and streams): the settings' options, but on torch where
    they ask for torch-compile (windows come in every size, one or a few at a time: a compile per
    size would stall them), within ``window_budget``, and with the library's batch size
    (``batch_size`` is the video jobs')."""
    options = settings.inference_options()
    return replace(options, backend="torch" if options.backend == "torch-compile" else options.backend,
                   memory_budget=window_budget(settings), batch_size=InferenceOptions().batch_size)


def _file_id(path: Path) -> str:
    """A short content hash: names the loaded weights without revealing where they live."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()[:12]


def _best_metrics(path: Path) -> tuple[dict | None, str | None]:
    """(validation metrics, Tune trial id) from the best.json that describes this file, if any."""
    try:
        best = read_best(path)
    except CheckpointError as exc:
        logger.warning("ignoring %s", exc)
        return None, None
    return (dict(best.metrics), best.trial_id) if best else (None, None)


def load_model(settings: ServeSettings) -> LoadedModel:
    """Load the checkpoint completely (blocking; run it off the event loop)."""
    options = window_options(settings)
    for _ in range(3):  # a run's latest.pth may be replaced (atomically) while we read it
        key = model_key(settings)
        path = Path(key[0])
        upscaler = Upscaler.from_checkpoint(path, options)
        meta = upscaler.checkpoint_info
        if model_key(settings) == key:
            break
    else:
        raise RuntimeError(f"checkpoint {path.name} kept changing while it was loaded")
    metrics, trial_id = _best_metrics(path)
    info = {
        "checkpoint": path.name,
        "checkpoint_id": _file_id(path),
        "step": int(meta["step"]),
        "epoch": int(meta["epoch"]),
        "training_phase": meta["training_phase"],
        "preset": meta["config"].get("PRESET", "full"),
        "scale": SCALE,
        "num_frames": NUM_FRAMES,
        "parameters": count_parameters(upscaler.model),
        "architecture": upscaler.model.spec.to_dict(),  # channels, blocks_per_branch: what the preset is
        "metrics": metrics,
        "trial_id": trial_id,
        "device": str(upscaler.device),
        "memory_budget_mb": replica_budget(settings) // 2**20,
        "precision": upscaler.precision,
        "backend": settings.backend,  # video jobs
        "window_backend": upscaler.backend,
        "loaded_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if settings.expose_paths:  # an operator's choice (e.g. a private deployment); off by default
        info["checkpoint_path"] = str(path)
    return LoadedModel(upscaler, info, key, path)


def replica_budget(settings: ServeSettings) -> int:
    """The replica's memory budget in bytes: ``memory_budget_mb``, else derived from the memory
    (or the share of the node's CPUs) Ray gave the replica (``vsr_core.memory``)."""
    budget = settings.memory_budget
    return default_memory_budget(pick_device(settings.device)) if budget == "auto" else budget


def window_budget(settings: ServeSettings) -> int:
    """What the model may use: the replica's budget minus the decoded windows of one full batch
    of requests, which the replica holds besides what the Upscaler allocates."""
    return replica_budget(settings) - settings.max_batch_size * NUM_FRAMES * 3 * settings.max_pixels_per_frame


def model_headers(loaded: LoadedModel) -> dict[str, str]:
    return {"X-VSR-Checkpoint": loaded.info["checkpoint_id"], "X-VSR-Step": str(loaded.info["step"])}


def replica_cpus() -> float | None:
    try:
        import ray

        if ray.is_initialized():
            return ray.get_runtime_context().get_assigned_resources().get("CPU")
    except Exception:  # noqa: BLE001 - not in a Ray worker
        pass
    return None
