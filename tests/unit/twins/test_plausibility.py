"""Tests for :mod:`twins.plausibility`: distances, message ends and the step checks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from contracts.telemetry import RejectReason
from twins.plausibility import haversine_m, implausible_steps, message_ends, step_problem
from twins.twin_table import TwinTableParams

from .factories import T0_S, make_batch, message

P = TwinTableParams()


def test_haversine_matches_known_distances() -> None:
    """0.01° of latitude is about 1112 m anywhere; Berlin to Paris is about 878 km; NaN stays NaN."""
    assert float(haversine_m(52.52, 13.40, 52.53, 13.40)) == pytest.approx(1111.9, abs=0.5)
    assert float(haversine_m(52.52, 13.405, 48.8566, 2.3522)) == pytest.approx(878_000, rel=0.01)
    assert math.isnan(float(haversine_m(math.nan, 13.4, 52.5, 13.4)))


def test_message_ends_follow_time_not_arrival_order() -> None:
    """Samples of a message may arrive in any order: its ends are its earliest and latest
    sample, and the steps between them are judged in time order (no false SoC rise)."""
    batch = make_batch(
        message("b-1", 0, T0_S + np.array([120.0, 0.0, 60.0]), soc_pct=[78.0, 80.0, 79.0]),
        message("b-2", 0, T0_S + np.array([5.0]), soc_pct=50.0, lat=48.0),
    )
    ends = message_ends(batch, P)
    assert ends.first_of(0) == (T0_S, 80.0, 52.52, 13.40)
    assert ends.last_of(0) == (T0_S + 120.0, 78.0, 52.52, 13.40)
    assert ends.first_of(1) == ends.last_of(1) == (T0_S + 5.0, 50.0, 48.0, 13.40)
    assert ends.inner == {}


def test_message_ends_flag_only_the_message_with_the_jump() -> None:
    """An implausible step inside the second message flags that message alone, naming the
    check, the values and the interval."""
    batch = make_batch(
        message("b-1", 0, T0_S + np.array([0.0, 60.0]), soc_pct=[40.0, 45.0]),
        message("b-2", 0, T0_S + np.array([0.0, 60.0]), soc_pct=[40.0, 60.0]),
    )
    ends = message_ends(batch, P)
    assert list(ends.inner) == [1]
    reason, detail = ends.inner[1]
    assert reason is RejectReason.IMPLAUSIBLE_TELEMETRY
    assert detail.startswith("soc_rise: SoC rose from 40.0 % to 60.0 % in 60.0 s")


def test_a_duplicate_timestamp_is_left_out_of_the_steps() -> None:
    """Of two samples with one timestamp the first (in batch order) is the one apply keeps,
    so the step to the next sample is judged from it, not from the dropped duplicate."""
    batch = make_batch(message("b-1", 0, T0_S + np.array([0.0, 1.0, 1.0, 2.0]), soc_pct=[80.0, 79.0, 70.0, 78.0]))
    assert message_ends(batch, P).inner == {}


def test_step_problem_judges_only_steps_forward_in_time() -> None:
    """A message at or before the twin's newest sample (late history) is not judged against
    it; a step forward is, and a twin without samples (ts -inf) has nothing to judge by."""
    last = (T0_S + 100.0, 20.0, 52.52, 13.40)
    jump = (T0_S + 160.0, 90.0, 52.52, 13.40)
    problem = step_problem(last, jump, P)
    assert problem is not None and "since the twin's last sample" in problem[1]
    assert step_problem(last, (T0_S + 50.0, 90.0, 52.52, 13.40), P) is None
    assert step_problem((-math.inf, math.nan, math.nan, math.nan), jump, P) is None
    assert step_problem(last, (T0_S + 160.0, 26.0, 52.52, 13.40), P) is None  # +6 ≤ 5 + 6


def test_implausible_steps_agrees_with_step_problem() -> None:
    """The vectorised check flags exactly the steps step_problem finds a problem in."""
    rng = np.random.default_rng(4)
    n = 400
    last = (
        T0_S + rng.uniform(0, 100, n), rng.uniform(0, 100, n),
        52.5 + rng.normal(0, 0.01, n), 13.4 + rng.normal(0, 0.01, n),
    )  # fmt: skip
    first = (
        last[0] + rng.choice([-10.0, 0.0, 1.0, 60.0, 600.0], n), rng.uniform(0, 100, n),
        last[2] + rng.normal(0, 0.002, n), last[3] + rng.normal(0, 0.002, n),
    )  # fmt: skip
    first[2][:5] = np.nan
    last[0][5:10] = -np.inf
    got = implausible_steps(last, first, P)
    want = [
        step_problem(tuple(float(a[k]) for a in last), tuple(float(a[k]) for a in first), P) is not None  # type: ignore[arg-type]
        for k in range(n)
    ]
    assert got.tolist() == want
    assert 50 < sum(want) < n - 50  # both outcomes are exercised
