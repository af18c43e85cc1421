"""``vsr train``: one training run, shown by the live console in a terminal, as log lines otherwise."""
from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from vsr_core.checkpoint import load_checkpoint
from vsr_core.config import FINETUNE_DEFAULTS, ConfigError, TrainConfig, parse_value
from vsr_core.engine.console import LiveConsole, PlainConsole
from vsr_core.engine.trainer import Trainer, TrainingHooks
from vsr_core.metrics import format_gain


def parse_overrides(items: list[str]) -> dict:
    """``KEY=VALUE`` pairs; VALUE is parsed as JSON when it can be (numbers, true/false, lists)."""
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        overrides[key.strip()] = parse_value(value)
    return overrides


def load_config(path: str | None, overrides: list[str], resume: str | None = None,
                finetune_from: str | None = None) -> TrainConfig:
    """The config file's keys (or, resuming or fine-tuning without one, the checkpoint's own config)
    plus ``--set``. A fine-tune starts from the seed's LR_EXPONENT and WEIGHT_DECAY for that phase
    (``FINETUNE_DEFAULTS``) unless ``--set`` gives them."""
    if path:
        base = TrainConfig.from_json(path).to_dict()
    elif resume or finetune_from:
        # not the defaults: they would be another run (preset, data...)
        base = load_checkpoint(resume or finetune_from)["config"]
    else:
        base = {}
    phase = FINETUNE_DEFAULTS if finetune_from else {}
    return TrainConfig.from_dict({**base, **phase, **parse_overrides(overrides)})


def make_console(trainer: Trainer, config_path: Path, plain: bool) -> TrainingHooks:
    """The live console in a terminal, plain log lines otherwise (or with --plain)."""
    if not plain and sys.stdin.isatty() and sys.stdout.isatty():
        return LiveConsole(trainer, config_path)
    return PlainConsole(trainer, config_path)


class StopOnInterrupt:
    """Ctrl-C (SIGINT) asks ``fit`` to stop at the next step boundary, where it saves latest.pth: a
    checkpoint taken inside a step would hold an updated model with the step counter not yet moved.
    A second Ctrl-C interrupts at once (KeyboardInterrupt), without saving."""

    def __init__(self, trainer: Trainer):
        self.trainer = trainer
        self.interrupted = False
        self._previous = None

    def _handle(self, signum, frame) -> None:
        self.interrupted = True
        self.trainer.request_stop()
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def __enter__(self) -> "StopOnInterrupt":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def cmd_train(args: argparse.Namespace) -> int:
    config = load_config(args.config, args.set, args.resume, args.finetune_from)
    trainer = Trainer(config, resume_from=args.resume, finetune_from=args.finetune_from)
    run_config = trainer.output_dir / "train_config.json"
    config.save(run_config)
    print(f"training {config.preset} on {trainer.device} -> {trainer.output_dir} "
          f"(lr {config.learning_rate:.1e}, wd {config.weight_decay}, batch {config.batch_size}x"
          f"{config.accumulation_steps}, phase {trainer.training_phase}, from step {trainer.step})", flush=True)
    console = make_console(trainer, Path(args.config) if args.config else run_config, args.plain)
    latest = trainer.output_dir / "latest.pth"
    try:
        with StopOnInterrupt(trainer) as interrupt, console:
            final = trainer.fit(console)
    except KeyboardInterrupt:  # the second Ctrl-C: mid-step, so nothing is saved
        print(f"interrupted again: not saved; {latest} holds the last completed checkpoint", flush=True)
        return 130
    if interrupt.interrupted:
        print(f"interrupted: saved {latest} at step {trainer.step}", flush=True)
        return 130
    if trainer.step < trainer.config.max_steps:
        print(f"stopped at step {trainer.step}/{trainer.config.max_steps}; checkpoint {latest}")
    elif final:
        print(f"done: step {trainer.step}, val gain over bicubic {format_gain(final.gain)} "
              f"(Y-PSNR {final.psnr:.2f} dB, bicubic {final.bicubic_psnr:.2f}), "
              f"Y-SSIM {final.ssim:.4f}; checkpoint {latest}")
    return 0


def add_train_parser(sub) -> None:
    train = sub.add_parser("train", help="train one run (the Option B loop)")
    train.add_argument("--config", help="train_config.json (the seed's keys plus the rest; see README); "
                       "with --resume and no --config, the checkpoint's own config")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config key, e.g. --set MAX_STEPS=500 (repeatable)")
    train.add_argument("--resume", help="continue a run from its checkpoint (e.g. runs/x/latest.pth); "
                       "changed LR_EXPONENT / WEIGHT_DECAY / MAX_STEPS take effect from its step on")
    train.add_argument("--finetune-from", help="start from a checkpoint's weights (a .pth, run folder or best/) with "
                       "a fresh optimizer, training_phase 'finetune' and the seed's LR_EXPONENT -5 and WEIGHT_DECAY "
                       "0.001 unless --set gives others; without --config, the checkpoint's own config")
    train.add_argument("--plain", action="store_true",
                       help="plain log lines even in a terminal (no live console, no keys)")
    train.set_defaults(func=cmd_train)
