"""The console for logs, CI and ``ray job submit``: one line every ``interval_s`` seconds (and at
the first and last step), plus a line per validation and checkpoint. No cursor control, no keys."""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TextIO

from vsr_core.engine.console.render import format_plain_line
from vsr_core.engine.console.state import ConsoleRecorder
from vsr_core.engine.hooks import StepMetrics, ValidationMetrics
from vsr_core.engine.trainer import Trainer


class PlainConsole(ConsoleRecorder):
    """Log lines for a non-terminal stdout: a status line at the first and last step and
    every ``interval_s`` seconds between, one line per validation and checkpoint."""

    def __init__(self, trainer: Trainer, config_path: str | Path | None = None, *,
                 stream: TextIO | None = None, interval_s: float = 10.0):
        super().__init__(trainer, config_path)
        self.stream = stream
        self.interval_s = interval_s
        self._last_line: float | None = None

    def _print(self, line: str) -> None:
        print(line, file=self.stream or sys.stdout, flush=True)

    def on_step(self, trainer: Trainer, m: StepMetrics) -> None:
        self._record(trainer, m)
        now = time.monotonic()
        if (self._last_line is None or now - self._last_line >= self.interval_s
                or trainer.step >= trainer.config.max_steps):
            self._last_line = now
            self._print(format_plain_line(self.snapshot(trainer)))

    def on_validation(self, trainer: Trainer, v: ValidationMetrics) -> None:
        self.validation = v
        self._print(f"step {v.step}: validation gain over bicubic {v.gain:+.2f} dB (Y-PSNR {v.psnr:.2f}, bicubic "
                    f"{v.bicubic_psnr:.2f}), "
                    f"Y-SSIM {v.ssim:.4f}, L1 {v.l1:.5f} | {trainer.convergence()}")

    def on_checkpoint(self, trainer: Trainer, path: Path) -> None:
        self.last_checkpoint = (trainer.step, str(path))
        self._print(f"step {trainer.step}: saved {path}")
