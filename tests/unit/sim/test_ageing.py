"""The ageing simulator behind the health model's labels."""

from __future__ import annotations

import numpy as np
import pytest

from sim.ageing import AgeingParams, LifetimeSimulator, UsageParams


def test_same_seed_same_lifetimes() -> None:
    """A seed fixes every draw: two runs give identical snapshots."""
    a = LifetimeSimulator(seed=3).run(50, 200, 2)
    b = LifetimeSimulator(seed=3).run(50, 200, 2)
    np.testing.assert_array_equal(a.soh, b.soh)
    np.testing.assert_array_equal(a.dod_hist, b.dod_hist)


def test_fade_grows_with_age_and_use() -> None:
    """Older, more cycled packs have lower SOH and higher resistance; SOH stays in (0.5, 1]."""
    s = LifetimeSimulator(seed=1).run(400, 1200, 3)
    assert 0.5 < s.soh.min() and s.soh.max() <= 1.0
    old, young = s.age_days > 800, s.age_days < 100
    assert s.soh[old].mean() < s.soh[young].mean() - 0.05
    assert s.resistance_ratio[old].mean() > s.resistance_ratio[young].mean()
    assert np.corrcoef(s.efc, s.soh)[0, 1] < -0.5


def test_heat_accelerates_ageing() -> None:
    """The Arrhenius terms: the same usage in a hot climate fades faster than in a cold one."""
    hot = UsageParams(climate_mean_c=(30.0, 30.0), seasonal_amplitude_c=(0.0, 0.0))
    cold = UsageParams(climate_mean_c=(5.0, 5.0), seasonal_amplitude_c=(0.0, 0.0))
    s_hot = LifetimeSimulator(usage=hot, seed=2).run(200, 700, 1)
    s_cold = LifetimeSimulator(usage=cold, seed=2).run(200, 700, 1)
    assert s_hot.soh.mean() < s_cold.soh.mean() - 0.02


def test_counters_look_like_a_twins() -> None:
    """Segments, histogram and estimates are consistent the way the twin's counters are."""
    s = LifetimeSimulator(seed=4).run(100, 500, 2)
    np.testing.assert_array_equal(s.dod_hist.sum(axis=1), s.cycles_completed)
    est = ~np.isnan(s.capacity_est_ah)
    assert np.all(s.capacity_estimates[~est] == 0)
    err = np.abs(s.capacity_est_ah[est] / s.rated_capacity_ah[est] - s.soh[est])
    assert np.median(err) < 0.05


def test_bad_parameters_are_rejected() -> None:
    """Validation names the field and the value."""
    with pytest.raises(ValueError, match="a_cal"):
        AgeingParams(a_cal=0.0)
    with pytest.raises(ValueError, match="efc_per_day"):
        UsageParams(efc_per_day=(2.0, 1.0))
    with pytest.raises(ValueError, match="n_packs"):
        LifetimeSimulator().run(0, 10)
