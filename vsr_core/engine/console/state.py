"""What the console shows (:class:`ConsoleState`, a plain snapshot that can be built by hand) and
:class:`ConsoleRecorder`, the hooks part both consoles share: it records the loss breakdown, the
step rate and layer activity, and takes snapshots. The schedule (next validation / checkpoint)
and the cold-layer rule are asked from their owners, the trainer and ``health``."""
from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vsr_core.engine.health import LOSS_TREND_WINDOW, ConvergenceStatus, Trend, cold_layers, layer_trends, loss_trends
from vsr_core.engine.hooks import StepMetrics, TrainingHooks, ValidationMetrics
from vsr_core.engine.trainer import LIVE_KEYS, Trainer

LOSS_NAMES = ("L1", "Perceptual", "Total")
RATE_WINDOW_S = 60.0  # ETA from the step rate over this many seconds


@dataclass
class MenuState:
    """The open setup menu: the line being typed and the answer to the last one."""

    buffer: str = ""
    message: str = ""
    error: bool = False


@dataclass
class ConsoleState:
    """Everything the console shows; a plain snapshot, so it can be built by hand."""

    step: int = 0
    max_steps: int = 1
    epoch: int = 0
    lr: float = 0.0
    samples_per_s: float | None = None
    batch: tuple[int, int, int] = (1, 1, 1)  # BATCH_SIZE, ACCUMULATION_STEPS, workers: the effective batch
    elapsed_s: float = 0.0
    eta_s: float | None = None
    skipped_steps: int = 0
    losses: dict[str, float] = field(default_factory=dict)  # LOSS_NAMES -> value
    loss_trends: dict[str, Trend] = field(default_factory=dict)
    status: str = ConvergenceStatus.UNKNOWN.value
    activity: list[float] = field(default_factory=list)  # per block, [0,1]
    activity_trends: list[Trend] = field(default_factory=list)
    sort_by_activity: bool = True
    validation: ValidationMetrics | None = None
    next_validation: int = 1  # Trainer.next_validation_step()
    next_checkpoint: int = 1  # Trainer.next_checkpoint_step()
    last_checkpoint: tuple[int, str] | None = None  # (step, path)
    preset: str = ""
    device: str = ""
    precision: str = ""
    output_dir: str = ""
    phase: str = "pretrain"
    config_path: str = ""
    settings: dict[str, Any] = field(default_factory=dict)  # LIVE_KEYS -> value
    menu: MenuState | None = None
    paused: bool = False
    stopping: bool = False
    message: str = ""

    @property
    def cold(self) -> list[int]:
        return cold_layers(self.activity)


class ConsoleRecorder(TrainingHooks):
    """What both consoles record: the loss breakdown, the step rate, layer activity."""

    def __init__(self, trainer: Trainer, config_path: str | Path | None = None):
        self.trainer = trainer
        self.config_path = Path(config_path) if config_path else trainer.output_dir / "train_config.json"
        self.sort_by_activity = trainer.config.sort_by_activity
        self.loss_rows: deque[tuple[float, float, float]] = deque(maxlen=LOSS_TREND_WINDOW)
        self.activity: list[float] = []
        self.validation: ValidationMetrics | None = trainer.last_validation
        self.last_checkpoint: tuple[int, str] | None = None
        self.samples_per_s: float | None = None
        self.paused = False
        self.menu: MenuState | None = None
        self.stop_requested = False
        self.message = ""
        self._start = time.monotonic()
        self._rate: deque[tuple[float, int]] = deque()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None

    def _record(self, trainer: Trainer, m: StepMetrics) -> None:
        self.loss_rows.append((m.loss_l1, m.loss_perceptual, m.loss_total))
        activity = trainer.model.layer_activity()  # the forward pass of this step
        if activity and all(math.isfinite(a) for a in activity):
            self.activity = activity
        if math.isfinite(m.samples_per_s):
            self.samples_per_s = m.samples_per_s if self.samples_per_s is None \
                else 0.7 * self.samples_per_s + 0.3 * m.samples_per_s
        now = time.monotonic()
        self._rate.append((now, m.step))
        while len(self._rate) > 2 and now - self._rate[0][0] > RATE_WINDOW_S:
            self._rate.popleft()

    def _restart_rate(self, trainer: Trainer) -> None:
        """After a pause, the menu or a requested validation: the ETA restarts from the current step."""
        self._rate.clear()
        self._rate.append((time.monotonic(), trainer.step))

    def _eta(self, trainer: Trainer) -> float | None:
        if len(self._rate) < 2:
            return None
        (t0, s0), (t1, s1) = self._rate[0], self._rate[-1]
        if s1 <= s0 or t1 <= t0:
            return None
        return max(trainer.config.max_steps - trainer.step, 0) * (t1 - t0) / (s1 - s0)

    def snapshot(self, trainer: Trainer | None = None) -> ConsoleState:
        trainer = trainer or self.trainer
        cfg = trainer.config
        activity = self.activity or (list(trainer.activity_history[-1]) if trainer.activity_history else [])
        history = list(trainer.activity_history)  # logged every LOG_TBOARD_EVERY steps, as TensorBoard/Tune see it
        trends = layer_trends(history) if history and len(history[-1]) == len(activity) else []
        if len(trends) != len(activity):
            trends = [Trend.STABLE] * len(activity)
        last = self.loss_rows[-1] if self.loss_rows else (math.nan,) * 3
        return ConsoleState(
            step=trainer.step,
            max_steps=cfg.max_steps,
            epoch=trainer.epoch,
            lr=trainer.lr,
            samples_per_s=self.samples_per_s,
            batch=(cfg.batch_size, cfg.accumulation_steps, trainer.workers),
            elapsed_s=time.monotonic() - self._start,
            eta_s=self._eta(trainer),
            skipped_steps=trainer.skipped_steps,
            losses=dict(zip(LOSS_NAMES, last)),
            loss_trends=dict(zip(LOSS_NAMES, loss_trends(self.loss_rows) or [Trend.STABLE] * 3)),
            status=trainer.convergence(),
            activity=activity,
            activity_trends=trends,
            sort_by_activity=self.sort_by_activity,
            validation=self.validation,
            next_validation=trainer.next_validation_step(),
            next_checkpoint=trainer.next_checkpoint_step(),
            last_checkpoint=self.last_checkpoint,
            preset=cfg.preset,
            device=str(trainer.device),
            precision=getattr(trainer, "precision", ""),
            output_dir=str(trainer.output_dir),
            phase=trainer.training_phase,
            config_path=str(self.config_path),
            settings={key: getattr(cfg, key.lower()) for key in LIVE_KEYS},
            menu=MenuState(self.menu.buffer, self.menu.message, self.menu.error) if self.menu else None,
            paused=self.paused,
            stopping=self.stop_requested,
            message=self.message,
        )
