"""Tests for :mod:`sim.ride_demand`: simulated rides per zone and hour."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from contracts.ride_history import RideHistory
from contracts.weather import WeatherHours
from sim.ride_demand import RideDemandParams, expected_rides, ride_history
from sim.weather import SimWeather

# 2024-06-03 00:00 UTC, a Monday.
T0_S = 1_717_372_800.0
HOUR_S = 3600.0
ZONES = ("z5800_1200", "z5800_1201", "z5801_1200", "z5801_1201")


def _hour_starts(first_s: float, hours: int) -> npt.NDArray[np.float64]:
    return np.asarray(first_s + HOUR_S * np.arange(hours), dtype=np.float64)


def _weather(hours: int, temp_c: float = 21.0, precipitation_mm: float = 0.0) -> WeatherHours:
    return WeatherHours(
        ts=_hour_starts(T0_S, hours),
        temp_c=np.full(hours, temp_c),
        precipitation_mm=np.full(hours, precipitation_mm),
    )


def test_history_shapes_and_types() -> None:
    """Rides are non-negative int64 of shape (zones, hours), aligned with the weather used."""
    history = ride_history(ZONES, T0_S + 10.0, 48, SimWeather(seed=1), seed=3)
    assert history.rides.shape == (len(ZONES), 48)
    assert history.rides.dtype == np.int64
    assert (history.rides >= 0).all()
    assert history.zone_ids == ZONES
    np.testing.assert_array_equal(history.ts, T0_S + HOUR_S * np.arange(48))
    assert history.hours == 48


def test_same_seed_same_history() -> None:
    """The same arguments give the same counts; another seed gives other counts."""
    weather = SimWeather(seed=1)
    a = ride_history(ZONES, T0_S, 72, weather, seed=3)
    b = ride_history(ZONES, T0_S, 72, weather, seed=3)
    c = ride_history(ZONES, T0_S, 72, weather, seed=4)
    np.testing.assert_array_equal(a.rides, b.rides)
    assert not np.array_equal(a.rides, c.rides)


def test_zone_popularity_belongs_to_the_zone() -> None:
    """A zone's expected rides do not depend on which other zones are simulated, or their order."""
    weather = _weather(24)
    alone = expected_rides(ZONES[2:3], weather, seed=9)
    together = expected_rides(tuple(reversed(ZONES)), weather, seed=9)
    np.testing.assert_allclose(together[1], alone[0])
    spread = expected_rides([f"z{i}_0" for i in range(200)], weather, seed=9).sum(axis=1)
    # Log-normal popularity with mean 1: the zones' mean stays near the average zone's.
    assert spread.mean() == pytest.approx(RideDemandParams().rides_per_zone_per_day, rel=0.2)
    assert spread.max() > 5 * np.median(spread)


def test_counts_are_poisson_around_the_expected_rides() -> None:
    """Summed over many zone-hours the counts match the expected rides within noise."""
    weather = SimWeather(seed=2)
    zones = [f"z1_{i}" for i in range(30)]
    history = ride_history(zones, T0_S, 24 * 14, weather, seed=5)
    rates = expected_rides(zones, history.weather, seed=5)
    assert history.rides.sum() == pytest.approx(rates.sum(), rel=0.02)


def test_rain_cuts_rides_by_a_third_to_a_half() -> None:
    """Moderate to heavy rain keeps between half and two thirds of the dry-weather rides."""
    dry = expected_rides(ZONES, _weather(24), seed=1)
    for mm, low, high in ((1.0, 0.5, 0.75), (5.0, 0.5, 0.6)):
        ratio = expected_rides(ZONES, _weather(24, precipitation_mm=mm), seed=1) / dry
        assert np.all((low <= ratio) & (ratio <= high)), (mm, ratio.min(), ratio.max())
    drizzle = expected_rides(ZONES, _weather(24, precipitation_mm=0.1), seed=1) / dry
    assert np.all(drizzle > 0.85)


def test_rain_lowers_simulated_rides() -> None:
    """In a simulated history, rides per expected dry-weather ride are lower in wet hours."""
    weather = SimWeather(seed=4, wet_after_dry_prob=0.08)
    zones = [f"z2_{i}" for i in range(20)]
    history = ride_history(zones, T0_S, 24 * 28, weather, seed=6)
    dry_weather = WeatherHours(
        ts=history.ts, temp_c=history.weather.temp_c, precipitation_mm=np.zeros(history.hours)
    )
    baseline = expected_rides(zones, dry_weather, seed=6).sum(axis=0)
    per_baseline = history.rides.sum(axis=0) / baseline
    wet = history.weather.precipitation_mm >= 0.5
    assert wet.sum() > 30
    assert per_baseline[wet].mean() < 0.8 * per_baseline[~wet].mean()


def test_mild_weather_beats_cold_and_heat() -> None:
    """Demand peaks at the comfortable temperature and falls off in cold and heat."""
    params = RideDemandParams()
    temps = np.array([-5.0, 5.0, params.comfort_temp_c, 30.0, 38.0])
    factor = params.weather_factor(temps, np.zeros(5))
    assert factor[2] == pytest.approx(1.0)
    assert factor[0] < factor[1] < factor[2]
    assert factor[2] > factor[3] > factor[4]
    assert factor.min() >= params.temp_floor


def test_weekends_peak_later_and_flatter() -> None:
    """The weekday peak is the evening rush; the weekend peak comes midday and is lower."""
    params = RideDemandParams(utc_offset_h=0.0)
    monday = params.time_factor(_hour_starts(T0_S, 24))
    saturday = params.time_factor(_hour_starts(T0_S + 5 * 86_400, 24))
    assert int(np.argmax(monday)) == 17
    assert 12 <= int(np.argmax(saturday)) <= 16
    assert saturday.max() / saturday.mean() < monday.max() / monday.mean()
    assert monday[8] > 2 * saturday[8]  # no morning commute on Saturday
    assert monday.mean() == pytest.approx(1.0)
    assert saturday.mean() == pytest.approx(params.weekend_volume_factor)


def test_history_is_validated() -> None:
    """Shape, integer and non-negative counts and unique zones are checked."""
    weather = _weather(3)
    ok = RideHistory(zone_ids=("a", "b"), rides=np.zeros((2, 3), dtype=np.int32), weather=weather)
    assert ok.rides.dtype == np.int64
    assert ok.window(1, 3).rides.shape == (2, 2)
    with pytest.raises(ValueError, match=r"Expected rides of shape \(2, 3\), got \(2, 2\)"):
        RideHistory(zone_ids=("a", "b"), rides=np.zeros((2, 2), dtype=np.int64), weather=weather)
    with pytest.raises(ValueError, match="Expected integer rides, got dtype float64"):
        RideHistory(zone_ids=("a", "b"), rides=np.zeros((2, 3)), weather=weather)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="Expected non-negative rides, got minimum -1"):
        RideHistory(zone_ids=("a",), rides=np.array([[0, -1, 0]]), weather=weather)
    with pytest.raises(ValueError, match=r"Expected unique zone ids, got duplicates \['a'\]"):
        RideHistory(zone_ids=("a", "a"), rides=np.zeros((2, 3), dtype=np.int64), weather=weather)


def test_params_are_validated() -> None:
    """Out-of-range effect sizes and malformed hour weights are rejected."""
    with pytest.raises(ValueError, match=r"Expected rain_max_reduction in \[0.0, 1.0\], got 1.5"):
        RideDemandParams(rain_max_reduction=1.5)
    with pytest.raises(ValueError, match="Expected 24 hourly_weights, got 2"):
        RideDemandParams(weekend_hourly_weights=(1.0, 2.0))
