"""Travel matrices between lat/lon points: a pluggable source, with two implementations.

:class:`HaversineTravel` needs nothing but coordinates: great-circle distance stretched
by a detour factor (streets are not straight), at a constant speed. :class:`OsrmTravel`
asks an OSRM server for road distances and durations, for users who run one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import httpx
import numpy as np
import numpy.typing as npt

from planners.errors import ProblemError, TravelMatrixError

__all__ = ["HaversineTravel", "OsrmTravel", "TravelMatrices", "TravelMatrixSource"]

_EARTH_RADIUS_M = 6_371_008.8  # mean radius (IUGG)
#: Cells per block of :meth:`HaversineTravel.matrices` (about 8 MB per float temporary).
_BLOCK_CELLS = 1 << 20


@dataclass(frozen=True, eq=False)
class TravelMatrices:
    """Integer travel matrices between the same points, ready for a ``RoutingProblem``.

    Parameters
    ----------
    distance_m
        ``distance_m[i, j]``: metres from point ``i`` to point ``j``.
    duration_s
        ``duration_s[i, j]``: seconds from point ``i`` to point ``j``.
    """

    distance_m: npt.NDArray[np.int64]
    duration_s: npt.NDArray[np.int64]

    @classmethod
    def frozen(cls, distance_m: npt.NDArray[np.int64], duration_s: npt.NDArray[np.int64]) -> TravelMatrices:
        """Matrices made read-only, so a :class:`~planners.problem.RoutingProblem` can take
        them without a copy."""
        distance_m.flags.writeable = False
        duration_s.flags.writeable = False
        return cls(distance_m=distance_m, duration_s=duration_s)


@runtime_checkable
class TravelMatrixSource(Protocol):
    """Anything that turns points into travel matrices."""

    def matrices(self, points_deg: npt.ArrayLike) -> TravelMatrices:
        """Travel matrices between ``points_deg``, an ``(n, 2)`` array of (lat, lon) degrees."""
        ...


def _points(points_deg: npt.ArrayLike) -> npt.NDArray[np.float64]:
    points = np.asarray(points_deg, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 2 or len(points) == 0:
        raise ProblemError(f"Expected an (n, 2) array of (lat, lon) degrees, got shape {points.shape}.")
    lat, lon = points[:, 0], points[:, 1]
    if not (np.isfinite(points).all() and (np.abs(lat) <= 90).all() and (np.abs(lon) <= 180).all()):
        raise ProblemError("Expected latitudes in [-90, 90] and longitudes in [-180, 180], got others.")
    return points


@dataclass(frozen=True)
class HaversineTravel:
    """Great-circle distance times a detour factor, driven at a constant speed.

    Parameters
    ----------
    detour_factor
        Road distance over straight-line distance; about 1.3 in European cities.
    speed_kmh
        Average door-to-door speed of a technician's vehicle in town.
    """

    detour_factor: float = 1.3
    speed_kmh: float = 25.0

    def __post_init__(self) -> None:
        if not self.detour_factor >= 1.0:
            raise ProblemError(f"Expected detour_factor >= 1, got {self.detour_factor}.")
        if not self.speed_kmh > 0:
            raise ProblemError(f"Expected speed_kmh > 0, got {self.speed_kmh}.")

    def matrices(self, points_deg: npt.ArrayLike) -> TravelMatrices:
        """Travel matrices between ``points_deg``, an ``(n, 2)`` array of (lat, lon) degrees.

        Vectorised over blocks of rows, so the float temporaries stay a few MB whatever
        ``n``: the two int64 matrices (16 n² bytes, 1.6 GB at 10,000 points) are all the
        memory it keeps.
        """
        lat, lon = np.radians(_points(points_deg)).T
        n = len(lat)
        distance = np.empty((n, n), dtype=np.int64)
        duration = np.empty((n, n), dtype=np.int64)
        cos_lat = np.cos(lat)
        speed_ms = self.speed_kmh / 3.6
        rows = max(1, _BLOCK_CELLS // n)
        for a in range(0, n, rows):
            b = min(n, a + rows)
            dlat = lat[a:b, None] - lat[None, :]
            dlon = lon[a:b, None] - lon[None, :]
            h = np.sin(dlat / 2) ** 2 + cos_lat[a:b, None] * cos_lat[None, :] * np.sin(dlon / 2) ** 2
            # clip: rounding can push h a hair above 1 for antipodal points.
            metres = 2 * _EARTH_RADIUS_M * np.arcsin(np.sqrt(np.clip(h, 0.0, 1.0))) * self.detour_factor
            distance[a:b] = np.rint(metres)
            duration[a:b] = np.rint(metres / speed_ms)
        return TravelMatrices.frozen(distance, duration)


@dataclass(frozen=True)
class OsrmTravel:
    """Road distances and durations from an OSRM server's ``table`` service.

    Parameters
    ----------
    base_url
        Server root, e.g. ``"http://localhost:5000"`` (from the environment, not code).
    profile
        OSRM profile in the URL, ``/table/v1/{profile}/...``.
    timeout_s
        Timeout of each HTTP request.
    max_table_size
        The server's ``--max-table-size`` (OSRM's default is 100): the most coordinates one
        request may carry. More points are asked for in blocks: each request carries one
        block of sources and one of destinations, half the limit each.

    Notes
    -----
    n points take about ``(2 n / max_table_size)²`` requests, over one connection: at
    10,000 points a server started with ``--max-table-size 10000`` answers in one request,
    one left at 100 needs 40,000.
    """

    base_url: str
    profile: str = "driving"
    timeout_s: float = 10.0
    max_table_size: int = 100

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise ProblemError(f"Expected an http(s) base_url, got {self.base_url!r}.")
        if not self.timeout_s > 0:
            raise ProblemError(f"Expected timeout_s > 0, got {self.timeout_s}.")
        if self.max_table_size < 2:
            raise ProblemError(f"Expected max_table_size >= 2, got {self.max_table_size}.")

    def matrices(self, points_deg: npt.ArrayLike) -> TravelMatrices:
        """Travel matrices between ``points_deg``, an ``(n, 2)`` array of (lat, lon) degrees.

        Raises
        ------
        TravelMatrixError
            If the server is unreachable, answers with an error, or cannot route between
            some pair of points.
        """
        points = _points(points_deg)
        n = len(points)
        distance = np.empty((n, n), dtype=np.int64)
        duration = np.empty((n, n), dtype=np.int64)
        with httpx.Client(timeout=self.timeout_s) as client:
            if n <= self.max_table_size:
                distance[:], duration[:] = self._table(client, points, np.arange(n), np.arange(n))
            else:
                block = self.max_table_size // 2
                starts = range(0, n, block)
                for a in starts:
                    for b in starts:
                        rows, cols = np.arange(a, min(n, a + block)), np.arange(b, min(n, b + block))
                        distance[rows[:, None], cols], duration[rows[:, None], cols] = self._table(
                            client, points, rows, cols
                        )
        return TravelMatrices.frozen(distance, duration)

    def _table(
        self, client: httpx.Client, points: npt.NDArray[np.float64],
        rows: npt.NDArray[np.int64], cols: npt.NDArray[np.int64],
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:  # fmt: skip
        """One ``table`` request: metres and seconds from ``points[rows]`` to ``points[cols]``."""
        same = rows.shape == cols.shape and bool((rows == cols).all())
        ask = rows if same else np.concatenate([rows, cols])
        # OSRM wants lon,lat.
        coords = ";".join(f"{lon:.6f},{lat:.6f}" for lat, lon in points[ask])
        url = f"{self.base_url.rstrip('/')}/table/v1/{self.profile}/{coords}"
        params = {"annotations": "duration,distance"}
        if not same:
            params["sources"] = ";".join(str(i) for i in range(len(rows)))
            params["destinations"] = ";".join(str(len(rows) + i) for i in range(len(cols)))
        try:
            response = client.get(url, params=params)
            body = response.json()
        except (httpx.HTTPError, ValueError) as err:
            raise TravelMatrixError(f"OSRM table request to {self.base_url} failed: {err}") from err
        if response.status_code != 200 or body.get("code") != "Ok":
            raise TravelMatrixError(
                f"Expected OSRM code 'Ok', got HTTP {response.status_code} "
                f"{body.get('code')!r}: {body.get('message', '')}"
            )
        out = []
        for key in ("distances", "durations"):
            table = body.get(key)
            if table is None:
                raise TravelMatrixError(f"Expected {key!r} in the OSRM answer, got keys {sorted(body)}.")
            # None (JSON null) marks a pair OSRM cannot route; it becomes nan here.
            array = np.array(table, dtype=np.float64)
            if array.shape != (len(rows), len(cols)):
                raise TravelMatrixError(f"Expected {key} of shape {(len(rows), len(cols))}, got {array.shape}.")
            if np.isnan(array).any():
                i, j = np.argwhere(np.isnan(array))[0]
                raise TravelMatrixError(f"OSRM cannot route from point {rows[i]} to point {cols[j]}.")
            out.append(np.rint(array).astype(np.int64))
        return out[0], out[1]
