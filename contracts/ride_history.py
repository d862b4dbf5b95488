"""Rides started per zone and hour, with the weather of those hours.

The demand model trains and forecasts on it; the simulator makes one for training and the
model job builds one from what the fleet observed. A validated record at the bottom, so the
model code never imports the simulator to read it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from contracts.weather import WeatherHours

__all__ = ["DEMAND_HORIZON_HOURS", "RideHistory"]

#: Hours a zone demand forecast covers: what the demand model predicts, the model job
#: writes to Redis and the shards' priority scoring reads.
DEMAND_HORIZON_HOURS = 24

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True, eq=False)
class RideHistory:
    """Rides started per zone and hour, with the weather of those hours.

    Parameters
    ----------
    zone_ids
        Zone of each row, unique (e.g. ``"z5801_1234"``, see :class:`~twins.zones.ZoneGrid`).
    rides
        ``rides[z, t]``: rides started in zone ``z`` during hour ``t``; non-negative
        integers of shape ``(len(zone_ids), len(weather))``.
    weather
        Weather of each hour; its ``ts`` are the hours of the history.
    """

    zone_ids: tuple[str, ...]
    rides: IntArray
    weather: WeatherHours

    def __post_init__(self) -> None:
        zone_ids = tuple(self.zone_ids)
        if not zone_ids or not all(isinstance(z, str) and z for z in zone_ids):
            raise ValueError(f"Expected at least one non-empty zone id, got {zone_ids[:5]}.")
        if len(set(zone_ids)) != len(zone_ids):
            duplicates = sorted({z for z in zone_ids if zone_ids.count(z) > 1})
            raise ValueError(f"Expected unique zone ids, got duplicates {duplicates[:5]}.")
        raw = np.asarray(self.rides)
        if not np.issubdtype(raw.dtype, np.integer):
            raise ValueError(f"Expected integer rides, got dtype {raw.dtype}.")
        rides = raw.astype(np.int64)
        expected_shape = (len(zone_ids), len(self.weather))
        if rides.shape != expected_shape:
            raise ValueError(f"Expected rides of shape {expected_shape}, got {rides.shape}.")
        if rides.size and rides.min() < 0:
            raise ValueError(f"Expected non-negative rides, got minimum {rides.min()}.")
        rides.flags.writeable = False
        object.__setattr__(self, "zone_ids", zone_ids)
        object.__setattr__(self, "rides", rides)

    @property
    def ts(self) -> FloatArray:
        """Start of each hour, Unix seconds (UTC)."""
        return self.weather.ts

    @property
    def hours(self) -> int:
        return len(self.weather)

    def window(self, start: int, stop: int) -> RideHistory:
        """Hours ``start`` (inclusive) to ``stop`` (exclusive), by position."""
        return RideHistory(
            zone_ids=self.zone_ids,
            rides=self.rides[:, start:stop],
            weather=self.weather.window(start, stop),
        )
