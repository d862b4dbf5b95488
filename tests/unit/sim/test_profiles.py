"""Tests for :mod:`sim.demand`, :mod:`sim.ambient` and :mod:`sim.traction`."""

from __future__ import annotations

import numpy as np
import pytest

from sim.ambient import AmbientProfile
from sim.demand import DemandProfile
from sim.traction import TractionParams


def test_demand_averages_to_trips_per_day() -> None:
    """Integrated over a day the rate gives trips_per_vehicle_per_day."""
    profile = DemandProfile(trips_per_vehicle_per_day=6.0)
    hours = np.linspace(0.0, 24.0, 24 * 60, endpoint=False)
    rates = np.array([profile.trip_rate_per_s(h) for h in hours])
    assert rates.mean() * 86_400.0 == pytest.approx(6.0, rel=1e-3)


def test_demand_peaks_in_the_evening_and_sleeps_at_night() -> None:
    """The default city profile has its peak rush hour far above 4 am."""
    profile = DemandProfile()
    assert profile.trip_rate_per_s(17.5) > 10 * profile.trip_rate_per_s(3.5)
    assert profile.trip_rate_per_s(24.25) == pytest.approx(profile.trip_rate_per_s(0.25))


def test_demand_rejects_a_wrong_number_of_weights() -> None:
    """The profile needs one weight per hour."""
    with pytest.raises(ValueError, match="Expected 24 hourly_weights, got 3"):
        DemandProfile(hourly_weights=(1.0, 2.0, 3.0))


def test_ambient_peaks_at_peak_hour() -> None:
    """The daily sinusoid is warmest at peak_hour and coldest twelve hours later."""
    air = AmbientProfile(mean_c=10.0, amplitude_c=5.0, peak_hour=15.0)
    assert air.temp_c(15.0) == pytest.approx(15.0)
    assert air.temp_c(3.0) == pytest.approx(5.0)


def test_traction_power_grows_with_speed_and_regen_is_small() -> None:
    """Cruising power rises with speed; braking recovers a little, within regen_max_w."""
    t = TractionParams()
    speeds = np.array([2.0, 4.0, 6.0])
    cruise = t.battery_power_w(speeds, np.zeros(3))
    assert np.all(np.diff(cruise) > 0)
    assert 150.0 < cruise[-1] < 400.0
    braking = t.battery_power_w(np.array([6.0]), np.array([-3.0]))
    assert -t.regen_max_w + t.auxiliary_w <= braking[0] < 0.0
