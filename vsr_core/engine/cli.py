"""``vsr train``: one training run, shown by the live console in a terminal, as log lines otherwise."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vsr_core.config import ConfigError, TrainConfig
from vsr_core.engine.console import LiveConsole, PlainConsole, parse_value
from vsr_core.engine.trainer import Trainer, TrainingHooks


def parse_overrides(items: list[str]) -> dict:
    """``KEY=VALUE`` pairs; VALUE is parsed as JSON when it can be (numbers, true/false, lists)."""
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        overrides[key.strip()] = parse_value(value)
    return overrides


def load_config(path: str | None, overrides: list[str]) -> TrainConfig:
    base = TrainConfig.from_json(path).to_dict() if path else {}
    return TrainConfig.from_dict({**base, **parse_overrides(overrides)})


def make_console(trainer: Trainer, config_path: Path, plain: bool) -> TrainingHooks:
    """The live console in a terminal, plain log lines otherwise (or with --plain)."""
    if not plain and sys.stdin.isatty() and sys.stdout.isatty():
        return LiveConsole(trainer, config_path)
    return PlainConsole(trainer, config_path)


def cmd_train(args: argparse.Namespace) -> int:
    config = load_config(args.config, args.set)
    trainer = Trainer(config, resume_from=args.resume, finetune_from=args.finetune_from)
    run_config = trainer.output_dir / "train_config.json"
    config.save(run_config)
    print(f"training {config.preset} on {trainer.device} -> {trainer.output_dir} "
          f"(lr {config.learning_rate:.1e}, wd {config.weight_decay}, batch {config.batch_size}x"
          f"{config.accumulation_steps}, phase {trainer.training_phase}, from step {trainer.step})", flush=True)
    console = make_console(trainer, Path(args.config) if args.config else run_config, args.plain)
    try:
        with console:
            final = trainer.fit(console)
    except KeyboardInterrupt:
        print(f"interrupted: saved {trainer.save()} at step {trainer.step}")
        return 130
    latest = trainer.output_dir / "latest.pth"
    if trainer.step < trainer.config.max_steps:
        print(f"stopped at step {trainer.step}/{trainer.config.max_steps}; checkpoint {latest}")
    elif final:
        print(f"done: step {trainer.step}, val Y-PSNR {final.psnr:.2f} dB (bicubic {final.bicubic_psnr:.2f}), "
              f"Y-SSIM {final.ssim:.4f}; checkpoint {latest}")
    return 0


def add_train_parser(sub) -> None:
    train = sub.add_parser("train", help="train one run (the Option B loop)")
    train.add_argument("--config", help="train_config.json (the seed's keys plus the rest; see README)")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config key, e.g. --set MAX_STEPS=500 (repeatable)")
    train.add_argument("--resume", help="continue a run from its checkpoint (e.g. runs/x/latest.pth)")
    train.add_argument("--finetune-from", help="start from a checkpoint's weights with a fresh optimizer")
    train.add_argument("--plain", action="store_true",
                       help="plain log lines even in a terminal (no live console, no keys)")
    train.set_defaults(func=cmd_train)
