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
        """Travel matrices between ``points_deg``, an ``(n, 2)`` array of (lat, lon) degrees."""
        lat, lon = np.radians(_points(points_deg)).T
        dlat = lat[:, None] - lat[None, :]
        dlon = lon[:, None] - lon[None, :]
        h = np.sin(dlat / 2) ** 2 + np.cos(lat[:, None]) * np.cos(lat[None, :]) * np.sin(dlon / 2) ** 2
        # clip: rounding can push h a hair above 1 for antipodal points.
        metres = 2 * _EARTH_RADIUS_M * np.arcsin(np.sqrt(np.clip(h, 0.0, 1.0))) * self.detour_factor
        seconds = metres / (self.speed_kmh / 3.6)
        return TravelMatrices(
            distance_m=np.rint(metres).astype(np.int64),
            duration_s=np.rint(seconds).astype(np.int64),
        )


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
        Timeout of the HTTP request.

    Notes
    -----
    One GET request carries all points, so the URL grows with ``n``; OSRM's default
    ``--max-table-size`` is 100 points.
    """

    base_url: str
    profile: str = "driving"
    timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise ProblemError(f"Expected an http(s) base_url, got {self.base_url!r}.")
        if not self.timeout_s > 0:
            raise ProblemError(f"Expected timeout_s > 0, got {self.timeout_s}.")

    def matrices(self, points_deg: npt.ArrayLike) -> TravelMatrices:
        """Travel matrices between ``points_deg``, an ``(n, 2)`` array of (lat, lon) degrees.

        Raises
        ------
        TravelMatrixError
            If the server is unreachable, answers with an error, or cannot route between
            some pair of points.
        """
        points = _points(points_deg)
        # OSRM wants lon,lat.
        coords = ";".join(f"{lon:.6f},{lat:.6f}" for lat, lon in points)
        url = f"{self.base_url.rstrip('/')}/table/v1/{self.profile}/{coords}"
        try:
            response = httpx.get(
                url, params={"annotations": "duration,distance"}, timeout=self.timeout_s
            )
            body = response.json()
        except (httpx.HTTPError, ValueError) as err:
            raise TravelMatrixError(f"OSRM table request to {self.base_url} failed: {err}") from err
        if response.status_code != 200 or body.get("code") != "Ok":
            raise TravelMatrixError(
                f"Expected OSRM code 'Ok', got HTTP {response.status_code} "
                f"{body.get('code')!r}: {body.get('message', '')}"
            )
        n = len(points)
        out = []
        for key in ("distances", "durations"):
            table = body.get(key)
            if table is None:
                raise TravelMatrixError(f"Expected {key!r} in the OSRM answer, got keys {sorted(body)}.")
            # None (JSON null) marks a pair OSRM cannot route; it becomes nan here.
            array = np.array(table, dtype=np.float64)
            if array.shape != (n, n):
                raise TravelMatrixError(f"Expected {key} of shape {(n, n)}, got {array.shape}.")
            if np.isnan(array).any():
                i, j = np.argwhere(np.isnan(array))[0]
                raise TravelMatrixError(f"OSRM cannot route from point {i} to point {j}.")
            out.append(np.rint(array).astype(np.int64))
        return TravelMatrices(distance_m=out[0], duration_s=out[1])
