"""The training engine ("Option B"): the one training loop.

The single-run CLI, the live console and the Ray Tune trainable all drive a
``Trainer`` and observe it through ``TrainingHooks``; none has a loop of its own.

One optimizer step = ACCUMULATION_STEPS micro-batches of BATCH_SIZE windows:
L1 + PERCEPTUAL_WEIGHT x VGG19 perceptual loss, AdamW, cosine annealing from
10**LR_EXPONENT to 1e-7 over MAX_STEPS, fp16 autocast + GradScaler on CUDA
(fp32 on CPU). A step whose loss is NaN/Inf is skipped (no update) and counted;
MAX_BAD_STEPS in a row stop the run with ``TrainingDiverged``.
"""
from __future__ import annotations

import contextlib
import math
import random
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from vsr_core.archs import VSRPPPv2
from vsr_core.checkpoint import LATEST_NAME, load_checkpoint, remove_stale_temp_files, save_checkpoint
from vsr_core.config import TrainConfig
from vsr_core.data.datasets import ContinuingSampler, WindowPatchDataset, load_clip, training_clips, validation_sources
from vsr_core.data.degradation import bicubic_upsample
from vsr_core.frames import pick_device, to_tensor, to_uint8
from vsr_core.engine.health import convergence_status, health_summary
from vsr_core.engine.tensorboard import TensorBoardLogger
from vsr_core.evaluate import center_crop, evaluate_frames
from vsr_core.inference import Upscaler
from vsr_core.losses import PerceptualLoss, combined_loss

ETA_MIN = 1e-7
LIVE_KEYS = ("LR_EXPONENT", "WEIGHT_DECAY", "MAX_STEPS", "VAL_STEP_EVERY", "SAVE_STEP_EVERY", "LOG_TBOARD_EVERY",
             "ACCUMULATION_STEPS", "SORT_BY_ACTIVITY")
HISTORY_LENGTH = 500


class TrainingDiverged(RuntimeError):
    pass


@dataclass
class StepMetrics:
    step: int
    epoch: int
    loss_l1: float
    loss_perceptual: float
    loss_total: float
    lr: float
    samples_per_s: float
    skipped: bool  # the loss was NaN/Inf: no update this step
    skipped_steps: int  # total so far in this run


@dataclass
class ValidationMetrics:
    step: int
    psnr: float  # Y channel, crop_border 3
    ssim: float  # Y channel
    l1: float  # mean absolute error of the output, [0,1] units
    bicubic_psnr: float  # the baseline on the same frames
    per_clip: dict[str, dict[str, float]] = field(default_factory=dict)
    image: np.ndarray | None = None  # LR-bicubic | output | GT of the first clip's first frame


class TrainingHooks:
    """Observers of a run. Override what you need; every method is optional."""

    def on_step(self, trainer: "Trainer", metrics: StepMetrics) -> None: ...

    def on_validation(self, trainer: "Trainer", metrics: ValidationMetrics) -> None: ...

    def on_checkpoint(self, trainer: "Trainer", path: Path) -> None: ...

    def should_stop(self, trainer: "Trainer") -> bool:
        return False


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Trainer:
    def __init__(
        self,
        config: TrainConfig,
        *,
        resume_from: str | Path | None = None,
        finetune_from: str | Path | None = None,
        log_dir: str | Path | None = None,
    ):
        if resume_from and finetune_from:
            raise ValueError("give either resume_from (continue a run) or finetune_from (new run from weights)")
        self.config = config
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        seed_everything(config.seed)
        self.device = pick_device(config.device)
        self.use_amp = self.device.type == "cuda"
        self.output_dir = Path(config.output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temp_files(self.output_dir)  # left by a process killed mid-write

        self.model = VSRPPPv2.from_preset(config.preset).to(self.device)
        self.perceptual = None
        if config.perceptual_weight > 0:
            self.perceptual = PerceptualLoss(config.vgg_weights, config.vgg_weights_path).to(self.device)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            self.optimizer, T_max=config.max_steps, eta_min=ETA_MIN
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.use_amp)
        self.step = 0
        self.training_phase = "pretrain"
        if resume_from:
            self._restore(load_checkpoint(resume_from, self.device))
        elif finetune_from:
            self.model.load_state_dict(load_checkpoint(finetune_from, self.device)["model_state_dict"])
            self.training_phase = "finetune"

        self.skipped_steps = 0
        self.consecutive_bad_steps = 0
        self.loss_history: deque[float] = deque(maxlen=HISTORY_LENGTH)
        self.activity_history: deque[list[float]] = deque(maxlen=HISTORY_LENGTH)
        self.last_validation: ValidationMetrics | None = None
        self._bicubic_psnr: float | None = None
        self._batches = None
        self.tensorboard = TensorBoardLogger(log_dir or self.output_dir / "tensorboard")

    # --- state ------------------------------------------------------------------------
    @property
    def samples_seen(self) -> int:
        return self.step * self.config.accumulation_steps * self.config.batch_size

    @property
    def epoch(self) -> int:
        return self.samples_seen // self.config.num_patches

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def checkpoint_dict(self) -> dict:
        return {
            "step": self.step,
            "epoch": self.epoch,
            "model_state_dict": self.model.state_dict(),
            "optimizer_state_dict": self.optimizer.state_dict(),
            "scaler_state_dict": self.scaler.state_dict(),
            "scheduler_state_dict": self.scheduler.state_dict(),
            "config": self.config.to_dict(),
            "training_phase": self.training_phase,
        }

    def _restore(self, checkpoint: dict) -> None:
        saved_preset = checkpoint["config"].get("PRESET")
        if saved_preset != self.config.preset:
            raise ValueError(f"cannot resume: checkpoint has PRESET {saved_preset!r}, config has {self.config.preset!r}")
        self.model.load_state_dict(checkpoint["model_state_dict"])
        self.optimizer.load_state_dict(checkpoint["optimizer_state_dict"])
        self.scheduler.load_state_dict(checkpoint["scheduler_state_dict"])
        if self.use_amp and checkpoint["scaler_state_dict"]:
            self.scaler.load_state_dict(checkpoint["scaler_state_dict"])
        self.step = int(checkpoint["step"])
        self.training_phase = checkpoint["training_phase"]

    def update_config(self, **changes) -> TrainConfig:
        """Change settings of a running run (the console's setup menu); they take effect at the
        next optimizer step. Only LIVE_KEYS may change. The LR schedule stays a cosine from the
        (new) base LR to ETA_MIN over the (new) MAX_STEPS, evaluated at the current step.

        Exact resume assumes ACCUMULATION_STEPS was constant; after a live change a resumed run
        continues with slightly different (but still valid) training samples.
        """
        unknown = {k.upper() for k in changes} - set(LIVE_KEYS)
        if unknown:
            raise ValueError(f"cannot change {sorted(unknown)} during training; live keys: {', '.join(LIVE_KEYS)}")
        new = self.config.replace(**changes)
        if new.max_steps < self.step:
            raise ValueError(f"MAX_STEPS must be >= the current step {self.step}, got {new.max_steps}")
        self.config = new
        self.scheduler.T_max = new.max_steps
        self.scheduler.base_lrs = [new.learning_rate for _ in self.optimizer.param_groups]
        progress = math.pi * min(self.step, new.max_steps) / new.max_steps
        lr = ETA_MIN + (new.learning_rate - ETA_MIN) * (1 + math.cos(progress)) / 2
        for group in self.optimizer.param_groups:
            group["initial_lr"] = new.learning_rate
            group["lr"] = lr
            group["weight_decay"] = new.weight_decay
        return new

    def save(self, path: str | Path | None = None) -> Path:
        """Atomically write ``latest.pth`` (or ``path``)."""
        path = save_checkpoint(self.checkpoint_dict(), path or self.output_dir / LATEST_NAME)
        return path

    # --- data ---------------------------------------------------------------------------
    def _next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._batches is None:
            cfg = self.config
            dataset = WindowPatchDataset(
                training_clips(cfg.train_data, cfg.max_frames_per_clip), cfg.patch_size, cfg.num_patches, cfg.seed
            )
            loader = DataLoader(
                dataset,
                batch_size=cfg.batch_size,
                sampler=ContinuingSampler(self.samples_seen),  # resume continues the same data stream
                num_workers=cfg.num_workers,
                persistent_workers=cfg.num_workers > 0,
                prefetch_factor=4 if cfg.num_workers > 0 else None,
                pin_memory=self.device.type == "cuda",
            )
            self._batches = iter(loader)
        lr_windows, gt = next(self._batches)
        return lr_windows.to(self.device, non_blocking=True), gt.to(self.device, non_blocking=True)

    # --- one optimizer step ---------------------------------------------------------------
    def _autocast(self):
        if self.use_amp:
            return torch.autocast(self.device.type, dtype=torch.float16)
        return contextlib.nullcontext()  # fp32 on CPU: bf16 autocast is ~10x slower without native bf16

    def train_step(self) -> StepMetrics:
        cfg = self.config
        self.model.train()
        start = time.perf_counter()
        sums = torch.zeros(3, device=self.device)
        finite = True
        for _ in range(cfg.accumulation_steps):
            lr_windows, gt = self._next_batch()  # consumed even after a bad micro-batch: keeps the data stream aligned
            if not finite:
                continue
            with self._autocast():
                terms = combined_loss(self.model(lr_windows).float(), gt, self.perceptual, cfg.perceptual_weight)
            if not torch.isfinite(terms.total):
                finite = False
                continue
            self.scaler.scale(terms.total / cfg.accumulation_steps).backward()
            sums += torch.stack([terms.l1, terms.perceptual, terms.total]).detach()

        lr = self.lr
        if finite:
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.consecutive_bad_steps = 0
        else:
            self.skipped_steps += 1
            self.consecutive_bad_steps += 1
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.step += 1

        if self.consecutive_bad_steps >= cfg.max_bad_steps:
            raise TrainingDiverged(
                f"training diverged: the loss was NaN/Inf in {self.consecutive_bad_steps} consecutive steps "
                f"(up to step {self.step}, {self.skipped_steps} skipped in all); try a lower LR_EXPONENT "
                f"(now {cfg.lr_exponent}) or resume from an earlier checkpoint"
            )
        l1, perceptual, total = (sums / cfg.accumulation_steps).tolist() if finite else [math.nan] * 3
        self.loss_history.append(total)
        elapsed = time.perf_counter() - start
        return StepMetrics(
            step=self.step,
            epoch=self.epoch,
            loss_l1=l1,
            loss_perceptual=perceptual,
            loss_total=total,
            lr=lr,
            samples_per_s=cfg.effective_batch_size / elapsed,
            skipped=not finite,
            skipped_steps=self.skipped_steps,
        )

    # --- validation -------------------------------------------------------------------------
    def _validation_frames(self, source: Path):
        clip = load_clip(source, self.config.val_max_frames)
        return (center_crop(np.array(frame), self.config.val_crop) for frame in clip)  # copy out of the memmap

    def validate(self) -> ValidationMetrics:
        """Y-PSNR/SSIM and L1 on the validation clips (VAL_MAX_FRAMES each) through the inference path."""
        upscaler = Upscaler(self.model, device=self.device, batch_size=self.config.batch_size)
        sources = validation_sources(self.config.val_data)
        per_clip, image = {}, None
        for source in sources:
            scores, (lr, sr, hr) = evaluate_frames(upscaler, self._validation_frames(source), source.name)
            per_clip[source.name] = {"psnr": scores.y_psnr, "ssim": scores.y_ssim, "l1": scores.l1}
            if image is None:
                bicubic = to_uint8(bicubic_upsample(to_tensor(lr)[None]))[0]
                image = np.concatenate([bicubic, sr, hr], axis=1)
        self.model.train()
        if self._bicubic_psnr is None:
            bicubic = Upscaler.bicubic(device=self.device, batch_size=self.config.batch_size)
            self._bicubic_psnr = float(np.mean([
                evaluate_frames(bicubic, self._validation_frames(s), s.name)[0].y_psnr for s in sources
            ]))
        mean = {k: float(np.mean([c[k] for c in per_clip.values()])) for k in ("psnr", "ssim", "l1")}
        metrics = ValidationMetrics(self.step, mean["psnr"], mean["ssim"], mean["l1"], self._bicubic_psnr,
                                    per_clip, image)
        self.tensorboard.log_validation(self.step, metrics.psnr, metrics.ssim, metrics.l1, image)
        self.last_validation = metrics
        return metrics

    # --- observability -------------------------------------------------------------------------
    def health(self) -> dict:
        """Convergence status, cold layers, temporal weights: for the console, logs and Tune."""
        summary = health_summary(list(self.activity_history), list(self.loss_history))
        summary["temporal_weights"] = self.model.frame_stats
        return summary

    def convergence(self) -> str:
        return str(convergence_status(list(self.loss_history)))

    def _log(self, metrics: StepMetrics) -> None:
        if not metrics.skipped:
            self.tensorboard.log_training(metrics.step, metrics.loss_l1, metrics.loss_perceptual,
                                          metrics.loss_total, metrics.lr)
        activity = self.model.layer_activity()
        if not any(math.isnan(a) for a in activity):
            self.activity_history.append(activity)
            self.tensorboard.log_layers(metrics.step, activity)

    # --- the loop -------------------------------------------------------------------------------
    def fit(self, hooks: TrainingHooks | None = None) -> ValidationMetrics | None:
        """Train until MAX_STEPS (or a hook asks to stop); validate and checkpoint on schedule.
        Always leaves a final ``latest.pth``. A checkpoint that cannot be written even after
        retries stops the run with ``CheckpointError`` (see ``save_checkpoint``)."""
        hooks = hooks or TrainingHooks()
        try:
            while self.step < self.config.max_steps and not hooks.should_stop(self):
                metrics = self.train_step()
                if self.step % self.config.log_tboard_every == 0:
                    self._log(metrics)
                hooks.on_step(self, metrics)
                cfg = self.config  # read after the hooks: the console's menu may have changed it
                finished = self.step >= cfg.max_steps
                if self.step % cfg.val_step_every == 0 or finished:
                    hooks.on_validation(self, self.validate())
                if self.step % cfg.save_step_every == 0 or finished:
                    hooks.on_checkpoint(self, self.save())
                if cfg.milestone_every and self.step % cfg.milestone_every == 0:
                    self.save(self.output_dir / f"step_{self.step:07d}.pth")
            if self.step < self.config.max_steps:  # stopped by a hook: keep the work done so far
                hooks.on_checkpoint(self, self.save())
        finally:
            self.tensorboard.close()
        return self.last_validation
