"""The training console: a full-screen live view of one run, or plain log lines.

Both are :class:`TrainingHooks`: the engine (``Trainer.fit``) calls ``on_step`` /
``on_validation`` / ``on_checkpoint`` / ``should_stop``; the console never trains.

* :class:`LiveConsole` (a terminal): a ``rich`` full-screen view refreshed up to
  4 times a second, and keys read by a background thread from the terminal in
  cbreak mode (the terminal is restored on exit, also on exceptions and SIGTERM):

  ========  =========================================================================
  ENTER     setup menu: type ``KEY=VALUE`` (or ``N=VALUE``) + ENTER to change a live
            key (``Trainer.update_config``), empty ENTER (or ESC) closes; training
            waits while the menu is open; changes are saved to the config file
  P         pause / resume (while paused the training thread sleeps on the key queue)
  V         validate now
  S         sort the layer table by activity / by position
  Q         stop cleanly; the engine then writes ``latest.pth``
  ========  =========================================================================

* :class:`PlainConsole` (logs, CI, ``ray job submit``): one line every
  ``interval_s`` seconds (and at the first and last step), plus a line per
  validation and checkpoint. No cursor control, no keys.

:func:`render_text` renders a :class:`ConsoleState` to plain text (tests, README).
"""
from __future__ import annotations

import io
import json
import math
import os
import queue
import select
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from rich.console import Console, ConsoleOptions, Group, RenderResult
from rich.live import Live
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from vsr_core.engine.health import (
    ConvergenceStatus,
    Trend,
    cold_layer_warning,
    cold_layers,
    layer_name,
    layer_trends,
    sort_layers,
    top_layers,
)
from vsr_core.engine.trainer import LIVE_KEYS, StepMetrics, Trainer, TrainingHooks, ValidationMetrics

__all__ = [
    "ConsoleState",
    "KeyReader",
    "LiveConsole",
    "MenuState",
    "PlainConsole",
    "decode_keys",
    "format_plain_line",
    "loss_trends",
    "parse_value",
    "render",
    "render_text",
]

LOSS_NAMES = ("L1", "Perceptual", "Total")
COLD_THRESHOLD = 0.20
TOP_K = 5
LOSS_TREND_WINDOW = 50  # steps
LOSS_TREND_THRESHOLD = 0.05  # relative change of the fitted line across the window
REFRESH_PER_SECOND = 4.0
IDLE_REFRESH_S = 1.0  # paused / menu open: redraw this often (and on every key)
RATE_WINDOW_S = 60.0  # ETA from the step rate over this many seconds

ENTER, BACKSPACE, ESC = "ENTER", "BACKSPACE", "ESC"

STATUS_STYLES = {
    ConvergenceStatus.CONVERGING.value: "bold green",
    ConvergenceStatus.PLATEAUING.value: "bold yellow",
    ConvergenceStatus.DIVERGING.value: "bold red",
    ConvergenceStatus.UNKNOWN.value: "dim",
}
LOSS_TREND_STYLES = {Trend.FALLING: "green", Trend.RISING: "red", Trend.STABLE: "dim"}
ACTIVITY_TREND_STYLES = {Trend.RISING: "cyan", Trend.FALLING: "magenta", Trend.STABLE: "dim"}


# --------------------------------------------------------------------------------------------- #
# small pure helpers
# --------------------------------------------------------------------------------------------- #
def loss_trends(
    history: Sequence[Sequence[float]],
    window: int = LOSS_TREND_WINDOW,
    threshold: float = LOSS_TREND_THRESHOLD,
) -> list[Trend]:
    """Trend of each loss column over the last ``window`` rows.

    :func:`health.layer_trends` (least-squares slope, change across the window) on
    the columns divided by their median ``|value|`` in the window, so ``threshold``
    is a *relative* change (0.05 = the fitted line moved by 5 %). An all-zero column
    (e.g. the perceptual loss with weight 0) is stable; non-finite values make a
    column stable, as in ``layer_trends``.
    """
    rows = [[float(v) for v in row] for row in history][-window:]
    if not rows:
        return []
    columns = list(zip(*rows))
    scales = []
    for column in columns:
        finite = sorted(abs(v) for v in column if math.isfinite(v))
        median = finite[len(finite) // 2] if finite else 0.0
        scales.append(median if median > 0 else 1.0)
    scaled = [[v / s for v, s in zip(row, scales)] for row in rows]
    return layer_trends(scaled, window=max(window, 2), threshold=threshold)


def parse_value(text: str) -> Any:
    """A typed value: JSON when it parses (numbers, true/false, lists), else the string.
    ``True``/``False`` are accepted in any case."""
    text = text.strip()
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def decode_keys(data: bytes) -> list[str]:
    """Terminal input -> key tokens: printable characters as themselves, ``"ENTER"``
    (CR, LF or CR LF), ``"BACKSPACE"`` (DEL / BS) and ``"ESC"``. Escape sequences
    (arrow keys, function keys) and other control characters are dropped."""
    text = data.decode("utf-8", errors="ignore")
    keys: list[str] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c == "\x1b":
            if i + 1 < len(text) and text[i + 1] == "[":  # CSI: parameters, then a final byte @..~
                j = i + 2
                while j < len(text) and not ("@" <= text[j] <= "~"):
                    j += 1
                i = j + 1
                continue
            if i + 1 < len(text) and text[i + 1] == "O":  # SS3: one final byte
                i += 3
                continue
            keys.append(ESC)
        elif c == "\r":
            keys.append(ENTER)
            if i + 1 < len(text) and text[i + 1] == "\n":
                i += 1
        elif c == "\n":
            keys.append(ENTER)
        elif c in "\x7f\x08":
            keys.append(BACKSPACE)
        elif c.isprintable():
            keys.append(c)
        i += 1
    return keys


def _clock(seconds: float | None) -> str:
    """``H:MM:SS``, with days in front from 24 h on: ``3d 04:05:06``."""
    if seconds is None or not math.isfinite(seconds):
        return "--:--:--"
    seconds = int(round(seconds))
    days, seconds = divmod(seconds, 86400)
    clock = f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
    return f"{days}d {clock:0>8}" if days else clock


def _speed(samples_per_s: float | None) -> str:
    if samples_per_s is None:
        return "-"
    return f"{samples_per_s:.1f}" if samples_per_s >= 10 else f"{samples_per_s:.2f}"


def _loss(value: float) -> str:
    return f"{value:.5f}" if math.isfinite(value) else "nan"


def _setting(value: Any) -> str:
    return json.dumps(value) if isinstance(value, bool) else str(value)


def _next_event(step: int, every: int, max_steps: int) -> int:
    """The step of the next validation / checkpoint in ``Trainer.fit``: a multiple of
    ``every``, or the last step."""
    return min((step // every + 1) * every, max_steps) if step < max_steps else max_steps


# --------------------------------------------------------------------------------------------- #
# what is shown
# --------------------------------------------------------------------------------------------- #
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
    val_every: int = 1
    save_every: int = 1
    last_checkpoint: tuple[int, str] | None = None  # (step, path)
    preset: str = ""
    device: str = ""
    output_dir: str = ""
    phase: str = "pretrain"
    config_path: str = ""
    settings: dict[str, Any] = field(default_factory=dict)  # LIVE_KEYS -> value
    menu: MenuState | None = None
    paused: bool = False
    stopping: bool = False
    message: str = ""

    @property
    def next_validation(self) -> int:
        return _next_event(self.step, self.val_every, self.max_steps)

    @property
    def next_checkpoint(self) -> int:
        return _next_event(self.step, self.save_every, self.max_steps)

    @property
    def cold(self) -> list[int]:
        return cold_layers(self.activity, COLD_THRESHOLD)


# --------------------------------------------------------------------------------------------- #
# rendering
# --------------------------------------------------------------------------------------------- #
def _header(state: ConsoleState) -> Panel:
    fraction = state.step / state.max_steps if state.max_steps else 0.0
    top = Table.grid(padding=(0, 1), expand=True)
    top.add_column(no_wrap=True)
    top.add_column(ratio=1)
    top.add_column(no_wrap=True, justify="right")
    top.add_row(
        Text(f"Step {state.step}/{state.max_steps}", style="bold"),
        ProgressBar(total=max(state.max_steps, 1), completed=min(state.step, state.max_steps)),
        Text(f"{100 * fraction:5.1f}%  ETA {_clock(state.eta_s)}"),
    )
    sps = _speed(state.samples_per_s)
    info = Text.assemble(
        (f"{sps} samples/s", "bold"), "   ",
        ("LR ", "dim"), (f"{state.lr:.2e}", "bold"), "   ",
        ("epoch ", "dim"), str(state.epoch), "   ",
        ("elapsed ", "dim"), _clock(state.elapsed_s), "   ",
        ("skipped steps ", "dim"), (str(state.skipped_steps), "red" if state.skipped_steps else ""),
    )
    title = f"VSR+++ v2 training · {state.preset} · {state.device} · {state.phase} · {state.output_dir}"
    badge = Text()  # first, so a long output_dir cannot push it out of the title
    if state.stopping:
        badge = Text("■ STOPPING ", style="bold red")
    elif state.menu is not None:
        badge = Text("⚙ SETUP ", style="bold cyan")
    elif state.paused:
        badge = Text("⏸ PAUSED ", style="bold yellow")
    return Panel(Group(top, info), title=badge + Text(title), title_align="left", border_style="blue")


def _loss_panel(state: ConsoleState) -> Panel:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_column()
    for name in LOSS_NAMES:
        value = state.losses.get(name, math.nan)
        trend = state.loss_trends.get(name, Trend.STABLE)
        table.add_row(name, _loss(value), Text(trend.arrow, style=LOSS_TREND_STYLES[trend]))
    table.add_row("Status", Text(state.status, style=STATUS_STYLES.get(state.status, "")), "")
    return Panel(table, title="Loss", title_align="left", border_style="blue")


def _validation_panel(state: ConsoleState) -> Panel:
    lines = []
    v = state.validation
    if v is None:
        lines.append(Text("no validation yet", style="dim"))
    else:
        gain = v.psnr - v.bicubic_psnr
        lines.append(Text.assemble(
            f"step {v.step}: ", ("PSNR ", "dim"), (f"{v.psnr:.2f} dB", "bold"),
            (" SSIM ", "dim"), (f"{v.ssim:.4f}", "bold"),
        ))
        lines.append(Text.assemble(
            ("bicubic PSNR ", "dim"), f"{v.bicubic_psnr:.2f} dB  ",
            (f"({gain:+.2f} dB)", "green" if gain > 0 else "red"),
        ))
    lines.append(Text.assemble(("next validation  ", "dim"),
                               f"step {state.next_validation} (in {state.next_validation - state.step})"))
    checkpoint = Text.assemble(("next checkpoint  ", "dim"),
                               f"step {state.next_checkpoint} (in {state.next_checkpoint - state.step})")
    if state.last_checkpoint:
        checkpoint.append(f"  last: step {state.last_checkpoint[0]}", style="dim")
    lines.append(checkpoint)
    return Panel(Group(*lines), title="Validation (Y channel)", title_align="left", border_style="blue")


class _LayerGrid:
    """The layer cells in as many columns as the width allows, filled column by column; cells
    drop their bar when the full cells would need more than ``max_rows`` rows."""

    BAR = 8
    GAP = 3

    def __init__(self, state: ConsoleState, max_rows: int | None = None):
        self.state = state
        self.max_rows = max_rows

    def _cell(self, index: int, bar: bool) -> Text:
        value = self.state.activity[index]
        trend = (self.state.activity_trends[index] if index < len(self.state.activity_trends) else Trend.STABLE)
        cold = math.isfinite(value) and value < COLD_THRESHOLD
        filled = round(self.BAR * value) if math.isfinite(value) else 0
        pct = f"{100 * value:3.0f}%" if math.isfinite(value) else "   -"
        text = Text.assemble((layer_name(index), "bold red" if cold else ""), " ")
        if bar:
            text.append_text(Text.assemble(("█" * filled, "red" if cold else "green"),
                                           ("░" * (self.BAR - filled), "dim"), " "))
        text.append_text(Text.assemble((pct, "red" if cold else ""), " ",
                                       (trend.arrow, ACTIVITY_TREND_STYLES[trend])))
        return text

    def _shape(self, count: int, width: int, bar: bool) -> tuple[int, int]:
        cell = 15 + (self.BAR + 1 if bar else 0)  # "Block_00 ████░░░░ 100% ⬆"
        columns = max(1, min(count, (width + self.GAP) // (cell + self.GAP)))
        rows = math.ceil(count / columns)
        return rows, math.ceil(count / rows)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        order = sort_layers(self.state.activity, self.state.sort_by_activity)
        if not order:
            yield Text("no layer activity yet", style="dim")
            return
        bar = True
        rows, columns = self._shape(len(order), options.max_width, bar)
        if self.max_rows is not None and rows > self.max_rows:
            bar = False
            rows, columns = self._shape(len(order), options.max_width, bar)
        grid = Table.grid(padding=(0, self.GAP, 0, 0))
        for _ in range(columns):
            grid.add_column(no_wrap=True)
        for r in range(rows):
            grid.add_row(*[self._cell(order[c * rows + r], bar) if c * rows + r < len(order) else ""
                           for c in range(columns)])
        yield grid


def _layers_panel(state: ConsoleState, max_rows: int | None = None) -> Panel:
    parts: list = [_LayerGrid(state, max_rows)]
    if state.activity:
        trends = list(state.activity_trends) if len(state.activity_trends) == len(state.activity) \
            else [Trend.STABLE] * len(state.activity)
        top = top_layers(state.activity, trends, TOP_K)
        line = Text(f"Top {len(top)}: ", style="bold")
        for k, stat in enumerate(top):
            line.append(("  " if k else "") + f"{stat.name} {100 * stat.activity:.0f}% ")
            line.append(stat.trend.arrow, style=ACTIVITY_TREND_STYLES[stat.trend])
        parts.append(line)
        warning = cold_layer_warning(state.activity, COLD_THRESHOLD)
        parts.append(Text(f"⚠ {warning}", style="bold yellow") if warning
                     else Text(f"✓ no cold layers (all ≥{100 * COLD_THRESHOLD:.0f}% active)", style="green"))
    order = "activity" if state.sort_by_activity else "position"
    title = f"Layer activity · {len(state.activity)} blocks · sorted by {order} (S toggles)"
    return Panel(Group(*parts), title=title, title_align="left", border_style="blue")


def _menu_panel(state: ConsoleState) -> Panel:
    menu = state.menu or MenuState()
    table = Table.grid(padding=(0, 2))
    table.add_column(justify="right", style="bold cyan")
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_column(style="dim")
    for number, key in enumerate(LIVE_KEYS, 1):
        value = state.settings.get(key)
        note = f"(learning rate {10.0 ** value:.2e})" if key == "LR_EXPONENT" and value is not None else ""
        table.add_row(str(number), key, _setting(value), note)
    parts = [
        Text("Training waits while this menu is open. Type KEY=VALUE (or NUMBER=VALUE) and ENTER to apply "
             "from the next step; an empty ENTER (or ESC) closes."),
        Text(""),
        table,
        Text(""),
        Text.assemble(("> ", "bold cyan"), menu.buffer, ("▌", "blink")),
    ]
    if menu.message:
        parts.append(Text(menu.message, style="bold red" if menu.error else "green"))
    parts.append(Text(f"changes are saved to {state.config_path}", style="dim"))
    return Panel(Group(*parts), title="Setup", title_align="left", border_style="cyan")


def _footer(state: ConsoleState) -> Text:
    keys = Text()
    for key, action in (("ENTER", "setup"), ("P", "resume" if state.paused else "pause"), ("V", "validate"),
                        ("S", "sort"), ("Q", "quit & save")):
        keys.append(f" {key} ", style="reverse")
        keys.append(f" {action}  ")
    if state.message:
        keys.append(f" {state.message}", style="italic")
    return keys


FIXED_LINES = 17  # everything but the layer grid's rows, with a one-line cold-layer warning


def render(state: ConsoleState, height: int | None = None):
    """The console as one ``rich`` renderable; with ``height`` (the terminal's), the layer
    grid gets compact when the full one would not fit."""
    middle = Table.grid(expand=True, padding=(0, 1))
    middle.add_column(ratio=2)
    middle.add_column(ratio=3)
    middle.add_row(_loss_panel(state), _validation_panel(state))
    max_rows = max(height - FIXED_LINES, 1) if height else None
    body = _menu_panel(state) if state.menu is not None else _layers_panel(state, max_rows)
    return Group(_header(state), middle, body, _footer(state))


def render_text(state: ConsoleState, width: int = 100, height: int | None = None) -> str:
    """The console as plain text (no colours or cursor codes): for tests and the README."""
    console = Console(record=True, width=width, file=io.StringIO(), color_system=None, force_terminal=False,
                      legacy_windows=False)
    console.print(render(state, height))
    return console.export_text(styles=False)


def format_plain_line(state: ConsoleState) -> str:
    """One log line of :class:`PlainConsole`."""
    losses = " ".join(f"{name} {_loss(state.losses.get(name, math.nan))} "
                      f"{state.loss_trends.get(name, Trend.STABLE).arrow}" for name in LOSS_NAMES)
    sps = _speed(state.samples_per_s)
    return (f"step {state.step}/{state.max_steps} | {losses} | lr {state.lr:.2e} | {sps} samples/s | "
            f"{state.status} | cold layers {len(state.cold)}/{len(state.activity)} | ETA {_clock(state.eta_s)}")


# --------------------------------------------------------------------------------------------- #
# the hooks
# --------------------------------------------------------------------------------------------- #
class _ConsoleHooks(TrainingHooks):
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
        """After a pause or the menu: the ETA restarts from the current step."""
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
            val_every=cfg.val_step_every,
            save_every=cfg.save_step_every,
            last_checkpoint=self.last_checkpoint,
            preset=cfg.preset,
            device=str(trainer.device),
            output_dir=str(trainer.output_dir),
            phase=trainer.training_phase,
            config_path=str(self.config_path),
            settings={key: getattr(cfg, key.lower()) for key in LIVE_KEYS},
            menu=MenuState(self.menu.buffer, self.menu.message, self.menu.error) if self.menu else None,
            paused=self.paused,
            stopping=self.stop_requested,
            message=self.message,
        )

    def render_text(self, width: int = 100, height: int | None = None) -> str:
        return render_text(self.snapshot(), width, height)

    def should_stop(self, trainer: Trainer) -> bool:
        return self.stop_requested


class PlainConsole(_ConsoleHooks):
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
        self._print(f"step {v.step}: validation Y-PSNR {v.psnr:.2f} dB (bicubic {v.bicubic_psnr:.2f}), "
                    f"Y-SSIM {v.ssim:.4f}, L1 {v.l1:.5f} | {trainer.convergence()}")

    def on_checkpoint(self, trainer: Trainer, path: Path) -> None:
        self.last_checkpoint = (trainer.step, str(path))
        self._print(f"step {trainer.step}: saved {path}")


class KeyReader:
    """Reads keys from a terminal on a daemon thread and puts :func:`decode_keys` tokens on
    ``keys``. ``start()`` puts the terminal in cbreak mode (no echo, no line buffering;
    Ctrl-C still interrupts); ``stop()`` restores it."""

    def __init__(self, keys: queue.Queue, fd: int):
        self.keys = keys
        self.fd = fd
        self._saved: list | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> "KeyReader":
        import termios
        import tty

        self._saved = termios.tcgetattr(self.fd)
        tty.setcbreak(self.fd, termios.TCSANOW)
        self._thread = threading.Thread(target=self._run, name="vsr-console-keys", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([self.fd], [], [], 0.1)
                if not ready:
                    continue
                data = os.read(self.fd, 1024)
            except (OSError, ValueError):
                return
            if not data:  # EOF
                return
            for key in decode_keys(data):
                self.keys.put(key)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
            self._thread = None
        if self._saved is not None:
            import termios

            try:
                termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved)
            finally:
                self._saved = None


class LiveConsole(_ConsoleHooks):
    """The full-screen live view with keys (see the module docstring). Use as a context
    manager around ``trainer.fit(console)``; it leaves the screen and restores the terminal
    on exit, also when training raises.

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

    # --- lifecycle ------------------------------------------------------------------------
    def __enter__(self) -> "LiveConsole":
        try:
            if self._read_terminal:
                fd = self._input_fd if self._input_fd is not None else sys.stdin.fileno()
                self._reader = KeyReader(self.keys, fd).start()
            if threading.current_thread() is threading.main_thread():
                self._previous_sigterm = signal.signal(signal.SIGTERM, _exit_on_signal)
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

    # --- hooks ------------------------------------------------------------------------------
    def on_step(self, trainer: Trainer, m: StepMetrics) -> None:
        self._record(trainer, m)
        self.process_keys(trainer)
        while (self.paused or self.menu is not None) and not self.stop_requested:
            self.refresh(force=True)
            self.process_keys(trainer, timeout=IDLE_REFRESH_S)  # sleeps on the queue: no CPU while waiting
        cfg = trainer.config
        if not self.stop_requested and (trainer.step % cfg.val_step_every == 0 or trainer.step >= cfg.max_steps):
            self.message = "validating..."  # the engine validates right after this hook
            self.refresh(force=True)
        else:
            self.refresh()

    def on_validation(self, trainer: Trainer, v: ValidationMetrics) -> None:
        self.validation = v
        self.message = (f"validation at step {v.step}: PSNR {v.psnr:.2f} dB (bicubic {v.bicubic_psnr:.2f}), "
                        f"SSIM {v.ssim:.4f}")
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
            self.refresh(force=True)
            return
        command = key.upper() if len(key) == 1 else key
        if command == ENTER:
            self.menu = MenuState()
            self.message = "setup: training waits"
        elif command == "P":
            self.paused = not self.paused
            self.message = "paused: P resumes" if self.paused else "resumed"
            if not self.paused:
                self._restart_rate(trainer)
        elif command == "S":
            self.sort_by_activity = not self.sort_by_activity
            self.message = f"layers sorted by {'activity' if self.sort_by_activity else 'position'}"
        elif command == "V":
            self.message = "validating..."
            self.refresh(force=True)
            self.on_validation(trainer, trainer.validate())
            self._restart_rate(trainer)
        elif command == "Q":
            self.stop_requested = True
            self.message = "stopping: saving a checkpoint..."
        else:
            return
        self.refresh(force=True)

    def _menu_key(self, trainer: Trainer, key: str) -> None:
        menu = self.menu
        if key == ENTER:
            line, menu.buffer = menu.buffer.strip(), ""
            if line:
                self.apply_setting(trainer, line)
            else:
                self._close_menu(trainer)
        elif key == ESC:
            self._close_menu(trainer)
        elif key == BACKSPACE:
            menu.buffer = menu.buffer[:-1]
        elif len(key) == 1:
            menu.buffer += key

    def _close_menu(self, trainer: Trainer) -> None:
        self.menu = None
        self.message = "setup closed"
        self._restart_rate(trainer)

    def apply_setting(self, trainer: Trainer, line: str) -> bool:
        """Apply one ``KEY=VALUE`` (or ``NUMBER=VALUE``) line of the menu; the answer goes to
        ``self.menu.message``. Returns whether the change was applied."""
        menu = self.menu if self.menu is not None else MenuState()
        key, sep, raw = line.partition("=")
        key = key.strip().upper()
        if key.isdigit() and 1 <= int(key) <= len(LIVE_KEYS):
            key = LIVE_KEYS[int(key) - 1]
        if not sep or not key or not raw.strip():
            menu.message, menu.error = f"✗ type KEY=VALUE, e.g. LR_EXPONENT=-3 (got {line!r})", True
            return False
        value = parse_value(raw)
        try:
            trainer.update_config(**{key: value})
        except ValueError as exc:  # ConfigError too: refused, nothing changed
            menu.message, menu.error = f"✗ {exc}", True
            return False
        if key == "SORT_BY_ACTIVITY":
            self.sort_by_activity = trainer.config.sort_by_activity
        saved = self._save_config(trainer)
        menu.message, menu.error = f"✓ {key} = {_setting(value)} applied from the next step; {saved}", False
        return True

    def _save_config(self, trainer: Trainer) -> str:
        """Write the config to the config file and keep the run folder's copy in step."""
        paths = [self.config_path]
        run_copy = trainer.output_dir / "train_config.json"
        if run_copy.resolve() != self.config_path.resolve():
            paths.append(run_copy)
        try:
            for path in paths:
                trainer.config.save(path)
        except OSError as exc:
            return f"NOT saved: {exc}"
        return f"saved to {self.config_path}"


def _exit_on_signal(signum, frame) -> None:
    raise SystemExit(128 + signum)  # unwinds through the console's __exit__: the terminal is restored
