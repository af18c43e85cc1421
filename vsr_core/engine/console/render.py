"""Drawing the console: a :class:`ConsoleState` as one ``rich`` renderable (the live view), as
plain text (tests, README) and as one log line (:class:`PlainConsole`)."""
from __future__ import annotations

import io
import json
import math
from typing import Any

from rich.console import Console, ConsoleOptions, Group, RenderResult
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from vsr_core.engine.console.state import LOSS_NAMES, ConsoleState, MenuState
from vsr_core.engine.health import (
    COLD_THRESHOLD,
    ConvergenceStatus,
    Trend,
    cold_layer_warning,
    layer_name,
    sort_layers,
    top_layers,
)
from vsr_core.engine.trainer import LIVE_KEYS

TOP_K = 5
STATUS_STYLES = {
    ConvergenceStatus.CONVERGING.value: "bold green",
    ConvergenceStatus.PLATEAUING.value: "bold yellow",
    ConvergenceStatus.DIVERGING.value: "bold red",
    ConvergenceStatus.UNKNOWN.value: "dim",
}
LOSS_TREND_STYLES = {Trend.FALLING: "green", Trend.RISING: "red", Trend.STABLE: "dim"}
ACTIVITY_TREND_STYLES = {Trend.RISING: "cyan", Trend.FALLING: "magenta", Trend.STABLE: "dim"}


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


def format_setting(value: Any) -> str:
    return json.dumps(value) if isinstance(value, bool) else str(value)


def _batch(state: ConsoleState) -> str:
    """The effective batch: BATCH_SIZE x ACCUMULATION_STEPS x workers."""
    b, a, n = state.batch
    return f"{b}x{a}x{n}={b * a * n}"


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
        ("skipped steps ", "dim"), (str(state.skipped_steps), "red" if state.skipped_steps else ""), "   ",
        ("batch ", "dim"), _batch(state),
    )
    parts = (state.preset, state.device, state.precision, state.phase, state.output_dir)
    title = " · ".join(["VSR+++ v2 training", *(part for part in parts if part)])
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
        lines.append(Text.assemble(
            f"step {v.step}: ", ("gain over bicubic ", "dim"),
            (f"{v.gain:+.2f} dB", "bold green" if v.gain > 0 else "bold red"),
        ))
        lines.append(Text.assemble(
            ("PSNR ", "dim"), f"{v.psnr:.2f} dB", ("  bicubic ", "dim"), f"{v.bicubic_psnr:.2f} dB",
            ("  SSIM ", "dim"), f"{v.ssim:.4f}",
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
        self.cold = set(state.cold)

    def _cell(self, index: int, bar: bool) -> Text:
        value = self.state.activity[index]
        trend = (self.state.activity_trends[index] if index < len(self.state.activity_trends) else Trend.STABLE)
        cold = index in self.cold
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
        warning = cold_layer_warning(state.activity)
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
        table.add_row(str(number), key, format_setting(value), note)
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
    return (f"step {state.step}/{state.max_steps} | {losses} | lr {state.lr:.2e} | {sps} samples/s "
            f"(batch {_batch(state)}) | "
            f"{state.status} | cold layers {len(state.cold)}/{len(state.activity)} | ETA {_clock(state.eta_s)}")
