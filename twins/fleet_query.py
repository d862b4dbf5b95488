"""Fleet-wide reads over twin tables: filters, top-N and grouped aggregates.

Each shard answers a query over its own table with numpy; :func:`merge_top_n` and
:func:`merge_group_stats` combine the partial answers, so the planner, the dashboard
and the HTTP API read the fleet through one API whatever the number of shards.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from twins.battery_twin import health_bands
from twins.twin_table import TwinTable
from twins.zones import ZoneGrid

__all__ = [
    "CATEGORICAL_FIELDS",
    "NUMERIC_FIELDS",
    "AvailabilityParams",
    "AvailableVehicle",
    "Filter",
    "GroupStats",
    "RentableInputs",
    "TopNRow",
    "group_stats",
    "merge_group_stats",
    "merge_top_n",
    "merge_vehicles_near",
    "nearest_rentable",
    "top_n",
    "vehicles_near",
]

NUMERIC_FIELDS: tuple[str, ...] = (
    "soc_pct",
    "pack_voltage_v",
    "current_a",
    "temp_c",
    "speed_kmh",
    "odometer_km",
    "efc",
    "ah_discharged_ah",
    "ah_charged_ah",
    "time_hot_s",
    "max_temp_c",
    "capacity_est_ah",
    "soh_pct_est",
    "resistance_est_ohm",
    "cycles_completed",
    "samples_total",
    "last_ts",
    "staleness_s",
    "soh_model_pct",
    "health_score",
    "anomaly_flags",
    "anomaly_score",
    "rul70_p50_cycles",
    "rul80_p50_cycles",
    "priority",
    "lost_rides_6h",
)
CATEGORICAL_FIELDS: tuple[str, ...] = ("health_band", "zone", "vehicle_id", "charging")
_OPS = ("lt", "le", "gt", "ge", "eq", "ne")
Op = Literal["lt", "le", "gt", "ge", "eq", "ne"]


@dataclass(frozen=True)
class Filter:
    """``field op value``; numeric fields compare as floats, categorical ones as strings."""

    field: str
    op: Op
    value: float | str

    def __post_init__(self) -> None:
        if self.field not in NUMERIC_FIELDS and self.field not in CATEGORICAL_FIELDS:
            raise ValueError(
                f"Expected a field in {NUMERIC_FIELDS + CATEGORICAL_FIELDS}, got {self.field!r}."
            )
        if self.op not in _OPS:
            raise ValueError(f"Expected op in {_OPS}, got {self.op!r}.")
        if self.field in CATEGORICAL_FIELDS and self.op not in ("eq", "ne"):
            raise ValueError(f"Categorical field {self.field!r} takes eq or ne, got {self.op!r}.")

    @classmethod
    def parse(cls, text: str) -> Filter:
        """From ``field:op:value``, e.g. ``soc_pct:lt:20`` or ``health_band:eq:poor``."""
        parts = text.split(":", 2)
        if len(parts) != 3:
            raise ValueError(f"Expected a filter 'field:op:value', got {text!r}.")
        name, op, raw = parts
        value: float | str = raw
        if name in NUMERIC_FIELDS:
            try:
                value = float(raw)
            except ValueError:
                raise ValueError(f"Expected a number for {name!r}, got {raw!r}.") from None
        return cls(name, op, value)  # type: ignore[arg-type]


class _Columns:
    """Lazily computed columns of a table (only what a query touches is built)."""

    def __init__(self, table: TwinTable, zones: ZoneGrid, now_s: float) -> None:
        self.t = table
        self.zones = zones
        self.now_s = now_s
        self.n = len(table)
        self._cache: dict[str, npt.NDArray[Any]] = {}

    def __getitem__(self, name: str) -> npt.NDArray[Any]:
        if name not in self._cache:
            self._cache[name] = self._build(name)
        return self._cache[name]

    def _build(self, name: str) -> npt.NDArray[Any]:
        t, n = self.t, self.n
        if name in ("soc_pct", "pack_voltage_v", "current_a", "temp_c", "speed_kmh", "odometer_km"):
            return t.latest(name)
        if name == "soh_pct_est":
            return 100.0 * t.capacity_est_ah[:n] / t.rated_capacity_ah[:n]
        if name == "staleness_s":
            return self.now_s - t.last_ts[:n]
        if name == "health_band":
            soh = np.where(np.isfinite(t.soh_model_pct[:n]), t.soh_model_pct[:n], self["soh_pct_est"])
            return np.array(health_bands(soh), dtype=object)
        if name == "zone":
            return np.array(self.zones.zone_ids(t.last_lat[:n], t.last_lon[:n]), dtype=object)
        if name == "vehicle_id":
            return np.array(["" if v is None else v for v in t.vehicle_ids], dtype=object)
        if name == "charging":
            return np.where(t.charging[:n], "true", "false").astype(object)
        if name == "battery_id":
            return np.array(t.ids, dtype=object)
        arr: npt.NDArray[Any] = getattr(t, name)[:n].astype(np.float64)
        arr[~np.isfinite(arr)] = np.nan
        return arr


def _mask(cols: _Columns, filters: Sequence[Filter]) -> npt.NDArray[np.bool_]:
    m = np.ones(cols.n, dtype=bool)
    for f in filters:
        col = cols[f.field]
        if f.field in CATEGORICAL_FIELDS:
            eq = col == str(f.value)
            m &= eq if f.op == "eq" else ~eq
            continue
        v = float(f.value)
        with np.errstate(invalid="ignore"):
            m &= {
                "lt": col < v, "le": col <= v, "gt": col > v,
                "ge": col >= v, "eq": col == v, "ne": col != v,
            }[f.op]
    return m


@dataclass(frozen=True)
class TopNRow:
    battery_id: str
    value: float
    vehicle_id: str | None
    zone: str
    soc_pct: float | None
    health_band: str


def top_n(
    table: TwinTable,
    by: str,
    n: int,
    *,
    descending: bool = True,
    filters: Sequence[Filter] = (),
    zones: ZoneGrid = ZoneGrid(),
    now_s: float = 0.0,
) -> list[TopNRow]:
    """The ``n`` twins with the largest (or smallest) ``by``; NaN values never rank."""
    if by not in NUMERIC_FIELDS:
        raise ValueError(f"Expected a numeric field in {NUMERIC_FIELDS}, got {by!r}.")
    if n < 1:
        raise ValueError(f"Expected n >= 1, got {n}.")
    if len(table) == 0:
        return []
    cols = _Columns(table, zones, now_s)
    key = cols[by]
    idx = np.flatnonzero(_mask(cols, filters) & np.isfinite(key))
    if idx.size == 0:
        return []
    vals = key[idx] if not descending else -key[idx]
    k = min(n, idx.size)
    part = np.argpartition(vals, k - 1)[:k]
    chosen = idx[part[np.argsort(vals[part], kind="stable")]]
    zone_of = ZoneGrid.zone_ids(zones, table.last_lat[chosen], table.last_lon[chosen])
    soc = table.latest("soc_pct")[chosen]
    # The same band as everywhere else: the model's SOH when scored, else the twin's own estimate.
    est = 100.0 * table.capacity_est_ah[chosen] / table.rated_capacity_ah[chosen]
    bands = health_bands(np.where(np.isfinite(table.soh_model_pct[chosen]), table.soh_model_pct[chosen], est))
    return [
        TopNRow(
            battery_id=table.ids[i],
            value=float(key[i]),
            vehicle_id=table.vehicle_ids[i],
            zone=z,
            soc_pct=None if math.isnan(s) else float(s),
            health_band=b,
        )
        for i, z, s, b in zip(chosen.tolist(), zone_of, soc.tolist(), bands, strict=True)
    ]


def merge_top_n(parts: Iterable[Sequence[TopNRow]], n: int, *, descending: bool = True) -> list[TopNRow]:
    rows = [r for p in parts for r in p]
    rows.sort(key=lambda r: r.value, reverse=descending)
    return rows[:n]


@dataclass
class GroupStats:
    """Count, and per field the sum, min, max and number of non-NaN values."""

    count: int = 0
    sums: dict[str, float] = field(default_factory=dict)
    mins: dict[str, float] = field(default_factory=dict)
    maxs: dict[str, float] = field(default_factory=dict)
    ns: dict[str, int] = field(default_factory=dict)

    def merge(self, other: GroupStats) -> None:
        self.count += other.count
        for f, s in other.sums.items():
            self.sums[f] = self.sums.get(f, 0.0) + s
            self.ns[f] = self.ns.get(f, 0) + other.ns[f]
            self.mins[f] = min(self.mins.get(f, math.inf), other.mins[f])
            self.maxs[f] = max(self.maxs.get(f, -math.inf), other.maxs[f])

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"count": self.count}
        for f in self.sums:
            n = self.ns[f]
            out[f] = {
                "mean": self.sums[f] / n if n else None,
                "min": self.mins[f] if n else None,
                "max": self.maxs[f] if n else None,
                "n": n,
            }
        return out


def group_stats(
    table: TwinTable,
    group_by: str | None,
    fields: Sequence[str],
    *,
    filters: Sequence[Filter] = (),
    zones: ZoneGrid = ZoneGrid(),
    now_s: float = 0.0,
) -> dict[str, GroupStats]:
    """Per group (or ``"all"``): count and sum/min/max of ``fields`` over matching twins."""
    if group_by is not None and group_by not in CATEGORICAL_FIELDS:
        raise ValueError(f"Expected group_by in {CATEGORICAL_FIELDS}, got {group_by!r}.")
    for f in fields:
        if f not in NUMERIC_FIELDS:
            raise ValueError(f"Expected fields from {NUMERIC_FIELDS}, got {f!r}.")
    if len(table) == 0:
        return {}
    cols = _Columns(table, zones, now_s)
    m = _mask(cols, filters)
    if group_by is None:
        labels = np.zeros(int(m.sum()), dtype=np.int64)
        names = ["all"]
    else:
        uniq, labels = np.unique(cols[group_by][m].astype(str), return_inverse=True)
        names = [str(u) for u in uniq]
    k = len(names)
    out = {name: GroupStats(count=int(c)) for name, c in zip(names, np.bincount(labels, minlength=k), strict=True)}
    for f in fields:
        col = cols[f][m]
        ok = np.isfinite(col)
        sums = np.bincount(labels[ok], weights=col[ok], minlength=k)
        ns = np.bincount(labels[ok], minlength=k)
        mins = np.full(k, math.inf)
        maxs = np.full(k, -math.inf)
        np.minimum.at(mins, labels[ok], col[ok])
        np.maximum.at(maxs, labels[ok], col[ok])
        for j, name in enumerate(names):
            g = out[name]
            g.sums[f], g.ns[f] = float(sums[j]), int(ns[j])
            g.mins[f], g.maxs[f] = float(mins[j]), float(maxs[j])
    return out


def merge_group_stats(parts: Iterable[dict[str, GroupStats]]) -> dict[str, GroupStats]:
    out: dict[str, GroupStats] = {}
    for p in parts:
        for name, g in p.items():
            if name not in out:
                out[name] = GroupStats()
            out[name].merge(g)
    return out


# ---------------------------------------------------------------------- availability
_EARTH_RADIUS_M = 6_371_000.0


@dataclass(frozen=True)
class AvailabilityParams:
    """When a vehicle counts as rentable, and how far its battery takes a rider.

    Parameters
    ----------
    min_soc_pct
        Below this a vehicle is not offered (the operator's rentable threshold).
    max_staleness_s
        A vehicle not heard from for longer may have moved or died: not offered.
    wh_per_km
        Energy a ride takes per km, for the range estimate (a fleet constant: a typical
        shared e-scooter needs 12-20 Wh/km).
    reserve_pct
        Charge kept back from the range estimate (the vehicle locks before empty).
    """

    min_soc_pct: float = 15.0
    max_staleness_s: float = 900.0
    wh_per_km: float = 15.0
    reserve_pct: float = 5.0

    def __post_init__(self) -> None:
        if not (0 <= self.reserve_pct <= self.min_soc_pct <= 100):
            raise ValueError(
                f"Expected 0 <= reserve_pct <= min_soc_pct <= 100, got {self.reserve_pct} "
                f"and {self.min_soc_pct}."
            )
        if self.max_staleness_s <= 0 or self.wh_per_km <= 0:
            raise ValueError(
                f"Expected max_staleness_s > 0 and wh_per_km > 0, got {self.max_staleness_s} "
                f"and {self.wh_per_km}."
            )


@dataclass(frozen=True)
class AvailableVehicle:
    """A rentable vehicle as a customer sees it: where, how charged, how far it goes.

    No battery id, health or anomaly: customers see vehicles, not batteries.
    """

    vehicle_id: str
    lat: float
    lon: float
    distance_m: float
    soc_pct: float
    est_range_km: float


def _haversine_m(lat: float, lon: float, lats: npt.NDArray[np.float64], lons: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    p1, p2 = math.radians(lat), np.radians(lats)
    dphi = p2 - p1
    dlmb = np.radians(lons) - math.radians(lon)
    a = np.sin(dphi / 2) ** 2 + math.cos(p1) * np.cos(p2) * np.sin(dlmb / 2) ** 2
    out: npt.NDArray[np.float64] = 2 * _EARTH_RADIUS_M * np.arcsin(np.sqrt(np.minimum(a, 1.0)))
    return out


@dataclass(frozen=True, eq=False)
class RentableInputs:
    """What the availability query reads of each twin, as aligned columns.

    Built from a live :class:`TwinTable` (:meth:`of_table`) or from a replica's copy of
    every twin (:attr:`twins.twin_columns.TwinColumns.rentable`), so both answer with the
    same code. ``capacity_ah`` is the twin's capacity estimate, or its rated capacity
    where it has none yet.
    """

    vehicle_ids: Sequence[str | None]
    in_vehicle: npt.NDArray[np.bool_]
    lat: npt.NDArray[np.float64]
    lon: npt.NDArray[np.float64]
    last_ts: npt.NDArray[np.float64]
    soc_pct: npt.NDArray[np.float64]
    pack_voltage_v: npt.NDArray[np.float64]
    capacity_ah: npt.NDArray[np.float64]
    charging: npt.NDArray[np.bool_]
    anomaly_flags: npt.NDArray[np.int64]
    #: Set by :meth:`steady`: every row already passes the checks but the clock's for these.
    steady_for: AvailabilityParams | None = None

    @classmethod
    def of(
        cls,
        *,
        vehicle_ids: Sequence[str | None],
        lat: npt.NDArray[np.float64],
        lon: npt.NDArray[np.float64],
        last_ts: npt.NDArray[np.float64],
        soc_pct: npt.NDArray[np.float64],
        pack_voltage_v: npt.NDArray[np.float64],
        capacity_est_ah: npt.NDArray[np.float64],
        rated_capacity_ah: npt.NDArray[np.float64],
        charging: npt.NDArray[np.bool_],
        anomaly_flags: npt.NDArray[np.int64],
    ) -> RentableInputs:
        """From per-twin columns (all of one length)."""
        return cls(
            vehicle_ids=vehicle_ids,
            in_vehicle=np.array([v is not None for v in vehicle_ids], dtype=bool),
            lat=lat, lon=lon, last_ts=last_ts, soc_pct=soc_pct, pack_voltage_v=pack_voltage_v,
            capacity_ah=np.where(np.isfinite(capacity_est_ah), capacity_est_ah, rated_capacity_ah),
            charging=charging, anomaly_flags=anomaly_flags,
        )  # fmt: skip

    def select(
        self, rows: npt.NDArray[np.int64], steady_for: AvailabilityParams | None = None
    ) -> RentableInputs:
        """The inputs of these rows only, in this order."""
        ids = self.vehicle_ids
        return RentableInputs(
            steady_for=steady_for,
            vehicle_ids=[ids[i] for i in rows.tolist()], in_vehicle=self.in_vehicle[rows],
            lat=self.lat[rows], lon=self.lon[rows], last_ts=self.last_ts[rows],
            soc_pct=self.soc_pct[rows], pack_voltage_v=self.pack_voltage_v[rows],
            capacity_ah=self.capacity_ah[rows], charging=self.charging[rows],
            anomaly_flags=self.anomaly_flags[rows],
        )  # fmt: skip

    def steady(self, params: AvailabilityParams = AvailabilityParams()) -> RentableInputs:
        """Only the twins rentable but for staleness (in a vehicle, not charging, no flag,
        charged enough, with a position and a voltage): what a snapshot keeps, so a query
        checks the clock and distances on those alone, with the same answers."""
        return self.select(np.flatnonzero(self._steady_mask(params)), steady_for=params)

    def _steady_mask(self, params: AvailabilityParams) -> npt.NDArray[np.bool_]:
        with np.errstate(invalid="ignore"):
            out: npt.NDArray[np.bool_] = (
                self.in_vehicle
                & ~self.charging
                & (self.anomaly_flags == 0)
                & (self.soc_pct >= params.min_soc_pct)
                & np.isfinite(self.lat)
                & np.isfinite(self.lon)
                & np.isfinite(self.pack_voltage_v)
            )
        return out

    @classmethod
    def of_table(cls, table: TwinTable) -> RentableInputs:
        """The columns of every twin of ``table`` (views where the table has the array)."""
        n = len(table)
        return cls.of(
            vehicle_ids=table.vehicle_ids[:n], lat=table.last_lat[:n], lon=table.last_lon[:n],
            last_ts=table.last_ts[:n], soc_pct=table.latest("soc_pct"),
            pack_voltage_v=table.latest("pack_voltage_v"),
            capacity_est_ah=table.capacity_est_ah[:n], rated_capacity_ah=table.rated_capacity_ah[:n],
            charging=table.charging[:n], anomaly_flags=table.anomaly_flags[:n],
        )  # fmt: skip


def _within_box(
    lat: float, lon: float, radius_m: float, lats: npt.NDArray[np.float64], lons: npt.NDArray[np.float64]
) -> npt.NDArray[np.bool_]:
    """False only where a point is certainly farther than ``radius_m`` (so the great-circle
    distances are computed for the points near the query, not the whole fleet).

    A point within distance d has ``|dlat| <= d/R``. By the haversine formula
    ``sin²(d/2R) >= cos(lat1) cos(lat2) sin²(dlon/2) >= c² sin²(dlon/2)``, with ``c`` the
    smallest cosine of latitude in that band, so ``|dlon| <= 2 asin(sin(d/2R) / c)``. Near a
    pole, or where the box would cross the antimeridian, the longitude test is left out.
    """
    ang = radius_m / _EARTH_RADIUS_M
    lat0 = math.radians(lat)
    with np.errstate(invalid="ignore"):
        box = np.abs(lats - lat) <= math.degrees(ang) * (1 + 1e-9)
    c = min(math.cos(min(abs(lat0) + ang, math.pi / 2)), 1.0)
    s = math.sin(ang / 2) / c if c > 1e-6 else 2.0
    if s < 1.0:
        dlon = math.degrees(2 * math.asin(s)) * (1 + 1e-9)
        if -180.0 < lon - dlon and lon + dlon < 180.0:
            with np.errstate(invalid="ignore"):
                box &= np.abs(lons - lon) <= dlon
    return box


def _check_point(lat: float, lon: float, radius_m: float, limit: int) -> None:
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        raise ValueError(f"Expected lat in [-90, 90] and lon in [-180, 180], got {lat} and {lon}.")
    if not radius_m > 0 or limit < 1:
        raise ValueError(f"Expected radius_m > 0 and limit >= 1, got {radius_m} and {limit}.")


def nearest_rentable(
    cols: RentableInputs,
    lat: float,
    lon: float,
    radius_m: float,
    limit: int,
    *,
    now_s: float,
    params: AvailabilityParams = AvailabilityParams(),
) -> list[AvailableVehicle]:
    """Rentable vehicles among ``cols`` within ``radius_m`` of a point, nearest first.

    Rentable: in a vehicle, heard from within ``max_staleness_s`` of ``now_s``, not
    charging, no anomaly flag, and at least ``min_soc_pct`` charged. The range estimate is
    the charge above ``reserve_pct`` times the capacity (estimated, else rated) and the
    pack voltage, over ``wh_per_km``.
    """
    _check_point(lat, lon, radius_m, limit)
    if len(cols.in_vehicle) == 0:
        return []
    soc, volts, lats, lons = cols.soc_pct, cols.pack_voltage_v, cols.lat, cols.lon
    with np.errstate(invalid="ignore"):
        ok = (now_s - cols.last_ts <= params.max_staleness_s) & _within_box(lat, lon, radius_m, lats, lons)
    if cols.steady_for != params:
        ok &= cols._steady_mask(params)
    idx = np.flatnonzero(ok)
    if idx.size == 0:
        return []
    dist = _haversine_m(lat, lon, lats[idx], lons[idx])
    near = dist <= radius_m
    idx, dist = idx[near], dist[near]
    order = np.argsort(dist, kind="stable")[:limit]
    idx, dist = idx[order], dist[order]
    usable_pct = np.maximum(soc[idx] - params.reserve_pct, 0.0)
    range_km = usable_pct / 100.0 * cols.capacity_ah[idx] * volts[idx] / params.wh_per_km
    return [
        AvailableVehicle(
            vehicle_id=str(cols.vehicle_ids[i]),
            lat=float(lats[i]),
            lon=float(lons[i]),
            distance_m=round(float(d), 1),
            soc_pct=round(float(soc[i]), 1),
            est_range_km=round(float(r), 1),
        )
        for i, d, r in zip(idx.tolist(), dist.tolist(), range_km.tolist(), strict=True)
    ]


def vehicles_near(
    table: TwinTable,
    lat: float,
    lon: float,
    radius_m: float,
    limit: int,
    *,
    now_s: float,
    params: AvailabilityParams = AvailabilityParams(),
) -> list[AvailableVehicle]:
    """Rentable vehicles of this table within ``radius_m`` of a point, nearest first
    (:func:`nearest_rentable` over the table's twins)."""
    _check_point(lat, lon, radius_m, limit)
    if len(table) == 0:
        return []
    return nearest_rentable(
        RentableInputs.of_table(table), lat, lon, radius_m, limit, now_s=now_s, params=params
    )


def merge_vehicles_near(parts: Iterable[Sequence[AvailableVehicle]], limit: int) -> list[AvailableVehicle]:
    """The nearest ``limit`` of the shards' answers."""
    rows = [r for p in parts for r in p]
    rows.sort(key=lambda r: (r.distance_m, r.vehicle_id))
    return rows[:limit]
