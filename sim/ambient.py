"""Outdoor air temperature over the day: the heat sink of every parked or riding pack."""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["AmbientProfile"]


@dataclass(frozen=True)
class AmbientProfile:
    """A daily sinusoid of air temperature.

    Parameters
    ----------
    mean_c
        Daily mean temperature.
    amplitude_c
        Half the difference between the afternoon peak and the pre-dawn low.
    peak_hour
        Local hour of day (0-24) of the warmest moment.
    """

    mean_c: float = 12.0
    amplitude_c: float = 6.0
    peak_hour: float = 15.0

    def __post_init__(self) -> None:
        if not -40.0 <= self.mean_c <= 50.0:
            raise ValueError(f"Expected mean_c in [-40, 50], got {self.mean_c}.")
        if not 0.0 <= self.amplitude_c <= 30.0:
            raise ValueError(f"Expected amplitude_c in [0, 30], got {self.amplitude_c}.")
        if not 0.0 <= self.peak_hour < 24.0:
            raise ValueError(f"Expected peak_hour in [0, 24), got {self.peak_hour}.")

    def temp_c(self, hour_of_day: float) -> float:
        """Air temperature at a local hour of day (any real number; taken modulo 24)."""
        phase = 2.0 * math.pi * (hour_of_day - self.peak_hour) / 24.0
        return self.mean_c + self.amplitude_c * math.cos(phase)
