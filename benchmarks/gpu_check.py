"""Check every CUDA path of the project on a GPU machine, in one command (meant to take under 5
minutes on one GPU: an estimate from the CPU runs and the model's FLOPs, not yet measured on a GPU).

    python benchmarks/gpu_check.py                      # all parts -> results/gpu_check.json
    python benchmarks/gpu_check.py --only training serve --out /tmp/check.json

No GPU is lent to the development machines, so these paths had never run:

  training       50 optimizer steps of the engine's ``Trainer.fit`` in fp16 autocast + GradScaler
                 (the shipped sweep_base config: small preset, the sample clips; PERCEPTUAL_WEIGHT 0 unless the
                 ImageNet VGG19 weights are on disk), its validation and checkpoint; the final scale
  precision      ``Upscaler`` fp16 against fp32 on the same windows (a trained checkpoint, the sample
                 validation clip): Y-PSNR of each against the original frames and their difference
  speed          full and small preset frames/s at LR 180x320 and 360x640, fp16 and fp32 (``Upscaler.stream``
                 on decoded frames, as bench_inference); ``vsr upscale`` end to end on a short clip
  data_parallel  2 Ray Train workers with a GPU each (NCCL) through ``fit_on_ray_train`` (why this path and
                 not torch.distributed directly: gpu_parts.py); skipped with fewer than 2 GPUs
  serve          the Serve app with ``num_gpus: 1``: one window over HTTP against the same model in-process

Each part is a function of gpu_parts.py returning a dict; it passes when all its ``checks`` hold. A part
that raises is recorded with its error and the others still run. The JSON summary (machine record with
the GPUs, every part's findings) is printed and written to results/gpu_check.json or ``--out``. Exit
code: 0 when no part failed, 1 when one did. Without CUDA nothing runs: ``{"cuda": false, ...}`` with
the machine record, exit code 0. Timings are medians after warm-up, candidates round-robin (common.py);
nothing asserts a timing.
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch

from common import RESULTS_DIR, ROOT, load_average, machine_info
from gpu_parts import (PartSkipped, check_data_parallel, check_precision, check_serve, check_speed, check_training,
                       train_config)

PARTS = ("training", "precision", "speed", "data_parallel", "serve")
DEFAULT_OUT = RESULTS_DIR / "gpu_check.json"
# The small preset after 60 training steps (tests/test_precision.py says how it was made): a model whose
# residual branch does real work, so fp16 against fp32 compares more than two bilinear anchors.
TRAINED_SMALL = ROOT / "tests" / "data" / "small_60steps.pth"
DEVICE = "cuda"
TRAINING_STEPS = 50
DATA_PARALLEL_STEPS = 10
PRECISION_FRAMES = 8
TRACEBACK_CHARS = 3000


# --- one part ----------------------------------------------------------------------------------------------
def run_part(fn: Callable[[], dict]) -> dict:
    """``fn()``'s findings with a ``status``: passed (every check holds), failed (a check does not, or it
    raised: the error and the end of its traceback), or skipped (``PartSkipped``); its seconds and, on
    CUDA, the peak memory this process allocated meanwhile."""
    if torch.cuda.is_initialized():
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    try:
        result = fn()
        failed = [name for name, ok in result.get("checks", {}).items() if not ok]
        result = {"status": "failed" if failed else "passed", **({"failed_checks": failed} if failed else {}),
                  **result}
    except PartSkipped as exc:
        result = {"status": "skipped", "reason": str(exc)}
    except Exception as exc:  # noqa: BLE001 - recorded; the other parts still run
        result = {"status": "failed", "error": f"{type(exc).__name__}: {exc}",
                  "traceback": traceback.format_exc()[-TRACEBACK_CHARS:]}
    result["seconds"] = round(time.perf_counter() - start, 1)
    if torch.cuda.is_initialized():
        result["peak_cuda_mib"] = round(torch.cuda.max_memory_allocated() / 2**20)
        torch.cuda.empty_cache()
    gc.collect()
    return result


def run_parts(parts: dict[str, Callable[[], dict]]) -> dict[str, dict]:
    results = {}
    for name, fn in parts.items():
        print(f"gpu_check: {name} ...", file=sys.stderr, flush=True)
        results[name] = run_part(fn)
        print(f"gpu_check: {name} {results[name]['status']} ({results[name]['seconds']} s)", file=sys.stderr,
              flush=True)
    return results


def passed(results: dict[str, dict]) -> bool:
    return all(result["status"] != "failed" for result in results.values())


# --- the parts on this machine ------------------------------------------------------------------------------
class RayInstance:
    """A local Ray, started by the first part that needs it (a failure to start fails that part only)."""

    def __init__(self) -> None:
        self.started = False

    def ensure(self) -> None:
        import ray

        if not ray.is_initialized():
            ray.init(include_dashboard=False, log_to_driver=False)
            self.started = True

    def stop(self) -> None:
        if self.started:
            import ray

            ray.shutdown()
            self.started = False


def sample_validation_frames(count: int) -> list:
    from vsr_core.data.samples import DEFAULT_VAL_CLIP, sample_clip
    from vsr_core.data.video_io import iter_frames

    return list(iter_frames(sample_clip(DEFAULT_VAL_CLIP), count))


def build_parts(args: argparse.Namespace, work: Path, ray: RayInstance) -> dict[str, Callable[[], dict]]:
    """Every part as a call with this machine's settings (each builds its inputs when it runs)."""
    def with_ray(fn: Callable[[], dict]) -> dict:
        ray.ensure()
        return fn()

    return {
        "training": lambda: check_training(train_config(work / "training", TRAINING_STEPS, DEVICE)),
        "precision": lambda: check_precision(args.checkpoint, DEVICE, sample_validation_frames(PRECISION_FRAMES)),
        "speed": lambda: check_speed(DEVICE, work / "speed"),
        "data_parallel": lambda: with_ray(lambda: check_data_parallel(
            train_config(work / "ddp_run", DATA_PARALLEL_STEPS, DEVICE), work / "ray_train")),
        "serve": lambda: with_ray(lambda: check_serve(args.checkpoint, DEVICE, num_gpus=1)),
    }


# --- the summary --------------------------------------------------------------------------------------------
def library_version(read: Callable[[], object]) -> object:
    """A library's version, or why it cannot be read (e.g. a cuDNN that does not match torch's build):
    the record must come out whatever the machine, and such a mismatch is worth seeing in it."""
    try:
        return read()
    except Exception as exc:  # noqa: BLE001
        return f"unavailable: {type(exc).__name__}: {exc}"[:300]


def gpu_record() -> dict:
    devices = [torch.cuda.get_device_properties(i) for i in range(torch.cuda.device_count())]
    return {"count": len(devices), "cuda_runtime": torch.version.cuda,
            "cudnn": library_version(torch.backends.cudnn.version),
            "nccl": library_version(lambda: ".".join(map(str, torch.cuda.nccl.version()))),
            "devices": [{"name": p.name, "memory_gib": round(p.total_memory / 2**30, 1),
                         "compute_capability": f"{p.major}.{p.minor}"} for p in devices]}


def json_safe(value):
    """Strict JSON: NaN and infinities as strings ("nan", "inf"), tuples as lists."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def write_summary(summary: dict, path: Path) -> str:
    """The summary as JSON text, also written (atomically) to ``path``."""
    text = json.dumps(json_safe(summary), indent=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text + "\n")
    os.replace(tmp, path)
    return text


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where the JSON summary goes (default "
                        "benchmarks/results/gpu_check.json)")
    parser.add_argument("--only", nargs="+", choices=PARTS, metavar="PART",
                        help=f"run only these parts, of: {', '.join(PARTS)}")
    parser.add_argument("--checkpoint", type=Path, default=TRAINED_SMALL,
                        help="the model of the precision and serve parts (default: tests/data/small_60steps.pth)")
    args = parser.parse_args(argv)
    if not args.checkpoint.exists():
        parser.error(f"--checkpoint {args.checkpoint} does not exist")
    if args.out.is_dir():
        parser.error(f"--out {args.out} is a folder; give the JSON file's path")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    summary: dict = {"check": "gpu_check", "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                     "cuda": torch.cuda.is_available(), "machine": machine_info()}
    if not summary["cuda"]:
        summary.update(passed=None, note="no CUDA device here: nothing was checked; run this on a GPU machine")
    else:
        summary["machine"]["gpus"] = gpu_record()
        ray = RayInstance()
        with tempfile.TemporaryDirectory(prefix="vsr-gpu-check-") as work:
            parts = build_parts(args, Path(work), ray)
            try:
                summary["parts"] = run_parts({name: parts[name] for name in PARTS if name in (args.only or PARTS)})
            finally:
                ray.stop()
        summary["passed"] = passed(summary["parts"])
    summary["machine"]["load_average_at_end"] = load_average()
    summary["wall_time_s"] = round(time.perf_counter() - start, 1)
    print(write_summary(summary, args.out), flush=True)
    return 1 if summary["passed"] is False else 0


if __name__ == "__main__":
    sys.exit(main())
