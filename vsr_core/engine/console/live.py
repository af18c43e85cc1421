"""The full-screen live view of one run, with keys.

A ``rich`` view refreshed up to 4 times a second; keys read from the terminal (see
``terminal``). Keys never change the trainer themselves: they post requests
(``trainer.request_*``) that ``fit`` takes at the next step boundary.

========  =========================================================================
ENTER     setup menu (see ``menu``): training waits while it is open
P         pause / resume: fit waits at the step boundary (sleeping on the key queue)
V         validate now
S         sort the layer table by activity / by position
Q         stop cleanly; the engine then writes ``latest.pth``
========  =========================================================================
"""
from __future__ import annotations

import queue
import signal
import sys
import threading
import time
from pathlib import Path

from rich.console import Console
from rich.live import Live

from vsr_core.engine.console.menu import apply_line, edit_line
from vsr_core.engine.console.render import render, render_text
from vsr_core.engine.console.state import ConsoleRecorder, MenuState
from vsr_core.engine.console.terminal import ENTER, KeyReader, exit_on_signal
from vsr_core.engine.hooks import StepMetrics, ValidationMetrics
from vsr_core.engine.trainer import Trainer

REFRESH_PER_SECOND = 4.0


class LiveConsole(ConsoleRecorder):
    """Use as a context manager around ``trainer.fit(console)``; it leaves the screen and restores
    the terminal on exit, also when training raises.

    ``keys``: a queue of key tokens to read instead of the terminal (tests). ``input_fd``:
    the terminal to read keys from (default stdin). ``console``: where to draw (default
    stdout).
    """

    def __init__(self, trainer: Trainer, config_path: str | Path | None = None, *,
                 console: Console | None = None, keys: queue.Queue | None = None, input_fd: int | None = None,
                 screen: bool = True, refresh_per_second: float = REFRESH_PER_SECOND):
        super().__init__(trainer, config_path)
        self.console = console or Console()
        self.keys: queue.Queue = keys if keys is not None else queue.Queue()
        self._read_terminal = keys is None
        self._input_fd = input_fd
        self.screen = screen
        self.refresh_interval = 1.0 / refresh_per_second
        self._live: Live | None = None
        self._reader: KeyReader | None = None
        self._last_refresh = 0.0
        self._previous_sigterm = None
        self._holding = False  # a pause is requested from the trainer (paused, or the menu is open)
        self._validation_requested = False

    # --- lifecycle ------------------------------------------------------------------------
    def __enter__(self) -> "LiveConsole":
        try:
            if self._read_terminal:
                fd = self._input_fd if self._input_fd is not None else sys.stdin.fileno()
                self._reader = KeyReader(self.keys, fd).start()
            if threading.current_thread() is threading.main_thread():
                self._previous_sigterm = signal.signal(signal.SIGTERM, exit_on_signal)
            self._live = Live(console=self.console, screen=self.screen, auto_refresh=False,
                              redirect_stdout=True, redirect_stderr=True)
            self._live.start()
            self.refresh(force=True)
        except BaseException:
            self.__exit__(*sys.exc_info())
            raise
        return self

    def __exit__(self, *exc) -> None:
        try:
            if self._live is not None:
                self._live.stop()
                self._live = None
        finally:
            try:
                if self._reader is not None:
                    self._reader.stop()
                    self._reader = None
            finally:
                if self._previous_sigterm is not None:
                    signal.signal(signal.SIGTERM, self._previous_sigterm)
                    self._previous_sigterm = None

    def refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_refresh < self.refresh_interval:
            return
        self._last_refresh = now
        if self._live is not None:
            self._live.update(render(self.snapshot(), self.console.height), refresh=True)

    def render_text(self, width: int = 100, height: int | None = None) -> str:
        return render_text(self.snapshot(), width, height)

    # --- hooks ------------------------------------------------------------------------------
    def on_step(self, trainer: Trainer, m: StepMetrics) -> None:
        self._record(trainer, m)
        self.process_keys(trainer)
        if trainer.validation_due() and not (self.stop_requested or self._holding):
            self.message = "validating..."  # the engine validates right after this hook
            self.refresh(force=True)
        else:
            self.refresh()

    def wait_while_paused(self, trainer: Trainer, timeout: float) -> None:
        self.refresh(force=True)
        self.process_keys(trainer, timeout=timeout)  # sleeps on the key queue: no CPU while waiting

    def on_validation(self, trainer: Trainer, v: ValidationMetrics) -> None:
        self.validation = v
        self.message = f"validation at step {v.step}: {v.gain:+.2f} dB over bicubic (PSNR {v.psnr:.2f})"
        if self._validation_requested:  # off schedule: leave its time out of the ETA
            self._validation_requested = False
            self._restart_rate(trainer)
        self.refresh(force=True)

    def on_checkpoint(self, trainer: Trainer, path: Path) -> None:
        self.last_checkpoint = (trainer.step, str(path))
        self.message = f"saved checkpoint at step {trainer.step}"
        self.refresh(force=True)

    # --- keys -------------------------------------------------------------------------------
    def process_keys(self, trainer: Trainer, timeout: float | None = None) -> None:
        """Handle the queued keys; with ``timeout``, first wait up to that long for one."""
        try:
            key = self.keys.get(timeout=timeout) if timeout else self.keys.get_nowait()
        except queue.Empty:
            return
        while True:
            self.handle_key(trainer, key)
            try:
                key = self.keys.get_nowait()
            except queue.Empty:
                return

    def handle_key(self, trainer: Trainer, key: str) -> None:
        if self.menu is not None:
            self._menu_key(trainer, key)
        else:
            command = key.upper() if len(key) == 1 else key
            if command == ENTER:
                self.menu = MenuState()
                self.message = "setup: training waits"
            elif command == "P":
                self.paused = not self.paused
                self.message = "paused: P resumes" if self.paused else "resumed"
            elif command == "S":
                self.sort_by_activity = not self.sort_by_activity
                self.message = f"layers sorted by {'activity' if self.sort_by_activity else 'position'}"
            elif command == "V":
                trainer.request_validation()
                self._validation_requested = True
                self.message = "validating..."
            elif command == "Q":
                self.stop_requested = True
                trainer.request_stop()
                self.message = "stopping: saving a checkpoint..."
            else:
                return
        self._hold(trainer)
        self.refresh(force=True)

    def _hold(self, trainer: Trainer) -> None:
        """Keep the trainer paused exactly while the console is paused or the menu is open."""
        wanted = self.paused or self.menu is not None
        if wanted == self._holding:
            return
        self._holding = wanted
        if wanted:
            trainer.request_pause()
        else:
            trainer.request_resume()
            self._restart_rate(trainer)

    def _menu_key(self, trainer: Trainer, key: str) -> None:
        line = edit_line(self.menu, key)
        if line is None:
            return
        if not line:
            self.menu = None
            self.message = "setup closed"
            return
        applied = apply_line(trainer, self.menu, line, self.config_path)
        if applied and applied[0] == "SORT_BY_ACTIVITY":
            self.sort_by_activity = applied[1].sort_by_activity
