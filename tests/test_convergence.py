"""Convergence status from the validation trend (vsr_core.engine.convergence), on the curves of a
recorded run (tests/data/recorded_run.json: `vsr train --config cpu_small` on 2 CPU cores;
the training loss every 50 steps and, at each checkpoint, the gain over bicubic on the validation set
and on frames used for neither training nor validation) and on constructed ones."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from vsr_core.engine.convergence import ConvergenceStatus, convergence_status, training_status, validation_status
from vsr_core.engine.health import health_summary

RECORDED = json.loads((Path(__file__).parent / "data" / "recorded_run.json").read_text())
C, P, D, U = (ConvergenceStatus.CONVERGING, ConvergenceStatus.PLATEAUING, ConvergenceStatus.DIVERGING,
              ConvergenceStatus.UNKNOWN)


def statuses_along_the_run(use_validation: bool) -> list[ConvergenceStatus]:
    """The status the console showed at each checkpoint of the recorded run (from the data up to then)."""
    out = []
    for point in RECORDED["checkpoints"]:
        losses = [row["loss"] for row in RECORDED["losses"] if row["step"] <= point["step"]]
        gains = [(p["step"], p["validation_gain"]) for p in RECORDED["checkpoints"] if p["step"] <= point["step"]]
        out.append(training_status(losses, gains if use_validation else None))
    return out


def test_the_recorded_run_kept_improving_on_unseen_frames():
    """The premise, from the recording: the independent check (frames never trained or validated on)
    rose from the first checkpoint to the last."""
    unseen = [p["unseen_gain"] for p in RECORDED["checkpoints"]]
    assert unseen[-1] > unseen[0] + 0.3


def test_the_loss_alone_says_plateauing_while_validation_says_converging_on_the_recorded_run():
    by_loss = statuses_along_the_run(use_validation=False)
    by_validation = statuses_along_the_run(use_validation=True)
    judged = [s for s in by_loss if s is not U]
    assert judged and sum(s is P for s in judged) >= len(judged) / 2  # the complaint: mostly "Plateauing"
    assert by_validation[0] is U  # one validation: too early to judge (the loss alone is not trusted)
    assert all(s is C for s in by_validation[1:])  # the validation gain kept setting new bests


def test_validation_status_rules():
    assert validation_status([]) is U and validation_status([(100, 0.3)]) is U
    assert validation_status([(100, 0.3), (200, 0.5)]) is C
    assert validation_status([(100, 0.5), (200, 0.5)]) is P  # no gain > 0.01 dB
    flat = [(i * 100, 1.0 + 0.2 * (i < 3) * i) for i in range(8)]  # rose to 1.4 at step 200, then 1.0
    assert validation_status(flat) is P
    # a new best in the last 3 validations counts even if the very last one dipped a little
    assert validation_status([(1, 0.5), (2, 0.6), (3, 0.6), (4, 0.7), (5, 0.65), (6, 0.66)]) is C
    assert validation_status([(1, 0.5), (2, 0.9), (3, 0.6), (4, 0.6), (5, 0.7), (6, 0.7)]) is P
    assert validation_status([(1, 1.0), (2, 1.2), (3, 0.6)]) is D  # 0.6 dB below the best
    assert validation_status([(1, 1.0), (2, math.nan)]) is D
    with pytest.raises(ValueError):
        validation_status([(1, 1.0)], window=0)


def test_a_nan_loss_is_diverging_whatever_validation_says():
    gains = [(100, 0.2), (200, 0.4)]
    assert training_status([0.02] * 30 + [math.nan], gains) is D
    assert training_status([0.02] * 30, gains) is C
    # before two validations: "Warming up", unless the loss clearly rises; a run without validation: the loss
    assert training_status([0.02] * 30, [(100, 0.2)]) is U and training_status([0.02] * 30, []) is U
    assert training_status([0.02] * 15 + [0.04] * 15, [(100, 0.2)]) is D
    assert training_status([0.02] * 30, None) is convergence_status([0.02] * 30) is P


def test_health_summary_uses_the_validation_trend():
    summary = health_summary([[0.5, 0.6]] * 3, [0.02] * 30, validation_gains=[(1, 0.1), (2, 0.3)])
    assert summary["convergence"] == C.value
    assert health_summary([[0.5, 0.6]] * 3, [0.02] * 30)["convergence"] == P.value  # no validation: the loss
    assert health_summary([[0.5, 0.6]] * 3, [0.02] * 30, validation_gains=[])["convergence"] == U.value
