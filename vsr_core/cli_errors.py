"""How a ``vsr`` command ends on an error: the user's mistake in one line, anything else with its traceback.

User errors (one line ``error: ...``, exit code 2) are what our own checks raise about what the user
gave or has: a bad value, flag or config (``ValueError``: ``ConfigError``, ``EncoderError``,
``InvalidImageError`` ...), a file that is missing or cannot be opened, a checkpoint or video that
cannot be used, a memory budget too small for one window, a ``--resume`` that does not match its
work folder, VGG weights that cannot be had offline, a run that diverged, a subcommand that is not
available here. Anything else (a ``RuntimeError`` from torch, an output that fails its own check, a
bug) shows its traceback, which is what a report needs. ``vsr --debug`` shows the traceback always.
"""
from __future__ import annotations

import sys
from typing import Callable

from vsr_core.checkpoint import CheckpointError
from vsr_core.commands import CommandUnavailable
from vsr_core.data.video_io import VideoReadError
from vsr_core.engine.trainer import TrainingDiverged
from vsr_core.losses.perceptual import VGGWeightsUnavailable
from vsr_core.memory import MemoryBudgetError
from vsr_core.video.plan import PlanMismatchError

USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError, FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError,
    CheckpointError, VideoReadError, MemoryBudgetError, PlanMismatchError, VGGWeightsUnavailable, TrainingDiverged,
    CommandUnavailable,
)
USER_ERROR_EXIT = 2


def run_reporting_errors(command: Callable[[], int | None], debug: bool = False) -> int:
    """``command()``'s exit code (None: 0); a user error is printed in one line and gives 2, unless ``debug``.
    Other exceptions propagate: Python prints their traceback and exits with 1."""
    try:
        return command() or 0
    except USER_ERRORS as exc:
        if debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return USER_ERROR_EXIT
