"""The checkpoint format (the seed's, unchanged) and safe, atomic checkpoint I/O.

A checkpoint is a dict with exactly these keys::

    step, epoch, model_state_dict, optimizer_state_dict, scaler_state_dict,
    scheduler_state_dict, config, training_phase ('pretrain' | 'finetune')

``config`` is the run's config as plain JSON types; its ``PRESET`` names the
model size. Everything in it is loadable with ``torch.load(weights_only=True)``,
so loading a checkpoint never executes code from the file.

**Weight averaging** (``EMA_DECAY`` > 0, ``vsr_core.engine.ema``): ``model_state_dict`` holds the
averaged weights, the ones validated and the ones every consumer loads (``model_from_checkpoint``:
the Upscaler, Serve, ``vsr export``, a fine-tune). The raw weights training continues from are
training state, like the optimizer's moments: ``optimizer_state_dict[RAW_WEIGHTS_KEY]``, which
the Trainer pops before ``optimizer.load_state_dict`` (``split_training_state``). Without EMA
(and in every checkpoint written before it existed) that key is absent and ``model_state_dict``
is the raw weights, so old checkpoints load and resume as before.

An exported model (a sweep's ``best/`` folder) is a checkpoint plus ``best.json``, a
:class:`BestInfo`: written with :func:`write_best`, read with :func:`read_best`, nowhere else.

No RNG state is stored because none is needed: every training sample is a pure
function of (seed, sample index), so ``step`` alone pins down the data stream.

A failing write (disk full, I/O error) is retried ``SAVE_ATTEMPTS`` times with a doubling
delay; then ``CheckpointError`` names the path and the errno. The previous file stays intact
and no temp file is left behind. Temp files of a killed writer (``.NAME.*.tmp``) are removed
by ``remove_stale_temp_files``, which the Trainer calls at start-up.
"""
from __future__ import annotations

import dataclasses
import errno
import json
import logging
import os
import pickle
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vsr_core.archs import VSRPPPv2

CHECKPOINT_KEYS = (
    "step",
    "epoch",
    "model_state_dict",
    "optimizer_state_dict",
    "scaler_state_dict",
    "scheduler_state_dict",
    "config",
    "training_phase",
)
TRAINING_PHASES = ("pretrain", "finetune")
RAW_WEIGHTS_KEY = "raw_model_state_dict"  # in optimizer_state_dict when model_state_dict holds averaged weights
LATEST_NAME = "latest.pth"
BEST_INFO_NAME = "best.json"
BEST_DIR = "best"  # a sweep exports its best checkpoint to <experiment>/best/ (tune/search.py)
CHECKPOINT_FILE = "checkpoint.pth"  # the engine's checkpoint inside a reported (Tune or Ray Train) checkpoint folder


SAVE_ATTEMPTS = 3  # tries of a failing checkpoint write before CheckpointError
SAVE_RETRY_DELAY_S = 1.0  # before the 2nd try; doubled before each further one

logger = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    pass


def _write_atomically(checkpoint: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)  # atomic on POSIX within one filesystem
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def save_checkpoint(checkpoint: dict[str, Any], path: str | Path) -> Path:
    """Write atomically: a crash mid-write leaves the previous file at ``path`` intact.
    An OSError is retried (SAVE_ATTEMPTS, doubling delay), then raised as CheckpointError."""
    missing = set(CHECKPOINT_KEYS) ^ set(checkpoint)
    if missing:
        raise CheckpointError(f"checkpoint keys must be exactly {CHECKPOINT_KEYS}; differing: {sorted(missing)}")
    if checkpoint["training_phase"] not in TRAINING_PHASES:
        raise CheckpointError(f"training_phase must be one of {TRAINING_PHASES}, got {checkpoint['training_phase']!r}")
    path = Path(path)
    attempt = 1
    while True:
        try:
            _write_atomically(checkpoint, path)
            return path
        except OSError as exc:
            code = errno.errorcode.get(exc.errno, "?") if exc.errno else "no errno"
            problem = f"{exc.strerror or exc} (errno {exc.errno}, {code})"
            if attempt >= SAVE_ATTEMPTS:
                raise CheckpointError(
                    f"cannot write checkpoint {path}: {problem}; tried {attempt} times. "
                    f"The previous {path.name} (if any) is unchanged."
                ) from exc
            delay = SAVE_RETRY_DELAY_S * 2 ** (attempt - 1)
            logger.warning("writing checkpoint %s failed: %s; retrying in %.1fs (attempt %d of %d)",
                           path, problem, delay, attempt + 1, SAVE_ATTEMPTS)
            time.sleep(delay)
            attempt += 1


def with_raw_weights(optimizer_state: dict[str, Any], raw_weights: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The ``optimizer_state_dict`` of a run that averages weights: the optimizer's own state plus
    the raw weights (``model_state_dict`` then holds the average)."""
    return {**optimizer_state, RAW_WEIGHTS_KEY: raw_weights}


def split_training_state(checkpoint: dict[str, Any]) -> tuple[dict, dict, dict | None]:
    """(the optimizer's own state, the raw weights training continues from, the averaged weights or
    None when the checkpoint has none)."""
    optimizer_state = dict(checkpoint["optimizer_state_dict"])
    raw_weights = optimizer_state.pop(RAW_WEIGHTS_KEY, None)
    if raw_weights is None:
        return optimizer_state, checkpoint["model_state_dict"], None
    return optimizer_state, raw_weights, checkpoint["model_state_dict"]


def remove_stale_temp_files(folder: str | Path) -> list[Path]:
    """Delete the temp files of checkpoint writes that never finished (a killed process):
    ``.NAME.pth.*.tmp`` in ``folder``. Call it only when no other process writes there."""
    stale = [p for p in Path(folder).glob(".*.pth.*.tmp") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


@dataclass(frozen=True)
class BestInfo:
    """``best.json``: what the sweep knows about the exported checkpoint in the same folder."""

    checkpoint_file: str  # the checkpoint's file name, in the folder of best.json
    metrics: dict[str, float | int | str]  # the trial's report at that checkpoint: psnr, ssim, bicubic_psnr, ...
    step: int | None = None
    trial_id: str | None = None
    trial_path: str | None = None
    config: dict[str, Any] = field(default_factory=dict)  # the trial's searched keys and its base_config

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> "BestInfo":
        """Checked; keys this version does not know are ignored. Raises ValueError."""
        if not isinstance(data, dict):
            raise ValueError("expected a JSON object")
        name = data.get("checkpoint_file")
        if not isinstance(name, str) or not name or Path(name).name != name:
            raise ValueError(f"checkpoint_file must be a file name in the same folder, got {name!r}")
        metrics = data.get("metrics", {})
        if not isinstance(metrics, dict) or not all(isinstance(k, str) for k in metrics):
            raise ValueError(f"metrics must be an object of name: value, got {type(metrics).__name__}")
        step = data.get("step")
        if step is not None and (not isinstance(step, int) or isinstance(step, bool)):
            raise ValueError(f"step must be an integer or null, got {step!r}")
        if not isinstance(data.get("config", {}), dict):
            raise ValueError("config must be an object")
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known} | {"metrics": dict(metrics)})


def write_best(folder: str | Path, info: BestInfo) -> Path:
    """Write ``folder/best.json`` atomically."""
    path = Path(folder) / BEST_INFO_NAME
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(info.to_dict(), indent=2, default=str) + "\n")
    os.replace(tmp, path)
    return path


def read_best(path: str | Path) -> BestInfo | None:
    """The :class:`BestInfo` of an exported model: ``path`` is its folder, or a checkpoint file (then
    only a ``best.json`` beside it that names this file counts). None when there is none; raises
    CheckpointError when ``best.json`` exists but is unreadable or malformed."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    info_file = folder / BEST_INFO_NAME
    if not info_file.is_file():
        return None
    try:
        info = BestInfo.from_dict(json.loads(info_file.read_text()))
    except (OSError, ValueError) as exc:  # JSONDecodeError is a ValueError
        raise CheckpointError(f"cannot read {info_file}: {exc}") from exc
    if not path.is_dir() and info.checkpoint_file != path.name:
        return None
    return info


def resolve_checkpoint_path(path: str | Path) -> Path:
    """Accept a checkpoint file, a run folder (its ``latest.pth``), or an exported ``best/`` folder
    (also the folder holding ``best/``)."""
    path = Path(path)
    if path.is_dir():
        for folder in (path, path / BEST_DIR):
            info = read_best(folder) if folder.is_dir() else None
            if info is not None:
                return folder / info.checkpoint_file
        if (path / LATEST_NAME).is_file():
            return path / LATEST_NAME
        raise CheckpointError(f"no checkpoint in folder {path}: expected {BEST_INFO_NAME} or {LATEST_NAME}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = resolve_checkpoint_path(path)
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:  # a global outside the weights-only allow-list: possibly code
        found = re.search(r"(?:unsupported|Unsupported) (?:GLOBAL|global)[: ]+([^\s]+)", str(exc))
        what = f" ({found.group(1)})" if found else ""
        raise CheckpointError(
            f"refusing to load checkpoint {path}: it holds Python objects other than tensors and plain "
            f"data{what}, and unpickling them could run code. Only weights-only checkpoints are accepted."
        ) from None
    except Exception as exc:  # truncated or corrupt files ...
        raise CheckpointError(f"cannot load checkpoint {path} (truncated, corrupt or not a checkpoint): {exc}") from exc
    if not isinstance(checkpoint, dict) or not set(CHECKPOINT_KEYS) <= set(checkpoint):
        keys = sorted(checkpoint) if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise CheckpointError(f"{path} is not a VSR checkpoint: expected keys {CHECKPOINT_KEYS}, found {keys}")
    return checkpoint


def model_from_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[VSRPPPv2, dict]:
    """Build the model the checkpoint was trained with and load its weights (eval mode)."""
    checkpoint = load_checkpoint(path, map_location)
    preset = checkpoint["config"].get("PRESET", "full")
    model = VSRPPPv2.from_preset(preset)
    model.load_state_dict(checkpoint["model_state_dict"])
    model.eval()
    return model, checkpoint
