"""Training-health heuristics for the live console, TensorBoard and Ray Tune.

Everything here is a pure function over plain Python / numpy data: no torch,
no I/O, no global state. Inputs are the numbers the trainer already logs:

* **Layer activity** - per logged step, for each of the N residual blocks
  (``Block_00`` ..), the fraction of active units in ``[0, 1]``; a history is
  ``activity_history[step][layer]``, oldest first.
* **Loss history** - one scalar training loss per logged step, oldest first.

Rules (all thresholds are keyword arguments):

* :func:`layer_trends` - least-squares slope over the last ``window`` rows,
  scaled to the change across the fitted span; ``> threshold`` is rising,
  ``< -threshold`` falling, otherwise stable.
* :func:`cold_layers` - a layer is *cold* when its activity is strictly below
  ``threshold`` (default :data:`COLD_THRESHOLD`, 0.20; so ``0.20`` itself is **not** cold).
* :func:`loss_trends` - :func:`layer_trends` on loss columns scaled by their median.
* Convergence (``vsr_core.engine.convergence``, re-exported here): from the validation
  trend when there is one, else from the training loss.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np

from vsr_core.engine.convergence import ConvergenceStatus, convergence_status, training_status

__all__ = [
    "COLD_THRESHOLD",
    "ConvergenceStatus",
    "LayerStat",
    "Trend",
    "cold_layer_warning",
    "cold_layers",
    "convergence_status",
    "health_summary",
    "layer_name",
    "layer_trends",
    "loss_trends",
    "sort_layers",
    "top_layers",
    "training_status",
]

COLD_THRESHOLD = 0.20  # a layer with less active units than this is "cold": the console, logs and Tune agree
LOSS_TREND_WINDOW = 50  # steps
LOSS_TREND_THRESHOLD = 0.05  # relative change of the fitted line across the window


class Trend(StrEnum):
    """Direction of a layer's activity over the recent window."""

    RISING = "rising"
    FALLING = "falling"
    STABLE = "stable"

    @property
    def arrow(self) -> str:
        """Console glyph: ``"⬆"`` rising, ``"⬇"`` falling, ``"═"`` stable."""
        return TREND_ARROWS[self]


TREND_ARROWS: dict[Trend, str] = {Trend.RISING: "⬆", Trend.FALLING: "⬇", Trend.STABLE: "═"}  # console glyphs


@dataclass(frozen=True, slots=True)
class LayerStat:
    """One residual block's latest activity and trend."""

    index: int
    name: str
    activity: float
    trend: Trend


def layer_name(index: int) -> str:
    """Display name of residual block ``index``: ``0 -> "Block_00"``."""
    return f"Block_{index:02d}"


# --------------------------------------------------------------------------- #
# helpers
# --------------------------------------------------------------------------- #
def _as_matrix(activity_history: Sequence[Sequence[float]]) -> np.ndarray:
    """Convert a history to a float ``(steps, layers)`` array; reject ragged rows."""
    rows = [list(r) for r in activity_history]
    if not rows:
        return np.zeros((0, 0), dtype=np.float64)
    width = len(rows[0])
    for step, row in enumerate(rows):
        if len(row) != width:
            raise ValueError(
                f"activity_history is ragged: step 0 has {width} layers, "
                f"step {step} has {len(row)}"
            )
    return np.asarray(rows, dtype=np.float64).reshape(len(rows), width)


def _sort_key(index: int, activity: float) -> tuple[int, float, int]:
    """Activity descending, ties by index; non-finite activities sort last."""
    if math.isfinite(activity):
        return (0, -activity, index)
    return (1, 0.0, index)


def _pct(threshold: float) -> str:
    """Format a fraction as a compact percentage: ``0.2 -> "20%"``."""
    return f"{round(threshold * 100, 2):g}%"


# --------------------------------------------------------------------------- #
# layer activity
# --------------------------------------------------------------------------- #
def layer_trends(
    activity_history: Sequence[Sequence[float]],
    window: int = 20,
    threshold: float = 0.01,
) -> list[Trend]:
    """Classify each layer's activity as rising, falling or stable.

    Rule:

    1. Take the last ``window`` rows of ``activity_history`` (``n`` rows, with
       ``n = min(window, len(activity_history))``).
    2. Per layer, fit an ordinary least-squares line ``activity ~ a + b * step``
       with ``step = 0 .. n-1``; ``b`` is the per-step slope.
    3. ``change = b * (n - 1)`` - the fitted change across the window. When the
       full window is available this is exactly ``b * (window - 1)``; with a
       shorter history the observed span is used rather than extrapolating.
    4. ``change > threshold`` -> :attr:`Trend.RISING`,
       ``change < -threshold`` -> :attr:`Trend.FALLING`, else
       :attr:`Trend.STABLE`.

    Fewer than 2 rows -> every layer is stable. A layer with a non-finite value
    inside the window is reported as stable (no reliable slope). The number of
    layers is taken from the rows; an empty history gives ``[]``.

    Raises:
        ValueError: if ``window < 2``, ``threshold < 0`` or rows are ragged.
    """
    if window < 2:
        raise ValueError(f"window must be >= 2, got {window}")
    if not threshold >= 0:
        raise ValueError(f"threshold must be >= 0, got {threshold}")
    data = _as_matrix(activity_history)
    n_layers = data.shape[1]
    recent = data[-window:]
    n = recent.shape[0]
    if n < 2:
        return [Trend.STABLE] * n_layers

    x = np.arange(n, dtype=np.float64)
    xc = x - x.mean()
    # Column-wise OLS slope; NaN/inf propagate and end up "stable" below.
    with np.errstate(invalid="ignore", over="ignore"):
        slopes = (xc[:, None] * (recent - recent.mean(axis=0))).sum(axis=0) / (xc @ xc)
        changes = slopes * (n - 1)

    trends: list[Trend] = []
    for change in changes.tolist():
        if not math.isfinite(change):
            trends.append(Trend.STABLE)
        elif change > threshold:
            trends.append(Trend.RISING)
        elif change < -threshold:
            trends.append(Trend.FALLING)
        else:
            trends.append(Trend.STABLE)
    return trends


def loss_trends(
    history: Sequence[Sequence[float]],
    window: int = LOSS_TREND_WINDOW,
    threshold: float = LOSS_TREND_THRESHOLD,
) -> list[Trend]:
    """Trend of each loss column (e.g. L1, perceptual, total) over the last ``window`` rows.

    :func:`layer_trends` on the columns divided by their median ``|value|`` in the window, so
    ``threshold`` is a *relative* change (0.05 = the fitted line moved by 5 %). An all-zero column
    (e.g. the perceptual loss with weight 0) is stable; non-finite values make a column stable.
    """
    rows = [[float(v) for v in row] for row in history][-window:]
    if not rows:
        return []
    scales = []
    for column in zip(*rows):
        finite = sorted(abs(v) for v in column if math.isfinite(v))
        median = finite[len(finite) // 2] if finite else 0.0
        scales.append(median if median > 0 else 1.0)
    scaled = [[v / s for v, s in zip(row, scales)] for row in rows]
    return layer_trends(scaled, window=max(window, 2), threshold=threshold)


def sort_layers(latest_activity: Sequence[float], by_activity: bool) -> list[int]:
    """Display order of layer indices.

    ``by_activity=True``: activity descending, ties broken by lower index first,
    non-finite activities last. ``by_activity=False``: model order
    ``0 .. N-1``.
    """
    values = [float(a) for a in latest_activity]
    if not by_activity:
        return list(range(len(values)))
    return sorted(range(len(values)), key=lambda i: _sort_key(i, values[i]))


def top_layers(
    latest_activity: Sequence[float],
    trends: Sequence[Trend],
    k: int = 5,
) -> list[LayerStat]:
    """The ``k`` most active layers, most active first (ties by lower index).

    ``trends`` must be aligned with ``latest_activity`` (e.g. the output of
    :func:`layer_trends`). ``k <= 0`` gives ``[]``; ``k`` larger than the
    number of layers gives all layers.

    Raises:
        ValueError: if ``trends`` and ``latest_activity`` differ in length.
    """
    values = [float(a) for a in latest_activity]
    if len(trends) != len(values):
        raise ValueError(
            f"trends has {len(trends)} entries but latest_activity has {len(values)}"
        )
    if k <= 0:
        return []
    order = sort_layers(values, by_activity=True)[:k]
    return [LayerStat(i, layer_name(i), values[i], Trend(trends[i])) for i in order]


def cold_layers(latest_activity: Sequence[float], threshold: float = COLD_THRESHOLD) -> list[int]:
    """Indices (ascending) of layers whose activity is strictly ``< threshold``.

    A layer exactly at the threshold is **not** cold. Non-finite activities are
    not reported (they are not a measurement of low activity).
    """
    return [i for i, a in enumerate(latest_activity) if float(a) < threshold]


def cold_layer_warning(
    latest_activity: Sequence[float], threshold: float = COLD_THRESHOLD
) -> str | None:
    """Human-readable warning about cold layers, or ``None`` if there are none.

    Example: ``"3 cold layers (<20% active): Block_04, Block_17, Block_22"``
    (singular ``"1 cold layer ..."``). Layers are listed in index order.
    """
    cold = cold_layers(latest_activity, threshold)
    if not cold:
        return None
    noun = "layer" if len(cold) == 1 else "layers"
    names = ", ".join(layer_name(i) for i in cold)
    return f"{len(cold)} cold {noun} (<{_pct(threshold)} active): {names}"


# --------------------------------------------------------------------------- #
# summary
# --------------------------------------------------------------------------- #
def health_summary(
    activity_history: Sequence[Sequence[float]],
    loss_history: Sequence[float],
    *,
    k: int = 5,
    cold_threshold: float = COLD_THRESHOLD,
    trend_window: int = 20,
    trend_threshold: float = 0.01,
    loss_window: int = 50,
    validation_gains: Sequence[tuple[int, float]] | None = None,
) -> dict[str, Any]:
    """Small, flat, JSON-serialisable health report.

    Keys:

    * ``"convergence"`` (str) - :class:`ConvergenceStatus` value of :func:`training_status`
      (``validation_gains``: the run's (step, gain) pairs, None for a run without validation).
    * ``"num_layers"`` (int) - layers in the latest activity row.
    * ``"mean_activity"`` (float | None) - mean latest activity over finite
      values; ``None`` without data.
    * ``"cold_layers"`` (int) - number of cold layers
      (see :func:`cold_layers`).
    * ``"cold_layer_names"`` (list[str]) - their names, index order.
    * ``"top_layers"`` (list[str]) - names of the ``k`` most active layers.
    * ``"layers_rising"`` / ``"layers_falling"`` (int) - trend counts.

    The latest activity row is ``activity_history[-1]`` (empty if no history).
    """
    data = _as_matrix(activity_history)
    latest = data[-1].tolist() if data.shape[0] else []
    trends = layer_trends(data, window=trend_window, threshold=trend_threshold)
    cold = cold_layers(latest, cold_threshold)
    finite = [a for a in latest if math.isfinite(a)]
    return {
        "convergence": training_status(loss_history, validation_gains, loss_window=loss_window).value,
        "num_layers": len(latest),
        "mean_activity": (sum(finite) / len(finite)) if finite else None,
        "cold_layers": len(cold),
        "cold_layer_names": [layer_name(i) for i in cold],
        "top_layers": [s.name for s in top_layers(latest, trends, k)],
        "layers_rising": sum(t is Trend.RISING for t in trends),
        "layers_falling": sum(t is Trend.FALLING for t in trends),
    }
