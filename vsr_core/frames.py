"""Bottom layer: frame windows, tensor <-> uint8 conversion, device and precision choice.

Everything above (data, inference, the trainer, the video engine, Serve) uses these;
this module imports nothing of the project but the model constants.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import torch

from vsr_core.archs import CENTER, NUM_FRAMES
from vsr_core.archs.subpixels import shuffle_subpixels
from vsr_core.cpu import cpu_flags, cpu_model

logger = logging.getLogger(__name__)


def window_indices(center: int, num_frames: int) -> list[int]:
    """Frame indices of the 5-frame window around ``center``, reflected at the sequence
    borders without repeating the border frame: center 0 -> [2, 1, 0, 1, 2]."""
    if num_frames <= 1:
        return [0] * NUM_FRAMES
    period = 2 * (num_frames - 1)
    indices = []
    for offset in range(-CENTER, CENTER + 1):
        j = (center + offset) % period
        indices.append(period - j if j >= num_frames else j)
    return indices


def to_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 (or uint16, deep video) [...,H,W,3] -> float [...,3,H,W] in [0,1]."""
    scale = 65535 if frames.dtype == np.uint16 else 255
    t = torch.from_numpy(np.ascontiguousarray(frames).astype(np.int32) if scale == 65535 else
                         np.ascontiguousarray(frames)).float().div_(scale)
    return t.movedim(-1, -3)


def to_uint8(frames: torch.Tensor, in_place: bool = False) -> np.ndarray:
    """float [...,3,H,W] in [0,1] -> uint8 [...,H,W,3] (clamped, rounded).

    ``in_place=True`` reuses ``frames``' memory for the arithmetic (the caller's tensor is
    overwritten); the result is the same."""
    with torch.inference_mode():
        work = frames.detach() if in_place else frames.detach().clone()
        return work.clamp_(0, 1).mul_(255).round_().to(torch.uint8).movedim(-3, -1).cpu().numpy()


def to_frames(frames: torch.Tensor, dtype: np.dtype, in_place: bool = False) -> np.ndarray:
    """float [...,3,H,W] in [0,1] -> ``dtype`` (uint8, or uint16 for deep video) [...,H,W,3]."""
    if dtype != np.uint16:
        return to_uint8(frames, in_place)
    with torch.inference_mode():
        work = frames.detach() if in_place else frames.detach().clone()
        scaled = work.clamp_(0, 1).mul_(65535).round_().to(torch.int32).movedim(-3, -1).cpu().numpy()
    return scaled.astype(np.uint16)


def subpixels_to_frames(subpixels: torch.Tensor, dtype: np.dtype = np.uint8) -> np.ndarray:
    """Sub-pixel channels [B,27,H,W] (``archs.subpixels``) -> ``dtype`` frames [B,3H,3W,3]:
    ``to_frames`` of their shuffle, the same values, cheaper: the arithmetic (clamp, scale,
    round; in place on ``subpixels``) runs on the model's own layout, and only the integers
    are shuffled into frames."""
    deep = dtype == np.uint16
    with torch.inference_mode():
        values = subpixels.detach().clamp_(0, 1).mul_(65535 if deep else 255).round_()
        out = shuffle_subpixels(values.to(torch.int32 if deep else torch.uint8)).cpu().numpy()
    return out.astype(np.uint16) if deep else out


def pick_device(device: str = "auto") -> torch.device:
    """'auto' -> CUDA when available, else CPU; anything else as torch names it."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def cache_root() -> Path:
    """Where per-machine results live (decoded clips, the precision measurement):
    ``$VSR_CACHE_DIR`` or ``~/.cache/vsr_core``."""
    return Path(os.environ.get("VSR_CACHE_DIR", Path.home() / ".cache" / "vsr_core"))


# --- precision ----------------------------------------------------------------------------------
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
PRECISION_ENV = "VSR_PRECISION"  # what "auto" means on this machine, when set (e.g. fp32 for the test suite)
_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# CPU flags of native bf16 arithmetic (x86: AVX-512 BF16, AMX; Arm: the BF16 extension). Without
# them oneDNN emulates bf16: a conv under bf16 autocast ran 5x slower than fp32 with oneDNN limited
# to AVX2, ~10x on an AVX2-only CPU.
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")
# bf16 must beat fp32 by this much in the start-up measurement: a best-of-20 measurement on a
# busy machine moves by ~10%, and a 20% gain on one conv is still a gain on the whole model.
BF16_MIN_SPEEDUP = 1.2


def native_bf16() -> bool | None:
    """Whether the CPU reports native bf16 arithmetic (None: the flags are unknown)."""
    flags = cpu_flags()
    return None if flags is None else bool(flags & set(NATIVE_BF16_FLAGS))


def measure_bf16_speedup(repeats: int = 20) -> float:
    """fp32 time / bf16-autocast time of a 64-channel 3x3 channels-last conv (the model's main
    work) at 64x96, interleaved, best of ``repeats``, on one thread (~0.1 s). The ratio is a
    property of the CPU's vector units; one thread keeps it steady on a busy machine, where a
    team of threads stalls whenever another process takes one of its cores, and the best run
    is what the CPU can do (other processes only ever make a run slower)."""
    conv = torch.nn.Conv2d(64, 64, 3, padding=1).eval()
    x = torch.rand(1, 64, 64, 96).contiguous(memory_format=torch.channels_last)
    best = {"fp32": float("inf"), "bf16": float("inf")}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            for i in range(repeats + 1):
                for name in best:
                    with autocast(torch.device("cpu"), name):
                        start = time.perf_counter()
                        conv(x)
                        elapsed = time.perf_counter() - start
                    if i:  # the first round is the warm-up
                        best[name] = min(best[name], elapsed)
    finally:
        torch.set_num_threads(threads)
    return best["fp32"] / best["bf16"]


def _machine_key() -> str:
    flags = sorted((cpu_flags() or set()) & set(NATIVE_BF16_FLAGS))
    # oneDNN can be told to use fewer instructions than the CPU has (e.g. ONEDNN_MAX_CPU_ISA=AVX2):
    # then bf16 is emulated and slow, whatever the flags say
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "all"
    return f"{cpu_model()}|{','.join(flags)}|torch {torch.__version__}|isa {isa}"


def cpu_bf16_speedup() -> float:
    """``measure_bf16_speedup`` once per machine (CPU model, its bf16 flags, torch version),
    cached in ``cache_root()/precision.json``."""
    path = cache_root() / "precision.json"
    key = _machine_key()
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        cached = {}
    if isinstance(cached, dict) and isinstance(cached.get(key), dict) and "bf16_speedup" in cached[key]:
        return float(cached[key]["bf16_speedup"])
    speedup = measure_bf16_speedup()
    logger.info("bf16 autocast measured %.2fx the speed of fp32 on this CPU (cached in %s)", speedup, path)
    cached = cached if isinstance(cached, dict) else {}
    cached[key] = {"bf16_speedup": round(speedup, 3), "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cached, indent=1))
        os.replace(tmp, path)  # atomic: processes starting together never read half a file
    except OSError as exc:
        logger.warning("cannot cache the precision measurement in %s: %s", path, exc)
    return speedup


def resolve_precision(precision: str, device: torch.device, *, training: bool = False,
                      allowed: tuple[str, ...] = PRECISIONS, where: str = "here") -> str:
    """The precision a forward pass runs in: ``fp32``, ``bf16`` or ``fp16``.

    ``auto`` (or ``$VSR_PRECISION`` when ``auto`` is asked for and it is set): fp16 on CUDA;
    on a CPU, bf16 when the CPU has native bf16 (its flags) *and* bf16 measured at least
    ``BF16_MIN_SPEEDUP`` x faster than fp32 (``cpu_bf16_speedup``, once per machine), else
    fp32. Training asks with ``training=True``: there ``auto`` is fp16 on CUDA and fp32 on a
    CPU (bf16 training is an explicit choice). ``allowed`` are the precisions the caller (a
    backend) can run; ``auto`` then falls back to fp32, an explicit other choice is an error that
    names ``where``.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    if precision == "auto":
        machine_choice = os.environ.get(PRECISION_ENV, "auto") or "auto"
        if machine_choice not in PRECISIONS:
            raise ValueError(f"${PRECISION_ENV} must be one of {', '.join(PRECISIONS)}; got {machine_choice!r}")
        if machine_choice != "auto":  # what auto means here; fp32 where the caller cannot run it
            return machine_choice if machine_choice in allowed else "fp32"
    elif precision not in allowed:
        raise ValueError(f"precision {precision!r} is not available {where}; choose one of {', '.join(allowed)}")
    else:
        return precision
    if device.type == "cuda":
        choice = "fp16"
    elif device.type != "cpu" or training or native_bf16() is False:
        choice = "fp32"
    else:
        choice = "bf16" if cpu_bf16_speedup() >= BF16_MIN_SPEEDUP else "fp32"
    return choice if choice in allowed else "fp32"


def autocast(device: torch.device, precision: str | None = None):
    """The context every forward pass runs in. ``precision`` comes from ``resolve_precision``
    (fp32: plain; bf16/fp16: autocast to that type). None keeps the device's safe default
    without measuring anything: fp16 autocast on CUDA, fp32 elsewhere."""
    if precision is None:
        precision = "fp16" if device.type == "cuda" else "fp32"
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=_AUTOCAST_DTYPES[precision])
