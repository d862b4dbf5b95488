"""Hourly weather of the simulated city: air temperature and precipitation, seeded.

The same hour always gets the same weather, whatever range a query asks for: every random
number belongs to one UTC day and is drawn from a generator seeded with ``(seed, day)``,
and the two stateful parts (day-to-day temperature anomalies and the wet/dry chain of
rain) are built so that no earlier query start can change them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from contracts.weather import WeatherHours

__all__ = ["SimWeather"]

FloatArray = npt.NDArray[np.float64]

_S_PER_HOUR = 3600
_HOURS_PER_DAY = 24
_DAYS_PER_YEAR = 365.2425
_MIN_TS = 0.0
# Added to the day index in every seed: the anomaly and the rain chain look back from the
# first queried day, and numpy refuses negative seeds.
_DAY_SEED_OFFSET = 1_000_000
_MAX_TS = 1.0e10
_MAX_HOURS = 24 * 366 * 10
# Physical bounds of a near-surface hourly reading anywhere people ride scooters.
_MIN_TEMP_C, _MAX_TEMP_C = -90.0, 60.0
_MAX_PRECIPITATION_MM = 500.0
# The anomaly of a day is a weighted sum of this day's and earlier days' innovations;
# terms whose weight falls below this are dropped (see SimWeather._day_anomaly_c).
_ANOMALY_WEIGHT_CUTOFF = 1e-4


@dataclass(frozen=True)
class _DayDraws:
    """The random numbers that belong to one UTC day, in a fixed order."""

    anomaly_innovation: float
    transition_u: FloatArray  # (24,), decides whether each hour is wet
    wet_amount_mm: FloatArray  # (24,), used where the hour is wet


@dataclass(frozen=True, kw_only=True)
class SimWeather:
    """Seeded, deterministic hourly weather of a mid-latitude city.

    Temperature is a seasonal sinusoid plus a daily sinusoid (as in
    :class:`~sim.ambient.AmbientProfile`) plus a day-to-day anomaly that persists over a
    few days. Precipitation comes in episodes: a two-state Markov chain of dry and wet
    hours, and a gamma-distributed amount in each wet hour.

    Parameters
    ----------
    seed
        Seed of every random draw.
    annual_mean_c
        Mean temperature over a year (Berlin: about 10 °C).
    seasonal_amplitude_c
        Half the difference between the warmest and the coldest day of an average year.
    warmest_day_of_year
        Day of the year (0 = 1 January) of the seasonal maximum; mid-July at mid latitudes.
    daily_amplitude_c
        Half the difference between the afternoon peak and the pre-dawn low.
    peak_hour
        Local hour of day of the warmest moment.
    day_anomaly_sd_c
        Standard deviation of a day's departure from the seasonal mean.
    day_anomaly_persistence
        Lag-one autocorrelation of the daily anomalies (weather systems last a few days).
    wet_after_dry_prob
        Probability that an hour is wet when the previous hour was dry.
    wet_after_wet_prob
        Probability that an hour is wet when the previous hour was wet. The defaults
        give wet spells of 1 / (1 - 0.8) = 5 h on average and about 13 % wet hours.
    wet_hour_mean_mm
        Mean precipitation of a wet hour. With the default chain this gives about
        800 mm a year (Amsterdam: about 850 mm, Berlin: about 600 mm).
    wet_hour_shape
        Gamma shape of the amount of a wet hour; below 1, most wet hours are light and a
        few are downpours.
    utc_offset_h
        Local time offset of the city, for the daily cycle.
    """

    seed: int = 0
    annual_mean_c: float = 10.5
    seasonal_amplitude_c: float = 9.5
    warmest_day_of_year: float = 200.0
    daily_amplitude_c: float = 4.5
    peak_hour: float = 15.0
    day_anomaly_sd_c: float = 2.5
    day_anomaly_persistence: float = 0.7
    wet_after_dry_prob: float = 0.03
    wet_after_wet_prob: float = 0.8
    wet_hour_mean_mm: float = 0.7
    wet_hour_shape: float = 0.8
    utc_offset_h: float = 1.0

    def __post_init__(self) -> None:
        checks: tuple[tuple[str, float, float], ...] = (
            ("seed", 0, 2**63 - 1),
            ("annual_mean_c", -30.0, 40.0),
            ("seasonal_amplitude_c", 0.0, 30.0),
            ("warmest_day_of_year", 0.0, _DAYS_PER_YEAR),
            ("daily_amplitude_c", 0.0, 20.0),
            ("peak_hour", 0.0, 24.0),
            ("day_anomaly_sd_c", 0.0, 15.0),
            ("day_anomaly_persistence", 0.0, 0.95),
            ("wet_hour_mean_mm", 0.0, 50.0),
            ("wet_hour_shape", 0.05, 20.0),
            ("utc_offset_h", -14.0, 14.0),
        )
        for name, lo, hi in checks:
            value = getattr(self, name)
            if not lo <= value <= hi:
                raise ValueError(f"Expected {name} in [{lo}, {hi}], got {value}.")
        # Persistence (wet after wet more likely than wet after dry) is what makes rain
        # come in episodes, and it is also what lets _wet_hours find a point where the
        # chain forgets its past (see there).
        if not 0.0 < self.wet_after_dry_prob < self.wet_after_wet_prob < 1.0:
            raise ValueError(
                "Expected 0 < wet_after_dry_prob < wet_after_wet_prob < 1, got "
                f"({self.wet_after_dry_prob}, {self.wet_after_wet_prob})."
            )

    def hourly(self, start_ts: float, hours: int) -> WeatherHours:
        """Weather of ``hours`` consecutive hours, the first being the one containing ``start_ts``.

        Parameters
        ----------
        start_ts
            Unix seconds (UTC), at or after 1970-01-01.
        hours
            Number of hours, at least 1.

        Returns
        -------
        WeatherHours
            The same values for the same hour on every call, whatever ``start_ts``.
        """
        if not _MIN_TS <= start_ts <= _MAX_TS:
            raise ValueError(f"Expected start_ts in [{_MIN_TS}, {_MAX_TS}], got {start_ts}.")
        if not 1 <= hours <= _MAX_HOURS:
            raise ValueError(f"Expected hours in [1, {_MAX_HOURS}], got {hours}.")
        first_hour = math.floor(start_ts / _S_PER_HOUR)
        hour_index = np.arange(first_hour, first_hour + hours, dtype=np.int64)
        draws: dict[int, _DayDraws] = {}
        temp_c = self._temp_c(hour_index, draws)
        precipitation_mm = self._precipitation_mm(hour_index, draws)
        return WeatherHours(
            ts=(hour_index * _S_PER_HOUR).astype(np.float64),
            temp_c=temp_c,
            precipitation_mm=precipitation_mm,
        )

    def _draws(self, day: int, cache: dict[int, _DayDraws]) -> _DayDraws:
        if day not in cache:
            rng = np.random.default_rng([self.seed, day + _DAY_SEED_OFFSET])
            cache[day] = _DayDraws(
                anomaly_innovation=float(rng.standard_normal()),
                transition_u=rng.random(_HOURS_PER_DAY),
                wet_amount_mm=rng.gamma(
                    self.wet_hour_shape,
                    self.wet_hour_mean_mm / self.wet_hour_shape,
                    _HOURS_PER_DAY,
                ),
            )
        return cache[day]

    def _day_anomaly_c(self, day: int, cache: dict[int, _DayDraws]) -> float:
        """Anomaly of one day: an AR(1) written as its (truncated) moving-average sum.

        ``a(d) = sd * sqrt(1 - phi^2) * sum_k phi^k e(d - k)`` has the lag-one
        autocorrelation ``phi`` and standard deviation ``sd`` of an AR(1), yet depends only
        on the day's own and earlier innovations, not on where a query started.
        """
        phi = self.day_anomaly_persistence
        terms = 1 if phi == 0.0 else math.ceil(math.log(_ANOMALY_WEIGHT_CUTOFF) / math.log(phi))
        total = sum(phi**k * self._draws(day - k, cache).anomaly_innovation for k in range(terms))
        return self.day_anomaly_sd_c * math.sqrt(1.0 - phi**2) * total

    def _temp_c(self, hour_index: npt.NDArray[np.int64], cache: dict[int, _DayDraws]) -> FloatArray:
        centre_days = (hour_index + 0.5) / _HOURS_PER_DAY
        seasonal = self.annual_mean_c + self.seasonal_amplitude_c * np.cos(
            2.0
            * np.pi
            * ((centre_days % _DAYS_PER_YEAR) - self.warmest_day_of_year)
            / _DAYS_PER_YEAR
        )
        local_hour = (hour_index + 0.5 + self.utc_offset_h) % _HOURS_PER_DAY
        daily = self.daily_amplitude_c * np.cos(
            2.0 * np.pi * (local_hour - self.peak_hour) / _HOURS_PER_DAY
        )
        # Each day's anomaly sits at its noon (UTC) and is interpolated linearly between
        # noons, so temperature has no jump at midnight.
        position = centre_days - 0.5
        day0 = np.floor(position).astype(np.int64)
        days = range(int(day0.min()), int(day0.max()) + 2)
        anomaly_by_day = {d: self._day_anomaly_c(d, cache) for d in days}
        left = np.array([anomaly_by_day[int(d)] for d in day0], dtype=np.float64)
        right = np.array([anomaly_by_day[int(d) + 1] for d in day0], dtype=np.float64)
        frac = position - day0
        anomaly = (1.0 - frac) * left + frac * right
        temp_c: FloatArray = np.clip(seasonal + daily + anomaly, _MIN_TEMP_C, _MAX_TEMP_C)
        return temp_c

    def _precipitation_mm(
        self, hour_index: npt.NDArray[np.int64], cache: dict[int, _DayDraws]
    ) -> FloatArray:
        wet = self._wet_hours(hour_index, cache)
        amounts = np.array(
            [
                self._draws(int(h) // _HOURS_PER_DAY, cache).wet_amount_mm[int(h) % _HOURS_PER_DAY]
                for h in hour_index
            ]
        )
        # The clip only binds for extreme user-set gamma parameters.
        return np.where(wet, np.minimum(amounts, _MAX_PRECIPITATION_MM), 0.0)

    def _wet_hours(
        self, hour_index: npt.NDArray[np.int64], cache: dict[int, _DayDraws]
    ) -> npt.NDArray[np.bool_]:
        """Wet/dry state of each hour, the same whichever hour a query starts at.

        Hour ``h`` is wet if its uniform ``u_h`` is below ``wet_after_wet_prob`` (previous
        hour wet) or ``wet_after_dry_prob`` (previous hour dry). Where ``u_h`` is below
        both, hour ``h`` is wet whatever came before; above both, it is dry. Such an hour
        fixes the chain's state from its own draw alone, so running the chain forward from
        the last such hour at or before the query gives the state every query sees.
        """
        p_dry, p_wet = self.wet_after_dry_prob, self.wet_after_wet_prob

        def u(h: int) -> float:
            return float(self._draws(h // _HOURS_PER_DAY, cache).transition_u[h % _HOURS_PER_DAY])

        first, last = int(hour_index[0]), int(hour_index[-1])
        anchor = first
        # With the default probabilities 23 % of hours are such anchors, so this walks back
        # a few hours; the bound only guards against a probability pair that makes anchors
        # vanishingly rare.
        while not (u(anchor) < p_dry or u(anchor) >= p_wet):
            anchor -= 1
            if first - anchor > _MAX_HOURS:
                raise ValueError(
                    f"Expected a wet/dry chain that forgets its past within {_MAX_HOURS} h, "
                    f"got probabilities ({p_dry}, {p_wet}) that do not."
                )
        state = u(anchor) < p_dry
        states = [state]
        for h in range(anchor + 1, last + 1):
            state = u(h) < (p_wet if state else p_dry)
            states.append(state)
        return np.array(states[first - anchor :], dtype=np.bool_)
