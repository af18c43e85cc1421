"""Tests for vsr_core.engine.health (pure functions, synthetic histories)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from vsr_core.engine.health import (
    ConvergenceStatus,
    LayerStat,
    Trend,
    cold_layer_warning,
    cold_layers,
    convergence_status,
    health_summary,
    layer_name,
    layer_trends,
    sort_layers,
    top_layers,
)

RNG_SEED = 1234


def _noisy(base: np.ndarray, rel_noise: float = 0.05, seed: int = RNG_SEED) -> list[float]:
    rng = np.random.default_rng(seed)
    return (base * (1.0 + rel_noise * rng.standard_normal(base.shape))).tolist()


# --------------------------------------------------------------------------- #
# enums / names
# --------------------------------------------------------------------------- #
def test_trend_values_and_arrows() -> None:
    assert [t.value for t in Trend] == ["rising", "falling", "stable"]
    assert Trend.RISING.arrow == "⬆"
    assert Trend.FALLING.arrow == "⬇"
    assert Trend.STABLE.arrow == "═"
    assert Trend("rising") is Trend.RISING
    assert str(Trend.FALLING) == "falling"  # str Enum renders as its value


def test_convergence_status_values() -> None:
    assert ConvergenceStatus.CONVERGING.value == "Converging ✓"
    assert ConvergenceStatus.PLATEAUING.value == "Plateauing ⚠"
    assert ConvergenceStatus.DIVERGING.value == "Diverging ✗"
    assert ConvergenceStatus.UNKNOWN.value == "Warming up"
    assert isinstance(ConvergenceStatus.CONVERGING, str)


def test_layer_name_zero_padded() -> None:
    assert layer_name(0) == "Block_00"
    assert layer_name(7) == "Block_07"
    assert layer_name(29) == "Block_29"


# --------------------------------------------------------------------------- #
# convergence_status
# --------------------------------------------------------------------------- #
def test_converging_on_decreasing_noisy_loss() -> None:
    steps = np.arange(200, dtype=np.float64)
    loss = _noisy(0.05 + 0.5 * np.exp(-steps / 150.0), rel_noise=0.08)
    assert convergence_status(loss) is ConvergenceStatus.CONVERGING


def test_plateauing_on_flat_noisy_loss() -> None:
    loss = _noisy(np.full(200, 0.03), rel_noise=0.10)
    assert convergence_status(loss) is ConvergenceStatus.PLATEAUING


def test_diverging_on_increasing_loss() -> None:
    # Converges for 150 steps, then blows up by 1.5 % per step.
    steps = np.arange(200, dtype=np.float64)
    base = np.where(steps < 150, 0.5 - 0.002 * steps, 0.2 * 1.015 ** (steps - 150))
    assert convergence_status(_noisy(base, rel_noise=0.05)) is ConvergenceStatus.DIVERGING


def test_flat_noisy_loss_does_not_flicker_across_seeds() -> None:
    # 10 % minibatch noise: the two half-window medians differ by > 1 % by chance
    # most of the time, so a purely relative rule flickers. The noise band must
    # keep (almost) every flat history on "Plateauing".
    verdicts = [
        convergence_status(_noisy(np.full(200, 0.03), rel_noise=0.10, seed=s))
        for s in range(200)
    ]
    plateau = sum(v is ConvergenceStatus.PLATEAUING for v in verdicts)
    assert plateau >= 194, f"only {plateau}/200 flat histories judged plateauing"
    # Without the noise band the same data flickers (documents why it exists).
    plain = [
        convergence_status(_noisy(np.full(200, 0.03), rel_noise=0.10, seed=s), noise_z=0)
        for s in range(200)
    ]
    assert sum(v is ConvergenceStatus.PLATEAUING for v in plain) < 180


def test_trend_detected_across_seeds() -> None:
    steps = np.arange(200, dtype=np.float64)
    base = 0.05 + 0.5 * np.exp(-steps / 150.0)
    for s in range(50):
        loss = _noisy(base, rel_noise=0.05, seed=s)
        assert convergence_status(loss) is ConvergenceStatus.CONVERGING, s
        assert convergence_status(loss[::-1]) is ConvergenceStatus.DIVERGING, s


def test_mild_increase_is_plateau_not_divergence() -> None:
    # Recent median ~5 % above the previous one: within diverge_tol=10 %.
    loss = [1.0] * 25 + [1.05] * 25
    assert convergence_status(loss) is ConvergenceStatus.PLATEAUING
    assert convergence_status(loss, diverge_tol=0.02) is ConvergenceStatus.DIVERGING


def test_small_decrease_below_plateau_tol_is_plateau() -> None:
    loss = [1.0] * 25 + [0.995] * 25  # -0.5 %
    assert convergence_status(loss) is ConvergenceStatus.PLATEAUING
    assert convergence_status(loss, plateau_tol=0.001) is ConvergenceStatus.CONVERGING


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_loss_is_diverging(bad: float) -> None:
    loss = list(np.linspace(1.0, 0.5, 100))
    loss[-3] = bad
    assert convergence_status(loss) is ConvergenceStatus.DIVERGING


def test_nan_during_warmup_is_still_diverging() -> None:
    assert convergence_status([1.0, 0.9, math.nan]) is ConvergenceStatus.DIVERGING


def test_nan_outside_window_is_ignored() -> None:
    loss = [math.nan] + list(np.linspace(1.0, 0.5, 100))
    assert convergence_status(loss, window=50) is ConvergenceStatus.CONVERGING


@pytest.mark.parametrize("n", [0, 1, 5, 9])
def test_short_history_is_warming_up(n: int) -> None:
    loss = list(np.linspace(1.0, 0.1, n))
    assert convergence_status(loss) is ConvergenceStatus.UNKNOWN


def test_ten_values_is_enough_history() -> None:
    loss = list(np.linspace(1.0, 0.1, 10))
    assert convergence_status(loss) is ConvergenceStatus.CONVERGING


def test_only_last_window_is_used() -> None:
    # Long steep descent followed by a flat tail longer than the window.
    loss = list(np.linspace(5.0, 1.0, 100)) + [1.0] * 60
    assert convergence_status(loss, window=50) is ConvergenceStatus.PLATEAUING
    assert convergence_status(loss, window=300) is ConvergenceStatus.CONVERGING


def test_medians_are_robust_to_spikes() -> None:
    # Flat loss with a few huge minibatch spikes in the recent half: a mean-based
    # rule would call this divergence, the median rule must not.
    loss = [0.1] * 50
    for i in (30, 37, 44, 48):
        loss[i] = 10.0
    assert convergence_status(loss) is ConvergenceStatus.PLATEAUING


def test_invalid_convergence_arguments() -> None:
    with pytest.raises(ValueError):
        convergence_status([1.0] * 20, window=1)
    with pytest.raises(ValueError):
        convergence_status([1.0] * 20, diverge_tol=-0.1)
    with pytest.raises(ValueError):
        convergence_status([1.0] * 20, noise_z=-1.0)


# --------------------------------------------------------------------------- #
# layer_trends
# --------------------------------------------------------------------------- #
def _ramp_history(n_steps: int = 40) -> list[list[float]]:
    """Layer 0 rises, layer 1 falls, layer 2 flat, layer 3 tiny drift, layer 4 noise."""
    t = np.linspace(0.0, 1.0, n_steps)
    rng = np.random.default_rng(RNG_SEED)
    cols = [
        0.3 + 0.4 * t,  # +0.4 over the whole history -> rising
        0.8 - 0.5 * t,  # falling
        np.full(n_steps, 0.5),  # stable
        0.5 + 0.004 * t,  # drift well below threshold -> stable
        0.5 + 0.001 * rng.standard_normal(n_steps),  # tiny noise -> stable
    ]
    return np.stack(cols, axis=1).tolist()


def test_trends_on_ramps() -> None:
    trends = layer_trends(_ramp_history())
    assert trends == [Trend.RISING, Trend.FALLING, Trend.STABLE, Trend.STABLE, Trend.STABLE]
    assert [t.arrow for t in trends] == ["⬆", "⬇", "═", "═", "═"]


def test_trend_change_is_scaled_by_window() -> None:
    # Per-step slope 0.001 -> change over a 20-step window = 0.019 > 0.01,
    # even though each individual step is far below the threshold.
    history = [[0.5 + 0.001 * i] for i in range(100)]
    assert layer_trends(history, window=20) == [Trend.RISING]
    # Over a 5-step window the change is 0.004 < 0.01 -> stable.
    assert layer_trends(history, window=5) == [Trend.STABLE]
    # Threshold is respected.
    assert layer_trends(history, window=20, threshold=0.05) == [Trend.STABLE]


def test_trends_use_only_last_window() -> None:
    # Rose strongly long ago, has been falling for the last 20 steps.
    history = [[0.1 + 0.02 * i] for i in range(30)] + [[0.7 - 0.01 * i] for i in range(20)]
    assert layer_trends(history, window=20) == [Trend.FALLING]
    assert layer_trends(history, window=50) == [Trend.RISING]


def test_trend_is_least_squares_not_endpoints() -> None:
    # Flat series whose last point is a spike: an endpoint difference would give
    # a change of 0.1; the least-squares change is much smaller. The classifier
    # must switch exactly at the OLS change, not at the endpoint difference.
    history = [[0.5]] * 19 + [[0.6]]
    # OLS slope of a single spike h at the last of n points: h * xc[-1] / sum(xc^2)
    n = 20
    xc = np.arange(n) - (n - 1) / 2
    expected_change = 0.1 * xc[-1] / float(xc @ xc) * (n - 1)
    assert expected_change < 0.1
    assert layer_trends(history, window=20, threshold=expected_change - 1e-6) == [Trend.RISING]
    assert layer_trends(history, window=20, threshold=expected_change + 1e-6) == [Trend.STABLE]


def test_trends_short_history_all_stable() -> None:
    assert layer_trends([]) == []
    assert layer_trends([[0.1, 0.9, 0.5]]) == [Trend.STABLE] * 3


def test_trends_two_entries_use_their_span() -> None:
    assert layer_trends([[0.1, 0.9], [0.5, 0.5]]) == [Trend.RISING, Trend.FALLING]


def test_trends_full_model_size_and_numpy_input() -> None:
    history = np.tile(np.linspace(0.2, 0.6, 25)[:, None], (1, 30))
    trends = layer_trends(history)
    assert len(trends) == 30
    assert all(t is Trend.RISING for t in trends)


def test_trends_reject_ragged_and_bad_window() -> None:
    with pytest.raises(ValueError):
        layer_trends([[0.1, 0.2], [0.1]])
    with pytest.raises(ValueError):
        layer_trends([[0.1], [0.2]], window=1)


# --------------------------------------------------------------------------- #
# top_layers / sort_layers
# --------------------------------------------------------------------------- #
ACT = [0.30, 0.90, 0.10, 0.90, 0.55, 0.70, 0.05]
TRENDS = [
    Trend.STABLE,
    Trend.RISING,
    Trend.FALLING,
    Trend.STABLE,
    Trend.RISING,
    Trend.FALLING,
    Trend.STABLE,
]


def test_top_layers_order_ties_and_fields() -> None:
    top = top_layers(ACT, TRENDS, k=3)
    assert [s.index for s in top] == [1, 3, 5]  # 1 and 3 tie at 0.9 -> lower index first
    assert top[0] == LayerStat(index=1, name="Block_01", activity=0.90, trend=Trend.RISING)
    assert top[2].name == "Block_05"
    assert top[2].trend is Trend.FALLING


def test_top_layers_k() -> None:
    assert len(top_layers(ACT, TRENDS)) == 5  # default k
    assert [s.index for s in top_layers(ACT, TRENDS, k=1)] == [1]
    assert top_layers(ACT, TRENDS, k=0) == []
    assert [s.index for s in top_layers(ACT, TRENDS, k=100)] == [1, 3, 5, 4, 0, 2, 6]


def test_top_layers_length_mismatch() -> None:
    with pytest.raises(ValueError):
        top_layers(ACT, TRENDS[:-1])


def test_sort_layers() -> None:
    assert sort_layers(ACT, by_activity=True) == [1, 3, 5, 4, 0, 2, 6]
    assert sort_layers(ACT, by_activity=False) == list(range(len(ACT)))
    assert sort_layers([0.5, math.nan, 0.9], by_activity=True) == [2, 0, 1]
    assert sort_layers([], by_activity=True) == []


# --------------------------------------------------------------------------- #
# cold layers
# --------------------------------------------------------------------------- #
def test_cold_layers_threshold_boundary() -> None:
    act = [0.2, 0.19, 0.5, 0.0, 0.2000001, 0.1999999]
    assert cold_layers(act) == [1, 3, 5]
    assert cold_layers(act, threshold=0.5) == [0, 1, 3, 4, 5]
    assert cold_layers([0.2]) == []
    assert cold_layers([0.19]) == [0]


def test_cold_layer_warning_message() -> None:
    act = [0.5] * 30
    for i in (4, 17, 22):
        act[i] = 0.1
    assert cold_layer_warning(act) == "3 cold layers (<20% active): Block_04, Block_17, Block_22"


def test_cold_layer_warning_singular_threshold_and_none() -> None:
    assert cold_layer_warning([0.5, 0.05]) == "1 cold layer (<20% active): Block_01"
    assert cold_layer_warning([0.5, 0.2, 0.3]) is None
    assert cold_layer_warning([0.5, 0.2, 0.3], threshold=0.35) == (
        "2 cold layers (<35% active): Block_01, Block_02"
    )
    assert cold_layer_warning([]) is None


# --------------------------------------------------------------------------- #
# health_summary
# --------------------------------------------------------------------------- #
def test_health_summary_contents_and_json() -> None:
    n_steps, n_layers = 30, 30
    t = np.linspace(0.0, 1.0, n_steps)[:, None]
    base = np.full((n_steps, n_layers), 0.5)
    base[:, 7] = 0.95  # most active
    base[:, 3] = 0.1  # cold
    base[:, 12] = 0.15 - 0.1 * t[:, 0]  # cold and falling
    base[:, 20] = 0.4 + 0.4 * t[:, 0]  # rising, ends at 0.8 (2nd most active)
    loss = list(np.linspace(1.0, 0.2, 120))

    summary = health_summary(base.tolist(), loss)
    assert summary["convergence"] == "Converging ✓"
    assert summary["num_layers"] == 30
    assert summary["cold_layers"] == 2
    assert summary["cold_layer_names"] == ["Block_03", "Block_12"]
    assert summary["top_layers"][:2] == ["Block_07", "Block_20"]
    assert len(summary["top_layers"]) == 5
    assert summary["layers_rising"] == 1
    assert summary["layers_falling"] == 1
    assert summary["mean_activity"] == pytest.approx(float(base[-1].mean()))
    # Must round-trip through strict JSON (Ray Tune / logging).
    assert json.loads(json.dumps(summary, allow_nan=False)) == summary


def test_health_summary_empty() -> None:
    summary = health_summary([], [])
    assert summary["convergence"] == "Warming up"
    assert summary["num_layers"] == 0
    assert summary["cold_layers"] == 0
    assert summary["top_layers"] == []
    assert summary["mean_activity"] is None
    json.dumps(summary, allow_nan=False)
