"""The five parts of ``gpu_check.py``: each a function that runs one CUDA path of the project
through its public API and returns a dict of findings with ``checks`` (criterion -> bool).

Every function takes its device (and model size) as parameters, so the tests run each of them
on the CPU with the tiny preset: the code that will meet the GPU has run here, only the device
differs. ``PartSkipped`` says a part cannot run on this machine (e.g. one GPU for two workers).

Data-parallel training goes through the engine's Ray Train path (``fit_on_ray_train``), not
``torch.distributed`` directly: that is what ``vsr train --workers N --gpus-per-worker 1`` and
data-parallel Tune trials run, and on GPUs it adds what a direct process group would skip:
Ray's GPU assignment per worker, ``ray.train.torch.get_device``, Ray Train's NCCL process group
(its TorchConfig default with ``use_gpu``) and the rank-0 checkpoint through Ray Train's storage.
That the workers really all-reduced is seen in their reports: every worker reports the same
loss, a mean agreed in the step's all-reduce (each trained on its own share of the batch).
"""
from __future__ import annotations

import io
import json
import math
import statistics
import time
from pathlib import Path

import numpy as np
import requests
import torch
from PIL import Image

from bench_inference import random_model, synthetic_frames, windows_of
from bench_pipeline import overlapped_upscale, run_cli, save_model_checkpoint, write_clip
from common import ROOT, measure

from vsr_core.archs import SCALE
from vsr_core.checkpoint import LATEST_NAME, load_checkpoint
from vsr_core.config import TrainConfig
from vsr_core.configs import SWEEP_BASE, shipped_path
from vsr_core.data.degradation import crop_to_scale
from vsr_core.data.video_io import iter_frames
from vsr_core.engine.hooks import TrainingHooks
from vsr_core.engine.trainer import Trainer
from vsr_core.evaluate import degrade_frame
from vsr_core.frames import to_uint8
from vsr_core.inference import Upscaler
from vsr_core.losses.perceptual import imagenet_vgg19_cache_path
from vsr_core.metrics import psnr
from vsr_core.netutil import free_port

# fp16 may move the Y-PSNR by at most this much: the guard bf16 passes (tests/test_precision.py);
# fp16 keeps 3 more mantissa bits than bf16, so it should be closer still, unless something overflows.
QUALITY_TOLERANCE_DB = 0.05
# The replica against the same model in this process, in gray levels: lossless PNG both ways, but
# another process may pick other GPU kernels, whose fp16 roundings differ by a level here and there.
SERVE_TOLERANCE = 2
SERVE_APP = "vsr-gpu-check"


class PartSkipped(Exception):
    """This part cannot run on this machine; the reason is the message."""


# --- training: fp16 autocast + GradScaler -------------------------------------------------------------
def train_config(output_dir: Path, steps: int, device: str = "cuda", **changes) -> TrainConfig:
    """The shipped ``sweep_base`` config (what Tune trials train: small preset, the sample clips), ``steps``
    optimizer steps in fp16 with one validation and one checkpoint at the end. The perceptual term
    is on (the default weight) only when ImageNet VGG19 weights are on disk: nothing is downloaded."""
    values = TrainConfig.from_json(shipped_path(SWEEP_BASE)).to_dict()
    vgg_offline = imagenet_vgg19_cache_path().is_file()
    values.update({"OUTPUT_DIR": str(output_dir), "DEVICE": device, "PRECISION": "fp16", "MAX_STEPS": steps,
                   "VAL_STEP_EVERY": steps, "SAVE_STEP_EVERY": steps, "MILESTONE_EVERY": 0,
                   "PERCEPTUAL_WEIGHT": TrainConfig.perceptual_weight if vgg_offline else 0.0})
    values.update({k.upper(): v for k, v in changes.items()})
    return TrainConfig.from_dict(values)


class StepRecorder(TrainingHooks):
    """Each step's loss, samples/s and the GradScaler's scale after it (observes only)."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.scales: list[float] = []
        self.samples_per_s: list[float] = []

    def on_step(self, trainer: Trainer, metrics) -> None:
        self.losses.append(metrics.loss_total)
        self.scales.append(trainer.scaler.get_scale())
        self.samples_per_s.append(metrics.samples_per_s)


def check_training(config: TrainConfig) -> dict:
    """``Trainer(config).fit()``: every loss finite, the scaler's skipped steps (its scale halves
    on each overflow), the weights changed, validation finite, the checkpoint holds the scale."""
    trainer = Trainer(config)
    initial_scale = trainer.scaler.get_scale()
    before = [p.detach().clone() for p in trainer.model.parameters()]
    recorder = StepRecorder()
    validation = trainer.fit(recorder)
    changed = any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))
    scale, losses = trainer.scaler.get_scale(), recorder.losses
    overflows = sum(new < old for old, new in zip([initial_scale] + recorder.scales, recorder.scales))
    saved = load_checkpoint(trainer.output_dir / LATEST_NAME)
    return {
        "device": str(trainer.device), "precision": trainer.precision, "preset": config.preset,
        "steps": trainer.step, "effective_batch": config.effective_batch_size, "patch_size": config.patch_size,
        "perceptual_weight": config.perceptual_weight,
        "loss_mean_first_10": float(np.mean(losses[:10])) if losses else None,
        "loss_mean_last_10": float(np.mean(losses[-10:])) if losses else None, "grad_scale_initial": initial_scale,
        "grad_scale_final": scale, "scaler_skipped_steps": overflows,
        "samples_per_s_median": statistics.median(recorder.samples_per_s) if losses else None,
        "validation": None if validation is None else {"y_psnr": validation.psnr, "gain_db": validation.gain},
        "checks": {
            "fp16 autocast with an enabled GradScaler": trainer.precision == "fp16" and trainer.scaler.is_enabled(),
            f"all {config.max_steps} steps ran with a finite loss": len(losses) == config.max_steps
            and trainer.skipped_steps == 0 and all(math.isfinite(v) for v in losses),
            "the optimizer changed the weights (not every step overflowed)": changed and overflows < len(losses),
            "final scale finite and > 0": math.isfinite(scale) and scale > 0,
            "validation Y-PSNR finite": validation is not None and math.isfinite(validation.psnr),
            "the checkpoint holds the step and the scaler's state": saved["step"] == trainer.step
            and saved["scaler_state_dict"] == trainer.scaler.state_dict(),
        },
    }


# --- inference: fp16 against fp32 ---------------------------------------------------------------------
def upscale_all(upscaler: Upscaler, windows: torch.Tensor) -> list[np.ndarray]:
    """Every window through ``upscale_windows`` (the Serve path), ``batch_size`` at a time -> uint8 frames."""
    step = upscaler.options.batch_size
    return [frame for i in range(0, len(windows), step)
            for frame in to_uint8(upscaler.upscale_windows(windows[i:i + step]))]


def mean_y_psnr(outputs: list[np.ndarray], references: list[np.ndarray]) -> float:
    return float(np.mean([psnr(a, b, SCALE, y_channel=True) for a, b in zip(outputs, references)]))


def check_precision(checkpoint: Path, device: str, hr_frames: list[np.ndarray], batch_size: int = 4) -> dict:
    """The same windows (``hr_frames`` downsampled 3x) through Upscalers of the same checkpoint in
    fp16 and fp32: Y-PSNR of each against the original frames, their difference, and how far the
    fp16 frames are from the fp32 ones (Y-PSNR, gray levels)."""
    hr = [crop_to_scale(frame) for frame in hr_frames]
    windows = windows_of([degrade_frame(frame) for frame in hr])
    upscalers = {p: Upscaler.from_checkpoint(checkpoint, device=device, precision=p, batch_size=batch_size)
                 for p in ("fp16", "fp32")}
    upscalers["bicubic"] = Upscaler.bicubic(device=device, batch_size=batch_size)
    outputs = {name: upscale_all(upscaler, windows) for name, upscaler in upscalers.items()}
    y_psnr = {name: mean_y_psnr(frames, hr) for name, frames in outputs.items()}
    difference = y_psnr["fp16"] - y_psnr["fp32"]
    agreement = [psnr(a, b, SCALE, y_channel=True) for a, b in zip(outputs["fp16"], outputs["fp32"])]
    levels = max(int(np.abs(a.astype(np.int16) - b).max()) for a, b in zip(outputs["fp16"], outputs["fp32"]))
    return {
        "device": str(upscalers["fp16"].device), "preset": upscalers["fp32"].checkpoint_info["config"].get("PRESET"),
        "frames": len(hr), "hr_size": list(hr[0].shape[:2]), "y_psnr_db": y_psnr,
        "fp16_minus_fp32_db": difference, "fp16_vs_fp32_worst_frame_y_psnr_db": min(agreement),
        "fp16_vs_fp32_max_diff_levels": levels,
        "checks": {
            "the fp16 Upscaler runs fp16": upscalers["fp16"].precision == "fp16",
            f"fp16 within {QUALITY_TOLERANCE_DB} dB Y-PSNR of fp32": abs(difference) <= QUALITY_TOLERANCE_DB,
            "fp16 really ran (its frames differ from fp32's)": levels > 0,
        },
    }


# --- speed ------------------------------------------------------------------------------------------------
def model_speed(device: str, preset: str, height: int, width: int, frames: int, batch_size: int = 4,
                precisions: tuple[str, ...] = ("fp16", "fp32"), repeats: int = 3) -> dict:
    """frames/s of ``Upscaler.stream`` over decoded frames (as bench_inference), per precision, round-robin."""
    model, clip = random_model(preset), synthetic_frames(frames, height, width)
    # the budget `vsr upscale` uses by default: the full preset at 360x640 may not fit a small GPU whole
    upscalers = {p: Upscaler(model, device=device, precision=p, batch_size=batch_size, memory_budget="auto")
                 for p in precisions}
    shapes = {p: {out.shape for out in u.stream(iter(clip))} for p, u in upscalers.items()}  # and warm-up
    timings = measure({p: lambda u=u: list(u.stream(iter(clip))) for p, u in upscalers.items()}, repeats, warmup=0)
    fps = {p: frames / t.median for p, t in timings.items()}
    return {"preset": preset, "lr_size": f"{height}x{width}", "batch_size": batch_size, "frames_per_s": fps,
            "feature_reuse": upscalers[precisions[0]].reuses_features(height, width),
            "timings": {p: t.to_dict() for p, t in timings.items()},
            "ok": all(s == {(SCALE * height, SCALE * width, 3)} for s in shapes.values())}


def upscale_speed(device: str, preset: str, folder: Path, frames: int, height: int, width: int,
                  precision: str = "fp16", batch_size: int = 4, repeats: int = 2) -> dict:
    """``vsr upscale`` of a generated clip (decode, model, H.264 encode) against model-only
    ``Upscaler.stream`` on the decoded frames and the overlapped stream (``prefetch=8``), round-robin."""
    folder.mkdir(parents=True, exist_ok=True)
    checkpoint = save_model_checkpoint(preset, folder / f"{preset}.pth")
    clip, output = write_clip(folder / f"clip_{preset}.mp4", frames, height, width), folder / f"x3_{preset}.mp4"
    args = ["upscale", str(clip), str(output), "--checkpoint", str(checkpoint), "--device", device,
            "--precision", precision, "--batch-size", str(batch_size)]
    upscaler = Upscaler.from_checkpoint(checkpoint, device=device, precision=precision, batch_size=batch_size)
    decoded = list(iter_frames(clip))
    timings = measure({"model only": lambda: list(upscaler.stream(iter(decoded))),
                       "vsr upscale": lambda: run_cli(args),
                       "overlapped (prefetch=8)": lambda: overlapped_upscale(upscaler, clip, folder / "o.mp4", 8)},
                      repeats, warmup=1)
    fps = {name: frames / t.median for name, t in timings.items()}
    written = list(iter_frames(output))
    return {"preset": preset, "lr_size": f"{height}x{width}", "frames": frames, "precision": precision,
            "frames_per_s": fps, "vsr_upscale_vs_model_only": fps["vsr upscale"] / fps["model only"],
            "timings": {name: t.to_dict() for name, t in timings.items()},
            "ok": len(written) == frames and written[0].shape == (SCALE * height, SCALE * width, 3)}


def check_speed(device: str, folder: Path, presets=("full", "small"), sizes=((180, 320), (360, 640)),
                frames: int = 12, clip_frames: int = 48, clip_size=(180, 320)) -> dict:
    models = [model_speed(device, preset, h, w, frames) for preset in presets for h, w in sizes]
    pipelines = [upscale_speed(device, preset, folder / preset, clip_frames, *clip_size) for preset in presets]
    return {"device": device, "model": models, "vsr_upscale": pipelines,
            "checks": {"every stream gave its frames at 3x": all(m["ok"] for m in models),
                       "vsr upscale wrote every frame at 3x": all(p["ok"] for p in pipelines)}}


# --- data-parallel training on Ray Train ----------------------------------------------------------------
REPORTED = ("step", "loss_total", "loss_l1", "psnr", "skipped_steps", "workers", "samples_per_s", "diverged", "error")


def report_recorder(path: Path):
    """A Ray Train callback writing every report of every worker to ``path`` (JSON lines). Made in a
    function so that it is pickled by value: the Train controller cannot import this script."""
    from ray.train import UserCallback

    class RecordReports(UserCallback):
        def after_report(self, run_context, metrics, checkpoint):
            entry = {"checkpoint": checkpoint is not None,
                     "workers": [{k: m.get(k) for k in REPORTED} for m in metrics]}
            with open(path, "a") as f:
                f.write(json.dumps(entry) + "\n")

    return RecordReports()


def check_data_parallel(config: TrainConfig, storage: Path, workers: int = 2, gpus_per_worker: float = 1,
                        cpus_per_worker: float = 1) -> dict:
    """``fit_on_ray_train`` with ``workers`` workers (Ray must be running): every report from every
    worker, the same all-reduced loss on all of them, the final checkpoint on the expected device."""
    if gpus_per_worker and torch.cuda.device_count() < workers * gpus_per_worker:
        raise PartSkipped(f"needs {workers * gpus_per_worker:g} GPUs, this machine has {torch.cuda.device_count()}")
    from vsr_core.engine.ray_train import fit_on_ray_train
    from vsr_core.engine.run_start import CHECKPOINT_FILE

    storage.mkdir(parents=True, exist_ok=True)
    log = storage / "reports.jsonl"
    result = fit_on_ray_train(config, workers, storage_path=str(storage), name="ddp", max_failures=0,
                              cpus_per_worker=cpus_per_worker, gpus_per_worker=gpus_per_worker,
                              callbacks=[report_recorder(log)])
    reports = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    final = load_checkpoint(Path(result.checkpoint.path) / CHECKPOINT_FILE)
    rows = [row for report in reports for row in report["workers"]]
    device = "cuda" if gpus_per_worker else "cpu"
    return {
        "path": "vsr_core.engine.ray_train.fit_on_ray_train (Ray Train TorchTrainer)", "workers": workers,
        "backend": "nccl (Ray Train's default with GPUs)" if gpus_per_worker else "gloo (Ray Train's default on CPUs)",
        "reports": reports, "rank0_device": final["config"]["DEVICE"], "precision": final["config"]["PRECISION"],
        "grad_scale_final": final["scaler_state_dict"].get("scale"),
        "checks": {
            "every worker reported": bool(reports) and all(len(r["workers"]) == workers for r in reports),
            "the workers agree on the loss (all-reduced)": all(len({w["loss_total"] for w in r["workers"]}) == 1
                                                               for r in reports),
            "losses finite, no step skipped": bool(rows) and all(
                w["loss_total"] is not None and math.isfinite(w["loss_total"]) and not w["skipped_steps"]
                and not w["diverged"] for w in rows),
            f"the last checkpoint is at step {config.max_steps}": final["step"] == config.max_steps,
            f"rank 0 trained on {device}": final["config"]["DEVICE"].startswith(device),
        },
    }


# --- Serve ----------------------------------------------------------------------------------------------
def png_bytes(frame: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def wait_for_model(url: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        try:
            response = requests.get(url + "/v1/model", timeout=10)
            if response.status_code == 200:
                return response.json()
        except requests.RequestException:  # the proxy may not route yet
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"/v1/model did not answer within {timeout:g} s")
        time.sleep(0.2)


def check_serve(checkpoint: Path, device: str, num_gpus: float = 1, precision: str = "fp16",
                size: tuple[int, int] = (180, 320)) -> dict:
    """The app (``build_app`` + ``serve.run``, Ray must be running) with ``num_gpus`` per replica: one
    5-frame window over HTTP against ``Upscaler.from_checkpoint`` of the same file in this process."""
    import importlib

    from ray import serve

    serve_app = importlib.import_module("serve.app")  # this project's serve/, not ray.serve
    window = np.stack(synthetic_frames(5, *size, seed=3))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(serve_app.build_app({"checkpoint": str(checkpoint), "num_gpus": num_gpus, "num_cpus": 1,
                                       "num_replicas": 1, "precision": precision}), name=SERVE_APP, route_prefix="/")
        info = wait_for_model(url)
        files = [("frames", (f"{i}.png", png_bytes(frame), "image/png")) for i, frame in enumerate(window)]
        start = time.perf_counter()
        response = requests.post(url + "/v1/upscale", files=files, timeout=300)
        latency = time.perf_counter() - start
    finally:
        serve.shutdown()
    expected = Upscaler.from_checkpoint(checkpoint, device=device, precision=precision).upscale_window_uint8(window)
    got = np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB")) if response.status_code == 200 else None
    levels = None if got is None or got.shape != expected.shape else int(
        np.abs(got.astype(np.int16) - expected).max())
    replica_device = "cuda" if num_gpus else "cpu"
    return {
        "num_gpus": num_gpus, "lr_size": f"{size[0]}x{size[1]}", "status_code": response.status_code,
        "replica_device": info.get("device"), "replica_precision": info.get("precision"),
        "latency_s": latency, "max_diff_levels": levels,
        **({} if response.status_code == 200 else {"response": response.text[:500]}),
        "checks": {
            "the window came back (200)": response.status_code == 200,
            f"the replica runs on {replica_device}": str(info.get("device")).startswith(replica_device),
            f"the replica runs {precision}": info.get("precision") == precision,
            f"within {SERVE_TOLERANCE} gray levels of this process's Upscaler": levels is not None
            and levels <= SERVE_TOLERANCE,
        },
    }
