"""The training engine ("Option B"): the one training loop.

The single-run CLI, the live console and the Ray Tune trainable all drive a ``Trainer``
and observe it through ``TrainingHooks``; none has a loop of its own, and they change a
running trainer only by requests (``request_*``) that ``fit`` takes between steps.

One optimizer step = ACCUMULATION_STEPS micro-batches of BATCH_SIZE windows: L1 +
PERCEPTUAL_WEIGHT x VGG19 perceptual loss, AdamW, the cosine LR schedule of ``schedule``,
fp16 autocast + GradScaler on CUDA, fp32 on CPU (PRECISION: bf16 autocast is an option). A step
whose loss is NaN/Inf is skipped (no update) and counted; MAX_BAD_STEPS in a row stop the run with ``TrainingDiverged``.
With EMA_DECAY > 0 an average of the weights (``ema``) is what validation scores and checkpoints export.
With a ``DataParallel`` the same loop runs in each worker of a data-parallel group (see ``distributed``).
"""
from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from collections import deque
from pathlib import Path

import numpy as np
import torch

from vsr_core.archs import VSRPPPv2
from vsr_core.checkpoint import LATEST_NAME, load_checkpoint, remove_stale_temp_files, save_checkpoint
from vsr_core.config import TrainConfig
from vsr_core.data.datasets import training_loader
from vsr_core.engine import training_state
from vsr_core.engine.distributed import DataParallel, effective_batch_text
from vsr_core.engine.ema import WeightAverage
from vsr_core.frames import autocast, pick_device, resolve_precision
from vsr_core.engine.health import health_summary, training_status
from vsr_core.engine.hooks import StepMetrics, TrainingHooks, ValidationMetrics
from vsr_core.engine.requests import ApplyConfig, Command, Request, RequestQueue
from vsr_core.engine.schedule import ETA_MIN, is_due, make_scheduler, next_due, retarget  # noqa: F401 - ETA_MIN: API
from vsr_core.engine.tensorboard import NullTensorBoard, TensorBoardLogger
from vsr_core.engine.validation import Validator
from vsr_core.losses import PerceptualLoss, combined_loss

LIVE_KEYS = ("LR_EXPONENT", "WEIGHT_DECAY", "MAX_STEPS", "VAL_STEP_EVERY", "SAVE_STEP_EVERY", "LOG_TBOARD_EVERY",
             "ACCUMULATION_STEPS", "SORT_BY_ACTIVITY")
HISTORY_LENGTH = 500
PAUSE_WAIT_S = 1.0  # while paused, fit hands control to hooks.wait_while_paused this long at a time

logger = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    pass


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
        parallel: DataParallel | None = None,
    ):
        if resume_from and finetune_from:
            raise ValueError("give either resume_from (continue a run) or finetune_from (new run from weights)")
        self.config = config
        self.parallel = parallel  # None: one process, today's path with no process group
        self.workers = parallel.world_size if parallel else 1
        self.is_main = parallel is None or parallel.is_main  # rank 0 writes checkpoints and TensorBoard
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        seed_everything(config.seed)
        self.device = pick_device(config.device)
        self.precision = resolve_precision(config.precision, self.device, training=True)
        self.use_amp = self.precision == "fp16"  # fp16 needs the GradScaler; bf16 has fp32's range
        self.output_dir = Path(config.output_dir)
        if self.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            remove_stale_temp_files(self.output_dir)  # left by a process killed mid-write

        self.model = VSRPPPv2.from_preset(config.preset).to(self.device)
        self.perceptual = None
        if config.perceptual_weight > 0:
            self.perceptual = PerceptualLoss(config.vgg_weights, config.vgg_weights_path).to(self.device)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
        )
        self.scheduler = make_scheduler(self.optimizer, config)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.use_amp)
        self.step = 0
        self.training_phase = "pretrain"
        averaged = None
        if resume_from:
            averaged = training_state.restore(self, load_checkpoint(resume_from, self.device))
        elif finetune_from:
            training_state.load_weights(self, load_checkpoint(finetune_from, self.device))
            self.training_phase = "finetune"
        # Made before the DDP wrap, from weights every worker has (same seed, same checkpoint).
        self.ema = WeightAverage(self.model, config.ema_decay) if config.ema_decay else None
        if self.ema and averaged is not None:  # else the average starts from the weights trained so far
            self.ema.load_state_dict(averaged)
        self.train_model = parallel.wrap(self.model) if parallel else self.model  # what train_step runs

        self.skipped_steps = 0
        self.consecutive_bad_steps = 0
        self.loss_history: deque[float] = deque(maxlen=HISTORY_LENGTH)
        self.activity_history: deque[list[float]] = deque(maxlen=HISTORY_LENGTH)
        self.last_validation: ValidationMetrics | None = None
        self.validation_gains: list[tuple[int, float]] = []  # (step, gain over bicubic): the convergence trend
        self._validator = Validator(self.device, self.precision)
        self._batches = None
        self.tensorboard = TensorBoardLogger(log_dir or self.output_dir / "tensorboard") if self.is_main \
            else NullTensorBoard()
        self.tensorboard.log_text("Run/EffectiveBatch", f"{effective_batch_text(config, self.workers)}, "
                                  f"LR {config.learning_rate:.3g}")
        self.requests = RequestQueue()  # posted by hooks and other threads, taken by fit between steps
        self.paused = self.stop_requested = self._fitting = False  # changed only by fit

    # --- state ------------------------------------------------------------------------
    @property
    def samples_per_step(self) -> int:  # the effective batch, all workers together
        return self.config.effective_batch_size * self.workers

    @property
    def samples_seen(self) -> int:
        return self.step * self.samples_per_step

    @property
    def epoch(self) -> int:
        return self.samples_seen // self.config.num_patches

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    @property
    def inference_model(self) -> VSRPPPv2:
        """What validation scores and checkpoints export: the weight average with EMA_DECAY > 0."""
        return self.ema.model if self.ema else self.model

    def checkpoint_dict(self) -> dict:  # the 8 keys (vsr_core.checkpoint: where raw and averaged weights go)
        return training_state.checkpoint_of(self)

    # --- changing a run -------------------------------------------------------------------
    def check_config(self, **changes) -> TrainConfig:
        """The config after ``changes`` (and the changes already requested), validated, without
        applying anything. Raises ValueError (ConfigError) naming what is refused."""
        return self._checked({**self.requests.pending_changes(), **{k.upper(): v for k, v in changes.items()}})

    def _checked(self, changes: dict) -> TrainConfig:
        unknown = {k.upper() for k in changes} - set(LIVE_KEYS)
        if unknown:
            raise ValueError(f"cannot change {sorted(unknown)} during training; live keys: {', '.join(LIVE_KEYS)}")
        new = self.config.replace(**changes)
        if new.max_steps < self.step:
            raise ValueError(f"MAX_STEPS must be >= the current step {self.step}, got {new.max_steps}")
        return new

    def update_config(self, **changes) -> TrainConfig:
        """Change live settings now; inside ``fit`` (from a hook) use ``request_config``. The LR schedule
        stays a cosine from the (new) base LR to ETA_MIN over the (new) MAX_STEPS, evaluated at the
        current step.

        Exact resume assumes ACCUMULATION_STEPS was constant; after a live change a resumed run
        continues with slightly different (but still valid) training samples.
        """
        self._refuse_inside_fit("update_config", "request_config")
        return self._apply_config(changes)

    def _apply_config(self, changes: dict) -> TrainConfig:
        self.config = self._checked(changes)
        retarget(self.optimizer, self.scheduler, self.config, self.step)
        return self.config

    def _refuse_inside_fit(self, name: str, instead: str) -> None:
        if self._fitting:
            raise RuntimeError(f"Trainer.{name}() changes the trainer; while fit runs, call {instead}() (fit takes "
                               "the request at the next step boundary)")

    # Requests: safe from any thread and from hooks; fit takes them at the next step boundary, in order.
    def request_config(self, **changes) -> TrainConfig:
        """Check ``changes`` now (raises ValueError if refused) and have fit apply them; the config they give."""
        new = self.check_config(**changes)
        self.requests.post(ApplyConfig(dict(changes)))
        return new

    def request_validation(self) -> None:
        self.requests.post(Command.VALIDATE)

    def request_pause(self) -> None:  # fit then waits at the step boundary until resumed or stopped
        self.requests.post(Command.PAUSE)

    def request_resume(self) -> None:
        self.requests.post(Command.RESUME)

    def request_stop(self) -> None:  # fit leaves the loop at the step boundary and writes latest.pth
        self.requests.post(Command.STOP)

    # --- the schedule: asked by fit and by the console ------------------------------------
    def validation_due(self) -> bool:  # at this step boundary: a multiple of VAL_STEP_EVERY, or the last step
        return is_due(self.step, self.config.val_step_every, self.config.max_steps)

    def checkpoint_due(self) -> bool:
        return is_due(self.step, self.config.save_step_every, self.config.max_steps)

    def next_validation_step(self) -> int:  # the next one after any due now; the last step at the latest
        return next_due(self.step, self.config.val_step_every, self.config.max_steps)

    def next_checkpoint_step(self) -> int:
        return next_due(self.step, self.config.save_step_every, self.config.max_steps)

    def save(self, path: str | Path | None = None) -> Path:
        """Atomically write ``latest.pth`` (or ``path``); in a data-parallel group only rank 0 writes."""
        path = Path(path or self.output_dir / LATEST_NAME)
        return save_checkpoint(self.checkpoint_dict(), path) if self.is_main else path

    # --- data ---------------------------------------------------------------------------
    def _next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._batches is None:  # resume continues the same data stream, at samples_seen
            rank = self.parallel.rank if self.parallel else 0
            self._batches = iter(training_loader(self.config, self.samples_seen, self.device.type == "cuda",
                                                 rank, self.workers))
        lr_windows, gt = next(self._batches)
        return lr_windows.to(self.device, non_blocking=True), gt.to(self.device, non_blocking=True)

    # --- one optimizer step ---------------------------------------------------------------
    def train_step(self) -> StepMetrics:
        cfg, parallel = self.config, self.parallel
        self.train_model.train()
        start = time.perf_counter()
        sums = torch.zeros(3, device=self.device)
        finite, final_loss = True, None
        for m in range(cfg.accumulation_steps):
            lr_windows, gt = self._next_batch()  # consumed even after a bad micro-batch: keeps the data stream aligned
            if not finite and parallel is None:
                continue  # data-parallel workers go on: DDP needs the same passes on every worker
            final = m == cfg.accumulation_steps - 1
            with parallel.micro_batch(self.train_model, final) if parallel else contextlib.nullcontext():
                with autocast(self.device, self.precision):
                    terms = combined_loss(self.train_model(lr_windows).float(), gt, self.perceptual,
                                          cfg.perceptual_weight)
                finite = finite and bool(torch.isfinite(terms.total))
                if finite:
                    sums += torch.stack([terms.l1, terms.perceptual, terms.total]).detach()
                if final:  # its backward (the all-reduce, data-parallel) once the workers agree on the step
                    final_loss = terms.total
                elif finite or parallel:
                    self.scaler.scale(terms.total / cfg.accumulation_steps).backward()
        if parallel:
            finite, sums = parallel.agree(finite, sums, self.model)
        if final_loss is not None and (finite or parallel):  # a skipped step's gradients are dropped below
            self.scaler.scale(final_loss / cfg.accumulation_steps).backward()

        lr = self.lr
        if finite:
            self.scaler.step(self.optimizer)
            self.scaler.update()
            if self.ema:  # before step += 1: the warm-up counts the steps done before this one
                self.ema.update(self.model, self.step)
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
            samples_per_s=self.samples_per_step / elapsed,
            skipped=not finite,
            skipped_steps=self.skipped_steps,
        )

    # --- validation -------------------------------------------------------------------------
    def validate(self) -> ValidationMetrics:
        """Y-PSNR/SSIM and L1 on the validation clips (``Validator``); inside ``fit`` use request_validation."""
        self._refuse_inside_fit("validate", "request_validation")
        return self._validate()

    def _validate(self) -> ValidationMetrics:
        metrics = self._validator(self.inference_model, self.config, self.step) if self.is_main else None
        if self.parallel:  # computed once, on rank 0; every worker's hooks see the same metrics
            metrics = self.parallel.share(metrics)
        self.tensorboard.log_validation(self.step, metrics.psnr, metrics.ssim, metrics.l1, metrics.image, metrics.gain,
                                        tof=metrics.tof, flicker=metrics.flicker)
        self.last_validation = metrics
        self.validation_gains.append((self.step, metrics.gain))
        return metrics

    # --- observability -------------------------------------------------------------------------
    def health(self) -> dict:
        """Convergence status, cold layers, temporal weights: for the console, logs and Tune."""
        summary = health_summary(list(self.activity_history), list(self.loss_history),
                                 validation_gains=self.validation_gains)
        summary["temporal_weights"] = self.model.frame_stats
        return summary

    def convergence(self) -> str:
        """The validation trend once there are two validations, the training loss before (see convergence.py)."""
        return str(training_status(list(self.loss_history), self.validation_gains))

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
        """Train until MAX_STEPS (or a hook or request asks to stop); validate and checkpoint on schedule.
        Always leaves a final ``latest.pth``. A checkpoint that cannot be written even after
        retries stops the run with ``CheckpointError`` (see ``save_checkpoint``).

        Requests (``request_*``) are taken at step boundaries: before the first step and right
        after each step's ``on_step``; while paused, fit waits there."""
        hooks = hooks or TrainingHooks()
        self._fitting, self.paused, self.stop_requested, saved_at = True, False, False, None
        try:
            self._step_boundary(hooks)
            while self.step < self.config.max_steps and not self.stop_requested and not hooks.should_stop(self):
                metrics = self.train_step()
                if self.step % self.config.log_tboard_every == 0:
                    self._log(metrics)
                hooks.on_step(self, metrics)
                self._step_boundary(hooks)
                validated_now = self.last_validation is not None and self.last_validation.step == self.step
                if self.validation_due() and not validated_now:
                    hooks.on_validation(self, self._validate())
                if self.checkpoint_due():
                    hooks.on_checkpoint(self, self.save())
                    saved_at = self.step
                if self.config.milestone_every and self.step % self.config.milestone_every == 0:
                    self.save(self.output_dir / f"step_{self.step:07d}.pth")
            if self.step < self.config.max_steps and saved_at != self.step:  # stopped early: keep the work done
                hooks.on_checkpoint(self, self.save())
        finally:
            self._fitting = False
            self._close_batches()
            self.tensorboard.close()
        return self.last_validation

    def _step_boundary(self, hooks: TrainingHooks) -> None:
        """Take the posted requests in order; while paused, wait here for more."""
        while True:
            for request in self.requests.take_all():
                self._take(request, hooks)
            if not self.paused or self.stop_requested:
                return
            hooks.wait_while_paused(self, PAUSE_WAIT_S)

    def _take(self, request: Request, hooks: TrainingHooks) -> None:
        if isinstance(request, ApplyConfig):
            try:
                self._apply_config(request.changes)
            except ValueError as exc:  # checked when posted; a later change may conflict
                logger.warning("config change %s refused: %s", request.changes, exc)
        elif request is Command.VALIDATE:
            hooks.on_validation(self, self._validate())
        elif request is Command.PAUSE:
            self.paused = True
        elif request is Command.RESUME:
            self.paused = False
        elif request is Command.STOP:
            self.stop_requested = True

    def _close_batches(self) -> None:
        """End the DataLoader's worker processes now: a Tune actor is reused for the next trial, and
        garbage collection would leave them running until some unknown later moment."""
        batches, self._batches = self._batches, None
        shutdown = getattr(batches, "_shutdown_workers", None)  # only multi-process iterators have workers
        if shutdown is not None:
            shutdown()
