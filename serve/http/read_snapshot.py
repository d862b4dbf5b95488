"""The read snapshot: every twin's latest state, held by each HTTP replica between refreshes.

A single-battery read, an availability query or the fleet map is answered from columns
this replica took from every shard a moment ago (:class:`twins.twin_columns.TwinColumns`,
one call per shard per refresh), not by calling a shard per request: a shard call is a
Ray actor round trip to a process that is busy applying telemetry, and reads served that
way peaked at 147 a second (BENCHMARKS.md, "HTTP reads"). Every answer states how old it
is: ``as_of_s`` (when the shards' state was taken) and ``staleness_s`` (how long before
the answer that was).

:class:`ReadSnapshots` holds the current :class:`ReadSnapshot` and refreshes it: every
``refresh_interval_s`` in the background (:meth:`ReadSnapshots.run`, started by the
runtime), or on the first read. Changes this replica itself made through the API (a swap
report moves batteries between vehicles) are read live until a snapshot taken after them
arrives (:meth:`ReadSnapshots.invalidate`), so a client reads its own writes.

No Ray here: the runtime passes the loader (:class:`runtime.api_deps.RayFleetReader`), the
unit tests an in-memory one.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import numpy as np
import orjson

from twins.fleet_query import (
    AvailabilityParams,
    AvailableVehicle,
    RentableInputs,
    nearest_rentable,
)
from twins.twin_columns import TwinColumns

__all__ = ["MAP_COLUMNS", "ReadSnapshot", "ReadSnapshots"]

log = logging.getLogger(__name__)

_DEFAULT_AVAILABILITY = AvailabilityParams()

#: The columns of ``GET /api/v1/fleet/map``, in answer order (after as_of_s, staleness_s, count).
MAP_COLUMNS: tuple[str, ...] = (
    "battery_id", "vehicle_id", "lat", "lon", "soc_pct", "health_score", "soh_pct", "temp_c",
    "health_band", "anomaly_flags", "charging",
)  # fmt: skip


def _rounded(values: np.ndarray, decimals: int) -> list[float | None]:
    """Values rounded for the map (NaN stays NaN: orjson writes it as null)."""
    out: list[float | None] = np.round(values.astype(np.float64), decimals).tolist()
    return out


class ReadSnapshot:
    """Every twin's state at one moment, indexed by battery id.

    Parameters
    ----------
    columns
        The twins of every shard (:meth:`TwinColumns.concat` of the shards' parts).
    """

    def __init__(self, columns: TwinColumns) -> None:
        self.columns = columns
        self.as_of_s = columns.as_of_s
        self._row = {b: i for i, b in enumerate(columns.battery_ids)}

    def __len__(self) -> int:
        return len(self.columns)

    def __contains__(self, battery_id: object) -> bool:
        return battery_id in self._row

    def staleness_s(self, now_s: float) -> float:
        """Seconds between the snapshot and ``now_s`` (never negative)."""
        return round(max(0.0, now_s - self.as_of_s), 3)

    def state(self, battery_id: str) -> dict[str, Any] | None:
        """One twin's state (the fields of :class:`twins.battery_twin.TwinSnapshot`), or
        ``None`` when the snapshot has no such battery."""
        row = self._row.get(battery_id)
        return None if row is None else self.columns.state_of(row, self.as_of_s)

    def battery_json(self, battery_id: str, now_s: float) -> bytes | None:
        """The body of ``GET /api/v1/batteries/{id}`` (state, ``as_of_s``, ``staleness_s``),
        or ``None`` when the snapshot has no such battery."""
        state = self.state(battery_id)
        if state is None:
            return None
        state["as_of_s"] = self.as_of_s
        state["staleness_s"] = self.staleness_s(now_s)
        return orjson.dumps(state)

    def availability_json(
        self,
        lat: float,
        lon: float,
        radius_m: float,
        limit: int,
        *,
        now_s: float,
        params: AvailabilityParams = _DEFAULT_AVAILABILITY,
    ) -> bytes:
        """The body of ``GET /api/v1/availability``: ``as_of_s``, ``staleness_s`` and the
        vehicles (the fields of :class:`twins.fleet_query.AvailableVehicle`, nothing else)."""
        rows = self.available(lat, lon, radius_m, limit, now_s=now_s, params=params)
        return orjson.dumps(
            {"as_of_s": self.as_of_s, "staleness_s": self.staleness_s(now_s), "vehicles": rows}
        )

    def available(
        self,
        lat: float,
        lon: float,
        radius_m: float,
        limit: int,
        *,
        now_s: float,
        params: AvailabilityParams = _DEFAULT_AVAILABILITY,
    ) -> list[AvailableVehicle]:
        """Rentable vehicles near a point (:func:`twins.fleet_query.nearest_rentable`)."""
        cols = self._steady if params == _DEFAULT_AVAILABILITY else self.columns.rentable
        return nearest_rentable(cols, lat, lon, radius_m, limit, now_s=now_s, params=params)

    @functools.cached_property
    def _steady(self) -> RentableInputs:
        """The twins that may be rentable (all but the clock checked), once per snapshot."""
        return self.columns.rentable.steady(_DEFAULT_AVAILABILITY)

    @functools.cached_property
    def _map_body(self) -> bytes:
        """The map's columns as a JSON object's members (no braces), built once."""
        c = self.columns
        cols: dict[str, Any] = {
            "battery_id": c.battery_ids,
            "vehicle_id": c.vehicle_ids,
            "lat": _rounded(c.last_lat, 6),
            "lon": _rounded(c.last_lon, 6),
            "soc_pct": _rounded(c.reading("soc_pct"), 1),
            "health_score": _rounded(c.health_score, 1),
            "soh_pct": _rounded(c.soh_pct, 1),
            "temp_c": _rounded(c.reading("temp_c"), 1),
            "health_band": c.health_band,
            "anomaly_flags": c.anomaly_names(),
            "charging": c.charging.tolist(),
        }
        return orjson.dumps({k: cols[k] for k in MAP_COLUMNS})[1:-1]

    def map_json(self, now_s: float) -> bytes:
        """The body of ``GET /api/v1/fleet/map``: one list per column, a row per twin."""
        head = orjson.dumps(
            {"as_of_s": self.as_of_s, "staleness_s": self.staleness_s(now_s), "count": len(self)}
        )
        body = self._map_body
        return head[:-1] + (b"," + body if body else b"") + b"}"


class ReadSnapshots:
    """The current :class:`ReadSnapshot` of this replica, and how it is kept fresh.

    Parameters
    ----------
    load
        Takes every twin's columns now (one call per shard, in production).
    refresh_interval_s
        Period of :meth:`run`; answers are about this old on average.
    clock
        Unix seconds (tests pass a fake).
    """

    def __init__(
        self,
        load: Callable[[], Awaitable[TwinColumns]],
        *,
        refresh_interval_s: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not refresh_interval_s > 0:
            raise ValueError(f"Expected refresh_interval_s > 0, got {refresh_interval_s}.")
        self._load = load
        self.refresh_interval_s = refresh_interval_s
        self.clock = clock
        self._current: ReadSnapshot | None = None
        self._refreshing: asyncio.Task[ReadSnapshot] | None = None
        self._written: dict[str, float] = {}
        self.refreshes = 0

    @property
    def current(self) -> ReadSnapshot | None:
        """The latest snapshot, ``None`` before the first refresh."""
        return self._current

    async def get(self) -> ReadSnapshot:
        """The latest snapshot; the first call waits for one.

        A snapshot older than three refresh periods (the background refresh is not running,
        or a shard is slow) is still answered, with its staleness, and a refresh starts.
        """
        snap = self._current
        if snap is None:
            return await self.refresh()
        if self.clock() - snap.as_of_s > 3 * self.refresh_interval_s and self._refreshing is None:
            self._refreshing = asyncio.get_running_loop().create_task(self._refresh())
        return snap

    async def refresh(self) -> ReadSnapshot:
        """Take a new snapshot now (joins a refresh already running)."""
        if self._refreshing is None:
            self._refreshing = asyncio.get_running_loop().create_task(self._refresh())
        return await asyncio.shield(self._refreshing)

    async def _refresh(self) -> ReadSnapshot:
        try:
            snap = ReadSnapshot(await self._load())
            self._current = snap
            self.refreshes += 1
            self._written = {b: t for b, t in self._written.items() if t >= snap.as_of_s}
            return snap
        finally:
            self._refreshing = None

    async def run(self) -> None:
        """Refresh every ``refresh_interval_s`` until cancelled; a failed refresh is logged
        and the previous snapshot stays (with its growing staleness)."""
        failing = False
        while True:
            started = self.clock()
            try:
                await self.refresh()
            except asyncio.CancelledError:
                raise
            except Exception:
                # The traceback once per outage, not once a second.
                log.warning("read snapshot refresh failed; answering from the previous one",
                            exc_info=not failing)
                failing = True
            else:
                if failing:
                    log.warning("read snapshot refresh works again")
                failing = False
            await asyncio.sleep(max(0.0, started + self.refresh_interval_s - self.clock()))

    async def aclose(self) -> None:
        """Cancel a refresh in flight (at shutdown)."""
        task = self._refreshing
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def invalidate(self, battery_ids: Iterable[str]) -> None:
        """These batteries just changed through this replica: read them live until a
        snapshot taken after now arrives."""
        now = self.clock()
        for b in battery_ids:
            self._written[b] = now

    def serves(self, snap: ReadSnapshot, battery_id: str) -> bool:
        """Whether ``snap`` may answer for ``battery_id`` (it has it, and it was taken
        after any change this replica made to it)."""
        written = self._written.get(battery_id)
        return battery_id in snap and (written is None or snap.as_of_s > written)
