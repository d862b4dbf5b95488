"""Tests for :mod:`sim.weather`: seeded hourly weather and the ``WeatherHours`` record."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from contracts.weather import WeatherHours
from sim.weather import SimWeather

# 2024-01-01 00:00 UTC, a Monday.
T0_S = 1_704_067_200.0
HOUR_S = 3600.0


def test_same_hour_same_weather_whatever_the_query_start() -> None:
    """Overlapping queries agree exactly, although the rain chain and anomalies have memory."""
    weather = SimWeather(seed=7)
    long = weather.hourly(T0_S, 24 * 20)
    for offset_h in (1, 37, 200):
        short = weather.hourly(T0_S + offset_h * HOUR_S, 48)
        window = long.window(offset_h, offset_h + 48)
        np.testing.assert_array_equal(short.ts, window.ts)
        np.testing.assert_array_equal(short.temp_c, window.temp_c)
        np.testing.assert_array_equal(short.precipitation_mm, window.precipitation_mm)


def test_seed_decides_the_weather() -> None:
    """Two instances with one seed agree; another seed gives other weather."""
    a = SimWeather(seed=1).hourly(T0_S, 24 * 10)
    b = SimWeather(seed=1).hourly(T0_S, 24 * 10)
    c = SimWeather(seed=2).hourly(T0_S, 24 * 10)
    np.testing.assert_array_equal(a.temp_c, b.temp_c)
    np.testing.assert_array_equal(a.precipitation_mm, b.precipitation_mm)
    assert not np.array_equal(a.temp_c, c.temp_c)


def test_hours_start_at_the_hour_containing_start_ts() -> None:
    """The first hour is the one that contains start_ts; hours are consecutive."""
    hours = SimWeather().hourly(T0_S + 1234.5, 5)
    np.testing.assert_array_equal(hours.ts, T0_S + HOUR_S * np.arange(5))
    assert len(hours) == 5


def test_a_year_has_seasons_a_daily_cycle_and_rain_episodes() -> None:
    """July is warmer than January, afternoons than nights; rain falls in multi-hour spells."""
    weather = SimWeather(seed=3, utc_offset_h=0.0)
    year = weather.hourly(T0_S, 24 * 366)
    days = year.temp_c.reshape(366, 24)
    january, july = days[:31].mean(), days[182:213].mean()
    assert july - january > 1.5 * weather.seasonal_amplitude_c
    assert days[:, 15].mean() - days[:, 3].mean() > 1.5 * weather.daily_amplitude_c

    wet = year.precipitation_mm > 0
    p_dw, p_ww = weather.wet_after_dry_prob, weather.wet_after_wet_prob
    stationary_wet = p_dw / (p_dw + 1.0 - p_ww)
    assert wet.mean() == pytest.approx(stationary_wet, abs=0.03)
    starts = np.flatnonzero(wet[1:] & ~wet[:-1])
    mean_spell_h = wet.sum() / max(len(starts), 1)
    assert 3.0 < mean_spell_h < 8.0  # 1 / (1 - 0.8) = 5 h expected
    assert (year.precipitation_mm[wet] > 0).all()
    assert 400.0 < year.precipitation_mm.sum() < 1400.0


def test_day_to_day_anomalies_persist() -> None:
    """Daily mean temperatures minus the season correlate from one day to the next."""
    seasonless = SimWeather(
        seed=5, seasonal_amplitude_c=0.0, daily_amplitude_c=0.0, day_anomaly_sd_c=3.0
    )
    daily = seasonless.hourly(T0_S, 24 * 400).temp_c.reshape(400, 24).mean(axis=1)
    anomaly = daily - daily.mean()
    lag_one = np.corrcoef(anomaly[:-1], anomaly[1:])[0, 1]
    assert 0.5 < lag_one < 0.9
    assert anomaly.std() == pytest.approx(3.0, rel=0.25)


def test_temperature_is_continuous_over_midnight() -> None:
    """Anomalies are interpolated between days: no hour-to-hour jump beyond the daily cycle."""
    hours = SimWeather(seed=11, day_anomaly_sd_c=6.0).hourly(T0_S, 24 * 30)
    assert np.abs(np.diff(hours.temp_c)).max() < 3.0


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"seed": -1}, r"Expected seed in \[0, "),
        ({"day_anomaly_persistence": 0.99}, r"Expected day_anomaly_persistence in \[0.0, 0.95\]"),
        (
            {"wet_after_dry_prob": 0.5, "wet_after_wet_prob": 0.4},
            r"Expected 0 < wet_after_dry_prob < wet_after_wet_prob < 1, got \(0.5, 0.4\)",
        ),
        ({"utc_offset_h": 15.0}, r"Expected utc_offset_h in \[-14.0, 14.0\], got 15.0"),
    ],
)
def test_params_are_validated(changes: dict[str, float], message: str) -> None:
    """Out-of-range knobs are rejected with the expected range and the value."""
    with pytest.raises(ValueError, match=message):
        SimWeather(**changes)  # type: ignore[arg-type]


def test_query_is_validated() -> None:
    """Times before the epoch and empty ranges are rejected."""
    with pytest.raises(ValueError, match=r"Expected start_ts in \[0.0, "):
        SimWeather().hourly(-1.0, 3)
    with pytest.raises(ValueError, match=r"Expected hours in \[1, "):
        SimWeather().hourly(T0_S, 0)


def _f(*values: float) -> npt.NDArray[np.float64]:
    return np.array(values, dtype=np.float64)


def test_weather_hours_are_validated_and_read_only() -> None:
    """Lengths, whole consecutive hours and physical ranges are checked; arrays are frozen."""
    ts = _f(T0_S, T0_S + HOUR_S, T0_S + 2 * HOUR_S)
    dry = _f(0.0, 0.0, 0.0)
    hours = WeatherHours(ts=ts, temp_c=_f(1.0, 2.0, 3.0), precipitation_mm=_f(0.0, 0.5, 0.0))
    assert hours.temp_c.dtype == np.float64
    with pytest.raises(ValueError, match="read-only"):
        hours.temp_c[0] = 5.0
    with pytest.raises(ValueError, match="Expected arrays of equal length"):
        WeatherHours(ts=ts, temp_c=_f(1.0, 2.0), precipitation_mm=dry)
    with pytest.raises(ValueError, match="Expected ts at whole hours"):
        WeatherHours(ts=ts + 60, temp_c=_f(1.0, 1.0, 1.0), precipitation_mm=dry)
    with pytest.raises(
        ValueError, match=r"Expected ts one hour apart, got steps of \[3600.0, 7200.0\]"
    ):
        WeatherHours(
            ts=_f(T0_S, T0_S + HOUR_S, T0_S + 3 * HOUR_S),
            temp_c=_f(1.0, 1.0, 1.0),
            precipitation_mm=dry,
        )
    with pytest.raises(ValueError, match=r"Expected precipitation_mm in \[0, 500.0\]"):
        WeatherHours(ts=ts, temp_c=_f(1.0, 1.0, 1.0), precipitation_mm=_f(0.0, -0.1, 0.0))
    with pytest.raises(ValueError, match="Expected finite temp_c"):
        WeatherHours(ts=ts, temp_c=_f(1.0, np.nan, 3.0), precipitation_mm=dry)
    with pytest.raises(ValueError, match=r"Expected 0 <= start <= stop <= 3, got \(2, 5\)"):
        hours.window(2, 5)
