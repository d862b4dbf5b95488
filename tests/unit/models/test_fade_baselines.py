"""Tests for :mod:`models.fade_baselines`: the fade-curve and mean-lifetime baselines."""

from __future__ import annotations

import numpy as np
import pytest

from models.cell_data import CellHistory
from models.fade_baselines import FadeCurve, LastSlope, MeanLifetime, first_cycle_at_or_below


def test_first_cycle_at_or_below() -> None:
    """The first entry at or below the threshold is returned as a cycle number, else None."""
    assert first_cycle_at_or_below([0.9, 0.8, 0.7, 0.6], 0.7, first_cycle=11) == 13
    assert first_cycle_at_or_below([0.9, 0.8], 0.7, first_cycle=1) is None


def test_linear_fade_is_extrapolated_exactly() -> None:
    """On an exactly linear fade both fits agree, so the forecast continues the line."""
    k = np.arange(1, 41)
    curve = FadeCurve.fit(1.0 - 0.004 * k)
    np.testing.assert_allclose(curve.forecast(10), 1.0 - 0.004 * np.arange(41, 51), atol=1e-6)
    assert curve.n_seen == 40
    # 1 - 0.004 k <= 0.7 first at k = 75.
    assert curve.end_of_life_cycle(0.7, horizon_cycles=100) == 75


def test_accelerating_fade_picks_the_exponential() -> None:
    """A knee-shaped fade a + b exp(c k) is fitted as exponential and predicts its EOL."""
    k = np.arange(1, 151)
    soh = 1.02 - 0.02 * np.exp(0.02 * k)
    curve = FadeCurve.fit(soh[:60])
    assert curve.kind == "exponential"
    assert curve.rmse_seen_frac < 1e-4
    true_eol = first_cycle_at_or_below(soh, 0.7, 1)
    assert true_eol is not None
    predicted = curve.end_of_life_cycle(0.7, horizon_cycles=200)
    assert predicted is not None and abs(predicted - true_eol) <= 2


def test_two_points_fit_a_line_and_fewer_raise() -> None:
    """Two seen cycles give the linear curve; one is not enough."""
    assert FadeCurve.fit([1.0, 0.99]).kind == "linear"
    with pytest.raises(ValueError, match="Expected at least 2 finite SOH values"):
        FadeCurve.fit([1.0])


def test_fade_curve_never_reaching_threshold_gives_none() -> None:
    """A flat fade does not reach end of life within the horizon."""
    curve = FadeCurve.fit(np.full(20, 0.95) + 1e-4 * np.sin(np.arange(20)))
    assert curve.end_of_life_cycle(0.7, horizon_cycles=50) is None


def _cell(cell_id: str, soh: list[float]) -> CellHistory:
    return CellHistory.from_soh(cell_id, soh, nominal_capacity_ah=2.0)


def test_mean_lifetime_averages_cells_that_reach_eol() -> None:
    """The mean EOL is over cells that reach the threshold; others are left out."""
    cells = [
        _cell("a", [1.0, 0.9, 0.8, 0.7, 0.6, 0.5]),  # rolling medians .9 .85 .8 .7 .65: EOL 5
        _cell("b", [1.0, 0.9, 0.6, 0.5]),  # medians .9 .75 .75 .6: EOL 4
        _cell("c", [1.0, 0.95, 0.9]),  # never
    ]
    baseline = MeanLifetime.fit(cells, eol_fraction=0.7)
    assert baseline.mean_eol_cycle == 4.5
    assert baseline.n_cells == 2


def test_mean_lifetime_never_predicts_before_the_next_cycle() -> None:
    """A cell already older than the mean lifetime is predicted to end at the next cycle."""
    baseline = MeanLifetime(mean_eol_cycle=10.0, eol_fraction=0.7, n_cells=1)
    assert baseline.end_of_life_cycle(4) == 10.0
    assert baseline.end_of_life_cycle(12) == 13.0


def test_mean_lifetime_ramp_reaches_the_threshold_at_the_mean_eol() -> None:
    """The trajectory ramps linearly from the last seen SOH to the threshold at the mean EOL."""
    baseline = MeanLifetime(mean_eol_cycle=10.0, eol_fraction=0.7, n_cells=1)
    soh = baseline.forecast([1.0, 0.95, 0.9, 0.85, 0.8], horizon_cycles=8)
    # Seen 5 cycles, 5 to go: 0.1 / 5 per cycle, 0.7 at cycle 10 (index 4).
    np.testing.assert_allclose(soh, 0.8 - 0.02 * np.arange(1, 9))
    assert soh[4] == pytest.approx(0.7)


def test_mean_lifetime_without_any_eol_cell_raises() -> None:
    """With no training cell reaching end of life there is nothing to average."""
    with pytest.raises(ValueError, match=r"Expected at least one training cell reaching 70%"):
        MeanLifetime.fit([_cell("c", [1.0, 0.95])])


def test_last_slope_extrapolates_the_recent_line_exactly() -> None:
    """On a fade that steepens at cycle 30 and is then exactly linear, the line through the
    last max(5, round(0.2 n)) cycles continues the recent slope, not the whole history's."""
    k = np.arange(1, 51, dtype=np.float64)
    soh = np.where(k <= 30, 1.0 - 0.001 * k, 0.97 - 0.004 * (k - 30))
    line = LastSlope.fit(soh)
    assert line.n_seen == 50 and line.n_fit == 10
    assert line.b == pytest.approx(-0.004)
    future = np.arange(51, 61)
    np.testing.assert_allclose(line.forecast(10), 0.97 - 0.004 * (future - 30), atol=1e-9)
    # 0.97 - 0.004 (k - 30) <= 0.7 first at k = 97.5 -> 98; a whole-history line says later.
    assert line.end_of_life_cycle(0.7, horizon_cycles=100) == 98
    assert FadeCurve.fit(soh).end_of_life_cycle(0.7, horizon_cycles=100) != 98


def test_last_slope_window_and_floor() -> None:
    """The window is max(5, round(0.2 n)) capped at n; a rising line never reaches end of
    life; the forecast never goes below zero."""
    assert [LastSlope.window(n) for n in (2, 5, 10, 24, 26, 100)] == [2, 5, 5, 5, 5, 20]
    assert LastSlope.fit([0.9, 0.91, 0.92]).end_of_life_cycle(0.7, horizon_cycles=50) is None
    steep = LastSlope.fit([0.3, 0.2, 0.1])
    np.testing.assert_allclose(steep.forecast(3), [0.0, 0.0, 0.0], atol=1e-12)
    assert steep.end_of_life_cycle(0.7, horizon_cycles=3) == 4
    with pytest.raises(ValueError, match="Expected at least 2 finite SOH values"):
        LastSlope.fit([1.0])


def test_mean_lifetime_on_initial_basis_uses_each_cells_own_threshold() -> None:
    """With basis "initial" each training cell's EOL is at its own threshold (80 % of its
    first capacity), so a cell starting above its rating lives shorter than at 80 % nominal."""
    k = np.arange(1, 121)
    cells = [
        CellHistory.from_soh("hi", 1.1 - 0.0047 * k),  # starts 9 % above nominal
        CellHistory.from_soh("lo", 0.9 - 0.0023 * k),  # starts 10 % below
    ]
    initial = MeanLifetime.fit(cells, eol_fraction=0.8, eol_basis="initial")
    # First capacities 1.0906 and 0.8954 (second cycle, the median of three on a line), so
    # thresholds 0.87248 (k > 48.4) and 0.71632 (k > 79.9).
    assert [c.end_of_life_cycle(0.8, "initial") for c in cells] == [49, 80]
    assert initial.mean_eol_cycle == pytest.approx(64.5) and initial.eol_basis == "initial"
    # Of nominal (0.8): k > 63.8 and k > 43.5.
    assert MeanLifetime.fit(cells, eol_fraction=0.8).mean_eol_cycle == pytest.approx(54.0)
    # The ramp goes to the forecast cell's own threshold, which must be given for this basis.
    ramp = initial.forecast([0.95, 0.9], horizon_cycles=70, threshold_frac=0.72)
    # From 0.9 after cycle 2 down to 0.72 at cycle 64.5: 62.5 cycles.
    np.testing.assert_allclose(ramp, 0.9 - 0.18 / 62.5 * np.arange(1, 71))
    with pytest.raises(ValueError, match="Expected threshold_frac"):
        initial.forecast([0.95, 0.9], horizon_cycles=5)
