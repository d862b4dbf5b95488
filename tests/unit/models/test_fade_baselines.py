"""Tests for :mod:`models.fade_baselines`: the fade-curve and mean-lifetime baselines."""

from __future__ import annotations

import numpy as np
import pytest

from models.cell_data import CellHistory
from models.fade_baselines import FadeCurve, MeanLifetime, first_cycle_at_or_below


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
        _cell("a", [1.0, 0.9, 0.8, 0.7]),  # EOL 4
        _cell("b", [1.0, 0.9, 0.65]),  # EOL 3
        _cell("c", [1.0, 0.95, 0.9]),  # never
    ]
    baseline = MeanLifetime.fit(cells, eol_fraction=0.7)
    assert baseline.mean_eol_cycle == 3.5
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
