"""Rider demand over the day: how often a parked, available scooter gets rented."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["DemandProfile"]

# Relative demand per local hour 0..23 for a city shared-scooter fleet: near zero at night,
# a morning commute bump, a midday plateau and the evening peak that carries most trips.
_CITY_HOURLY_WEIGHTS: tuple[float, ...] = (
    0.25, 0.15, 0.10, 0.08, 0.08, 0.15, 0.45, 1.00, 1.40, 1.10, 0.90, 1.00,
    1.20, 1.20, 1.15, 1.25, 1.55, 1.85, 1.80, 1.50, 1.15, 0.85, 0.60, 0.40,
)  # fmt: skip


@dataclass(frozen=True)
class DemandProfile:
    """Trip starts as a Poisson process whose rate follows the time of day.

    Parameters
    ----------
    trips_per_vehicle_per_day
        Average rentals of one available scooter over a whole day.
    hourly_weights
        24 relative weights, one per local hour; linearly interpolated between hour
        centres and wrapped around midnight. Only their shape matters: they are
        normalised to a mean of 1.
    """

    trips_per_vehicle_per_day: float = 5.0
    hourly_weights: tuple[float, ...] = _CITY_HOURLY_WEIGHTS

    def __post_init__(self) -> None:
        if not 0.0 <= self.trips_per_vehicle_per_day <= 200.0:
            raise ValueError(
                f"Expected trips_per_vehicle_per_day in [0, 200], got "
                f"{self.trips_per_vehicle_per_day}."
            )
        if len(self.hourly_weights) != 24:
            raise ValueError(f"Expected 24 hourly_weights, got {len(self.hourly_weights)}.")
        if min(self.hourly_weights) < 0.0 or sum(self.hourly_weights) <= 0.0:
            raise ValueError(
                f"Expected non-negative hourly_weights with a positive sum, got "
                f"{self.hourly_weights}."
            )

    def trip_rate_per_s(self, hour_of_day: float) -> float:
        """Rate of trip starts per available vehicle, per second, at a local hour."""
        weights = np.asarray(self.hourly_weights, dtype=np.float64)
        # Weight k belongs to the centre of hour k (k + 0.5); the wrapped copies at both
        # ends make the interpolation periodic over midnight.
        centres = np.arange(-1, 25, dtype=np.float64) + 0.5
        wrapped = np.concatenate(([weights[-1]], weights, [weights[0]]))
        weight = float(np.interp(hour_of_day % 24.0, centres, wrapped))
        return self.trips_per_vehicle_per_day / 86_400.0 * weight / float(weights.mean())
