"""The live console's setup menu: type ``KEY=VALUE`` (or ``NUMBER=VALUE``) + ENTER to change a
live key; an empty ENTER (or ESC) closes. A change is checked at once (the answer shows in the
menu), requested from the trainer (``fit`` applies it at the next step boundary; training waits
while the menu is open) and saved to the config file and the run folder's copy."""
from __future__ import annotations

from pathlib import Path

from vsr_core.config import TrainConfig, parse_value
from vsr_core.engine.console.render import format_setting
from vsr_core.engine.console.state import MenuState
from vsr_core.engine.console.terminal import BACKSPACE, ENTER, ESC
from vsr_core.engine.trainer import LIVE_KEYS, Trainer


def edit_line(menu: MenuState, key: str) -> str | None:
    """Type ``key`` into the menu's line. Returns the finished line on ENTER (``""`` on an empty
    ENTER or ESC: close the menu), otherwise None."""
    if key == ENTER:
        line, menu.buffer = menu.buffer.strip(), ""
        return line
    if key == ESC:
        return ""
    if key == BACKSPACE:
        menu.buffer = menu.buffer[:-1]
    elif len(key) == 1:
        menu.buffer += key
    return None


def apply_line(trainer: Trainer, menu: MenuState, line: str, config_path: Path) -> tuple[str, TrainConfig] | None:
    """Request one ``KEY=VALUE`` line from the trainer and save the resulting config; the answer goes
    to ``menu.message``. Returns (KEY, the config after the change), or None if it was refused."""
    key, sep, raw = line.partition("=")
    key = key.strip().upper()
    if key.isdigit() and 1 <= int(key) <= len(LIVE_KEYS):
        key = LIVE_KEYS[int(key) - 1]
    if not sep or not key or not raw.strip():
        menu.message, menu.error = f"✗ type KEY=VALUE, e.g. LR_EXPONENT=-3 (got {line!r})", True
        return None
    value = parse_value(raw)
    try:
        config = trainer.request_config(**{key: value})
    except ValueError as exc:  # ConfigError too: refused, nothing changed
        menu.message, menu.error = f"✗ {exc}", True
        return None
    saved = save_config(config, trainer.output_dir / "train_config.json", config_path)
    menu.message, menu.error = f"✓ {key} = {format_setting(value)} applied from the next step; {saved}", False
    return key, config


def save_config(config: TrainConfig, run_copy: Path, config_path: Path) -> str:
    """Write the config to the config file and keep the run folder's copy in step; what happened."""
    paths = [config_path]
    if run_copy.resolve() != config_path.resolve():
        paths.append(run_copy)
    try:
        for path in paths:
            config.save(path)
    except OSError as exc:
        return f"NOT saved: {exc}"
    return f"saved to {config_path}"
