"""Fleet zones: a square grid over the map, so dashboards, planners and the simulator
group by the same areas."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["ZoneGrid"]

_KM_PER_DEG_LAT = 111.32
_ZONE_RE = re.compile(r"z(-?\d+)_(-?\d+)")


@dataclass(frozen=True)
class ZoneGrid:
    """Square cells of ``cell_km`` per side, named ``z<row>_<col>``.

    Rows are bands of latitude; within a row, the width of a degree of longitude is
    taken at the row's centre latitude, so cells stay square to within a percent at
    city scale.
    """

    cell_km: float = 1.0

    def __post_init__(self) -> None:
        if not self.cell_km > 0:
            raise ValueError(f"Expected cell_km > 0, got {self.cell_km}.")

    def rows_cols(
        self, lat: npt.NDArray[np.float64], lon: npt.NDArray[np.float64]
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        row = np.floor(lat * _KM_PER_DEG_LAT / self.cell_km).astype(np.int64)
        centre_lat = (row + 0.5) * self.cell_km / _KM_PER_DEG_LAT
        km_per_deg_lon = _KM_PER_DEG_LAT * np.maximum(np.cos(np.radians(centre_lat)), 1e-6)
        col = np.floor(lon * km_per_deg_lon / self.cell_km).astype(np.int64)
        return row, col

    def zone_ids(self, lat: npt.NDArray[np.float64], lon: npt.NDArray[np.float64]) -> list[str]:
        """Zone id per position; ``"unknown"`` where the position is NaN."""
        known = np.isfinite(lat) & np.isfinite(lon)
        row, col = self.rows_cols(np.where(known, lat, 0.0), np.where(known, lon, 0.0))
        return [
            f"z{r}_{c}" if k else "unknown"
            for r, c, k in zip(row.tolist(), col.tolist(), known.tolist(), strict=True)
        ]

    def zone_id(self, lat: float, lon: float) -> str:
        return self.zone_ids(np.array([lat]), np.array([lon]))[0]

    def centre_of(self, zone: str) -> tuple[float, float] | None:
        """The (lat, lon) centre of a zone id of this grid; ``None`` for ``"unknown"`` or a
        name that is not ``z<row>_<col>``."""
        m = _ZONE_RE.fullmatch(zone)
        if m is None:
            return None
        row, col = int(m.group(1)), int(m.group(2))
        lat = (row + 0.5) * self.cell_km / _KM_PER_DEG_LAT
        km_per_deg_lon = _KM_PER_DEG_LAT * max(math.cos(math.radians(lat)), 1e-6)
        return lat, (col + 0.5) * self.cell_km / km_per_deg_lon
