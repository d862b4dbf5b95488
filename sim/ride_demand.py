"""Historical rides per zone and hour: the training data of the demand forecaster.

The expected number of rides of zone ``z`` in hour ``t`` is the product of four factors::

    rides_per_zone_per_day / 24                    average zone, average hour
    * popularity[z]                                 seeded per zone, mean 1 over zones
    * shape(local hour, weekday or weekend)         mean 1 over a day
    * weather(temp_c[t], precipitation_mm[t])       1 in dry, comfortable weather

and the rides themselves are Poisson counts around it.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from contracts.ride_history import RideHistory
from contracts.weather import WeatherHours
from sim.demand import DemandProfile
from sim.weather import SimWeather

__all__ = ["RideDemandParams", "expected_rides", "ride_history"]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

_S_PER_HOUR = 3600
_S_PER_DAY = 86_400
# 1970-01-01 was a Thursday: with Monday = 0, day 0 of the epoch is weekday 3.
_EPOCH_WEEKDAY = 3
_SATURDAY = 5

# Relative demand per local hour on Saturdays and Sundays: no commute bumps, a later and
# flatter afternoon plateau, and more late-night trips than on weekdays.
_WEEKEND_HOURLY_WEIGHTS: tuple[float, ...] = (
    0.45, 0.35, 0.25, 0.15, 0.10, 0.08, 0.12, 0.25, 0.45, 0.70, 0.95, 1.15,
    1.30, 1.40, 1.45, 1.45, 1.45, 1.40, 1.30, 1.15, 1.00, 0.85, 0.70, 0.55,
)  # fmt: skip

# Stream numbers inside one seed, so popularity and counts never share random numbers.
_POPULARITY_STREAM = 0
_COUNT_STREAM = 1


@dataclass(frozen=True, kw_only=True)
class RideDemandParams:
    """How many rides start in a zone, and how time and weather change that.

    The weather effect sizes are assumptions, chosen to match the direction and rough size
    of published findings, not fitted to any data. Studies of shared e-scooter and
    bike-share trips (e.g. Noland, 2021, "Scootin' in the rain: Does weather affect
    micromobility?", Transportation Research Part A, on Louisville e-scooters) report
    rainy hours and days with roughly a third to a half fewer trips, and fewer trips in
    cold and in very hot weather than in mild weather.

    Parameters
    ----------
    rides_per_zone_per_day
        Rides a zone of average popularity starts on a weekday in dry, comfortable weather.
    popularity_sigma
        Log-scale spread of zone popularity: popularity is log-normal with this sigma and
        mean 1, so with 0.8 the busiest of 50 zones sees about ten times the median.
    weekday_hourly_weights, weekend_hourly_weights
        24 relative weights per local hour (see :class:`~sim.demand.DemandProfile`); the
        weekday default is the simulator's city profile.
    weekend_volume_factor
        Rides on a Saturday or Sunday relative to a weekday, before weather.
    rain_max_reduction
        Fraction of rides lost in the heaviest rain.
    rain_half_effect_mm
        Hourly precipitation at which half of ``rain_max_reduction`` applies. The factor
        is ``1 - rain_max_reduction * p / (p + rain_half_effect_mm)``: with the defaults,
        0.2 mm/h (drizzle) costs 14 % of rides, 1 mm/h 33 % and 5 mm/h 45 %.
    comfort_temp_c
        Temperature of the most rides.
    temp_tolerance_c
        Width of the comfortable band: the temperature factor is
        ``floor + (1 - floor) * exp(-((T - comfort) / tolerance)^2 / 2)``.
    temp_floor
        Temperature factor far from comfortable. With the defaults, 0 °C keeps 44 % of
        the rides of 21 °C, 10 °C keeps 68 % and 33 °C keeps 65 %.
    utc_offset_h
        Local time offset of the city, for hour of day and weekday.
    """

    rides_per_zone_per_day: float = 60.0
    popularity_sigma: float = 0.8
    weekday_hourly_weights: tuple[float, ...] = DemandProfile().hourly_weights
    weekend_hourly_weights: tuple[float, ...] = _WEEKEND_HOURLY_WEIGHTS
    weekend_volume_factor: float = 0.85
    rain_max_reduction: float = 0.5
    rain_half_effect_mm: float = 0.5
    comfort_temp_c: float = 21.0
    temp_tolerance_c: float = 9.0
    temp_floor: float = 0.4
    utc_offset_h: float = 1.0

    def __post_init__(self) -> None:
        checks: tuple[tuple[str, float, float], ...] = (
            ("rides_per_zone_per_day", 0.0, 1.0e5),
            ("popularity_sigma", 0.0, 3.0),
            ("weekend_volume_factor", 0.0, 5.0),
            ("rain_max_reduction", 0.0, 1.0),
            ("rain_half_effect_mm", 1e-3, 100.0),
            ("comfort_temp_c", -10.0, 40.0),
            ("temp_tolerance_c", 0.5, 50.0),
            ("temp_floor", 0.0, 1.0),
            ("utc_offset_h", -14.0, 14.0),
        )
        for name, lo, hi in checks:
            value = getattr(self, name)
            if not lo <= value <= hi:
                raise ValueError(f"Expected {name} in [{lo}, {hi}], got {value}.")
        # DemandProfile checks the weights (24, non-negative, positive sum).
        DemandProfile(hourly_weights=self.weekday_hourly_weights)
        DemandProfile(hourly_weights=self.weekend_hourly_weights)

    def time_factor(self, ts: FloatArray) -> FloatArray:
        """Hour-of-day and weekday factor of the hours starting at ``ts`` (Unix s)."""
        local_s = np.asarray(ts, dtype=np.float64) + self.utc_offset_h * _S_PER_HOUR
        # The hour's centre decides its local hour and day (offsets may be fractional).
        centre_s = local_s + 0.5 * _S_PER_HOUR
        hour = np.floor(centre_s / _S_PER_HOUR).astype(np.int64) % 24
        weekday = (np.floor(centre_s / _S_PER_DAY).astype(np.int64) + _EPOCH_WEEKDAY) % 7
        weekend = weekday >= _SATURDAY
        week = np.asarray(self.weekday_hourly_weights, dtype=np.float64)
        end = np.asarray(self.weekend_hourly_weights, dtype=np.float64)
        shape_weekday = week[hour] / week.mean()
        shape_weekend = self.weekend_volume_factor * end[hour] / end.mean()
        factor: FloatArray = np.where(weekend, shape_weekend, shape_weekday)
        return factor

    def weather_factor(self, temp_c: FloatArray, precipitation_mm: FloatArray) -> FloatArray:
        """Multiplier of demand in the given weather: 1 when dry at ``comfort_temp_c``."""
        rain = np.asarray(precipitation_mm, dtype=np.float64)
        rain_factor = 1.0 - self.rain_max_reduction * rain / (rain + self.rain_half_effect_mm)
        z = (np.asarray(temp_c, dtype=np.float64) - self.comfort_temp_c) / self.temp_tolerance_c
        temp_factor = self.temp_floor + (1.0 - self.temp_floor) * np.exp(-0.5 * z**2)
        factor: FloatArray = rain_factor * temp_factor
        return factor


def _zone_popularity(zone_ids: Sequence[str], seed: int, sigma: float) -> FloatArray:
    # Seeded by the zone's name, so a zone keeps its popularity whatever other zones are
    # simulated with it and in whichever order.
    normals = np.array(
        [
            np.random.default_rng(
                [seed, _POPULARITY_STREAM, zlib.crc32(z.encode())]
            ).standard_normal()
            for z in zone_ids
        ]
    )
    popularity: FloatArray = np.exp(sigma * normals - 0.5 * sigma**2)
    return popularity


def expected_rides(
    zone_ids: Sequence[str],
    weather: WeatherHours,
    seed: int,
    params: RideDemandParams = RideDemandParams(),
) -> FloatArray:
    """Noise-free rides per zone and hour: the Poisson means of :func:`ride_history`.

    Parameters
    ----------
    zone_ids
        Zones (rows of the result).
    weather
        Weather of the hours (columns of the result).
    seed
        Seed of the zones' popularity.
    params
        Demand levels and effect sizes.

    Returns
    -------
    numpy.ndarray
        Shape ``(len(zone_ids), len(weather))``.
    """
    if not 0 <= seed < 2**63:
        raise ValueError(f"Expected seed in [0, 2**63), got {seed}.")
    popularity = _zone_popularity(zone_ids, seed, params.popularity_sigma)
    per_hour = (
        params.rides_per_zone_per_day
        / 24.0
        * params.time_factor(weather.ts)
        * params.weather_factor(weather.temp_c, weather.precipitation_mm)
    )
    rates: FloatArray = popularity[:, None] * per_hour[None, :]
    return rates


def ride_history(
    zone_ids: Sequence[str],
    start_ts: float,
    hours: int,
    weather: SimWeather,
    seed: int,
    params: RideDemandParams = RideDemandParams(),
) -> RideHistory:
    """Simulated rides per zone for ``hours`` hours from the hour containing ``start_ts``.

    Parameters
    ----------
    zone_ids
        Zones to simulate, unique.
    start_ts
        Unix seconds (UTC); the history starts at the beginning of this hour.
    hours
        Length of the history.
    weather
        The city's weather; the history carries the hours it used.
    seed
        Seed of zone popularity and of the Poisson counts: same arguments, same history.
    params
        Demand levels and effect sizes.
    """
    if not math.isfinite(start_ts):
        raise ValueError(f"Expected a finite start_ts, got {start_ts}.")
    hours_weather = weather.hourly(start_ts, hours)
    rates = expected_rides(zone_ids, hours_weather, seed, params)
    rides = np.random.default_rng([seed, _COUNT_STREAM]).poisson(rates).astype(np.int64)
    return RideHistory(zone_ids=tuple(zone_ids), rides=rides, weather=hours_weather)
