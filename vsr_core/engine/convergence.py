"""Convergence status: is the run still getting better?

Two signals, both kept:

* :func:`convergence_status` - the training loss: median of the recent half-window versus the
  one before, beyond a robust noise band; any non-finite loss means divergence. On its own it
  is a poor judge of a long run: the loss of random patches is noisy and falls slowly, so it
  reads "Plateauing" while the model keeps improving on unseen frames.
* :func:`validation_status` - the validation gain over bicubic (dB) at each validation: still
  setting new bests -> converging; no new best for a while -> plateauing; far below its best ->
  diverging. Validation is deterministic (fixed frames, no augmentation), so a small tolerance
  suffices.

:func:`training_status` combines them: a non-finite loss is always "Diverging"; with two or more
validations the validation trend decides; before that only a clearly rising loss is reported
("Diverging"), otherwise "Warming up". A run without validation is judged by its loss.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from enum import StrEnum

import numpy as np

VALIDATION_WINDOW = 3  # validations: no new best in this many -> plateauing
VALIDATION_MIN_GAIN = 0.01  # dB a new best must beat the old one by
VALIDATION_DROP = 0.5  # dB below the best so far that means diverging (overfitting or a blown-up run)


class ConvergenceStatus(StrEnum):
    """Verdict of :func:`training_status`; the value is the display label."""

    CONVERGING = "Converging ✓"
    PLATEAUING = "Plateauing ⚠"
    DIVERGING = "Diverging ✗"
    UNKNOWN = "Warming up"


def convergence_status(
    loss_history: Sequence[float],
    window: int = 50,
    *,
    diverge_tol: float = 0.10,
    plateau_tol: float = 0.01,
    noise_z: float = 3.0,
    min_history: int = 10,
) -> ConvergenceStatus:
    """Judge whether the training loss is converging, plateauing or diverging.

    Rule, evaluated on ``recent_window = loss_history[-window:]``:

    1. Any non-finite value (NaN/inf) in ``recent_window`` ->
       :attr:`~ConvergenceStatus.DIVERGING`. This is checked first, so a NaN
       is reported even during warm-up.
    2. Fewer than ``min_history`` losses in total ->
       :attr:`~ConvergenceStatus.UNKNOWN` ("Warming up").
    3. Split ``recent_window`` into two equal halves of ``h = len // 2``
       values (the oldest value is dropped when the length is odd):
       ``prev`` = the older half, ``recent`` = the newer half. Take their
       medians ``m_prev`` and ``m_recent`` (robust to noisy minibatches and
       single spikes).
    4. Noise band: estimate the minibatch noise robustly from first
       differences, ``sigma = 1.4826 * MAD(diff(recent_window)) / sqrt(2)``
       (insensitive to the smooth trend and to isolated spikes). The standard
       error of a median of ``h`` samples is ``~1.2533 * sigma / sqrt(h)``, so
       ``band = noise_z * 1.2533 * sigma * sqrt(2 / h)`` is ``noise_z``
       standard errors of the difference of the two medians.
    5. ``d = m_recent - m_prev``:

       * ``d > max(diverge_tol * |m_prev|, band)`` -> DIVERGING
         (default: the loss rose by more than 10 % *and* beyond noise);
       * ``d < -max(plateau_tol * |m_prev|, band)`` -> CONVERGING
         (default: the loss fell by more than 1 % *and* beyond noise);
       * otherwise -> PLATEAUING.

    Why the noise band: with realistic minibatch noise the two medians differ
    by more than 1 % by pure chance, so a purely relative rule flickers
    between "Converging" and "Plateauing" on a flat loss. For a noise-free
    loss ``band == 0`` and the rule is exactly the relative one; pass
    ``noise_z=0`` to disable the band.

    Using ``|m_prev|`` makes the tolerances relative for positive losses
    (identical to ``m_prev * (1 ± tol)``) and still well-defined for losses
    that can be zero or negative.

    Raises:
        ValueError: if ``window < 2``, ``min_history < 2`` or a tolerance /
            ``noise_z`` is negative.
    """
    if window < 2:
        raise ValueError(f"window must be >= 2, got {window}")
    if min_history < 2:
        raise ValueError(f"min_history must be >= 2, got {min_history}")
    if not diverge_tol >= 0 or not plateau_tol >= 0 or not noise_z >= 0:
        raise ValueError("diverge_tol, plateau_tol and noise_z must be >= 0")

    values = np.asarray([float(v) for v in loss_history], dtype=np.float64)
    recent_window = values[-window:]
    if recent_window.size and not np.isfinite(recent_window).all():
        return ConvergenceStatus.DIVERGING
    if values.size < min_history:
        return ConvergenceStatus.UNKNOWN

    h = recent_window.size // 2
    prev_med = float(np.median(recent_window[-2 * h : -h]))
    recent_med = float(np.median(recent_window[-h:]))
    steps = np.diff(recent_window[-2 * h :])
    sigma = 1.4826 * float(np.median(np.abs(steps - np.median(steps)))) / math.sqrt(2.0)
    band = noise_z * 1.2533 * sigma * math.sqrt(2.0 / h)

    scale = abs(prev_med)
    delta = recent_med - prev_med
    if delta > max(diverge_tol * scale, band):
        return ConvergenceStatus.DIVERGING
    if delta < -max(plateau_tol * scale, band):
        return ConvergenceStatus.CONVERGING
    return ConvergenceStatus.PLATEAUING


def validation_status(
    gains: Sequence[tuple[int, float]],
    window: int = VALIDATION_WINDOW,
    *,
    min_gain: float = VALIDATION_MIN_GAIN,
    drop: float = VALIDATION_DROP,
) -> ConvergenceStatus:
    """Judge a run by its validation gains, ``(step, gain_db)`` pairs in step order.

    1. Fewer than 2 validations -> UNKNOWN (the caller falls back to the loss).
    2. A non-finite gain, or the latest more than ``drop`` dB below the best so far -> DIVERGING.
    3. The best of the last ``window`` validations beats the best before them by more than
       ``min_gain`` dB (with ``window`` or fewer validations in all: the latest beats the first)
       -> CONVERGING.
    4. Otherwise -> PLATEAUING: ``window`` validations without a new best.
    """
    if window < 1 or min_gain < 0 or drop <= 0:
        raise ValueError("window must be >= 1, min_gain >= 0 and drop > 0")
    values = [float(g) for _, g in gains]
    if len(values) < 2:
        return ConvergenceStatus.UNKNOWN
    if not all(math.isfinite(v) for v in values) or values[-1] < max(values) - drop:
        return ConvergenceStatus.DIVERGING
    recent, before = values[-window:], values[:-window]
    improvement = max(recent) - max(before) if before else values[-1] - values[0]
    return ConvergenceStatus.CONVERGING if improvement > min_gain else ConvergenceStatus.PLATEAUING


def training_status(
    loss_history: Sequence[float],
    validation_gains: Sequence[tuple[int, float]] | None = None,
    *,
    loss_window: int = 50,
    validation_window: int = VALIDATION_WINDOW,
) -> ConvergenceStatus:
    """The status the console, TensorBoard and Tune show. ``validation_gains=None``: a run without
    validation, judged by its loss alone. Otherwise (the trainer always validates): DIVERGING on a
    non-finite recent loss or a loss that clearly rises; the validation trend once there are 2
    validations; "Warming up" before that (a flat-looking loss early on says nothing)."""
    losses = [float(v) for v in loss_history]
    by_loss = convergence_status(losses, window=loss_window)
    if validation_gains is None:
        return by_loss
    if by_loss is ConvergenceStatus.DIVERGING and not np.isfinite(losses[-loss_window:]).all():
        return by_loss
    by_validation = validation_status(validation_gains, validation_window)
    if by_validation is ConvergenceStatus.UNKNOWN:
        return ConvergenceStatus.DIVERGING if by_loss is ConvergenceStatus.DIVERGING else ConvergenceStatus.UNKNOWN
    return by_validation
