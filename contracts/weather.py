"""Hourly weather: what the simulator makes, the weather sources fetch and the demand model reads.

A validated record at the bottom, so the model code that reads weather (and every Serve
replica) never imports the simulator that can also produce it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["WeatherHours"]

FloatArray = npt.NDArray[np.float64]

_S_PER_HOUR = 3600
# Physical bounds of a near-surface hourly reading anywhere people ride scooters.
_MIN_TEMP_C, _MAX_TEMP_C = -90.0, 60.0
_MAX_PRECIPITATION_MM = 500.0


@dataclass(frozen=True, eq=False)
class WeatherHours:
    """Weather of consecutive hours, one array element per hour.

    Parameters
    ----------
    ts
        Start of each hour, Unix seconds (UTC); whole hours, one hour apart.
    temp_c
        Air temperature at 2 m, representative of the hour.
    precipitation_mm
        Precipitation (rain, showers, snow as water) that fell during the hour.

    The arrays are copied to float64 and made read-only, so a ``WeatherHours`` cannot
    change after it was validated.
    """

    ts: FloatArray
    temp_c: FloatArray
    precipitation_mm: FloatArray

    def __post_init__(self) -> None:
        arrays = {}
        for name in ("ts", "temp_c", "precipitation_mm"):
            array = np.array(getattr(self, name), dtype=np.float64)
            if array.ndim != 1:
                raise ValueError(f"Expected a 1-D {name}, got shape {array.shape}.")
            if not np.isfinite(array).all():
                raise ValueError(
                    f"Expected finite {name}, got {int((~np.isfinite(array)).sum())} "
                    "non-finite values."
                )
            array.flags.writeable = False
            arrays[name] = array
        lengths = {name: len(a) for name, a in arrays.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"Expected arrays of equal length, got {lengths}.")
        ts = arrays["ts"]
        if (ts % _S_PER_HOUR != 0).any():
            raise ValueError(f"Expected ts at whole hours, got {ts[ts % _S_PER_HOUR != 0][0]}.")
        if (np.diff(ts) != _S_PER_HOUR).any():
            raise ValueError(
                f"Expected ts one hour apart, got steps of {sorted(set(np.diff(ts).tolist()))} s."
            )
        temp_c = arrays["temp_c"]
        if len(temp_c) and not (_MIN_TEMP_C <= temp_c.min() and temp_c.max() <= _MAX_TEMP_C):
            raise ValueError(
                f"Expected temp_c in [{_MIN_TEMP_C}, {_MAX_TEMP_C}], got "
                f"[{temp_c.min()}, {temp_c.max()}]."
            )
        rain = arrays["precipitation_mm"]
        if len(rain) and not (rain.min() >= 0.0 and rain.max() <= _MAX_PRECIPITATION_MM):
            raise ValueError(
                f"Expected precipitation_mm in [0, {_MAX_PRECIPITATION_MM}], got "
                f"[{rain.min()}, {rain.max()}]."
            )
        for name, array in arrays.items():
            object.__setattr__(self, name, array)

    def __len__(self) -> int:
        return len(self.ts)

    def window(self, start: int, stop: int) -> WeatherHours:
        """Hours ``start`` (inclusive) to ``stop`` (exclusive), by position."""
        if not 0 <= start <= stop <= len(self):
            raise ValueError(f"Expected 0 <= start <= stop <= {len(self)}, got ({start}, {stop}).")
        return WeatherHours(
            ts=self.ts[start:stop],
            temp_c=self.temp_c[start:stop],
            precipitation_mm=self.precipitation_mm[start:stop],
        )
