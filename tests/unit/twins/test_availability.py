"""Tests for the availability query of :mod:`twins.fleet_query` over columns
(:class:`RentableInputs`, :func:`nearest_rentable`), which the shards and the read snapshot share."""

from __future__ import annotations

import math

import numpy as np
import pytest

from twins.clock import ManualClock
from twins.fleet_query import AvailabilityParams, RentableInputs, nearest_rentable, vehicles_near
from twins.twin_table import TwinTable, TwinTableParams

from .factories import T0_S, make_batch, message

NOW_S = 1000.0


def _distance_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance by the haversine formula, one pair at a time."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    a = math.sin((p2 - p1) / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(math.radians(lon2 - lon1) / 2) ** 2
    return 2 * 6_371_000.0 * math.asin(min(1.0, math.sqrt(a)))


def _fleet(n: int, lat: float, lon: float, spread_deg: float, seed: int = 0) -> RentableInputs:
    """``n`` vehicles around a point, a fifth of them not rentable for one reason or another."""
    rng = np.random.default_rng(seed)
    flags = np.where(rng.random(n) < 0.05, 2, 0).astype(np.int64)
    soc = rng.uniform(0, 100, n)
    return RentableInputs.of(
        vehicle_ids=[None if k % 17 == 0 else f"v{k:05d}" for k in range(n)],
        lat=np.clip(lat + rng.normal(0, spread_deg, n), -90, 90),
        lon=((lon + rng.normal(0, spread_deg, n) + 180.0) % 360.0) - 180.0,
        last_ts=np.where(rng.random(n) < 0.05, NOW_S - 5000.0, NOW_S - 10.0),
        soc_pct=soc,
        pack_voltage_v=np.where(rng.random(n) < 0.02, np.nan, 48.0),
        capacity_est_ah=np.where(rng.random(n) < 0.5, np.nan, rng.uniform(10, 15, n)),
        rated_capacity_ah=np.full(n, 15.0),
        charging=rng.random(n) < 0.05,
        anomaly_flags=flags,
    )


def _brute_force(cols: RentableInputs, lat: float, lon: float, radius_m: float, limit: int) -> list[str]:
    """The definition, row by row: rentable, within the radius, nearest first."""
    p = AvailabilityParams()
    d = [_distance_m(lat, lon, a, o) for a, o in zip(cols.lat.tolist(), cols.lon.tolist(), strict=True)]
    rows = [
        k for k in range(len(cols.in_vehicle))
        if cols.vehicle_ids[k] is not None and NOW_S - cols.last_ts[k] <= p.max_staleness_s
        and not cols.charging[k] and cols.anomaly_flags[k] == 0 and cols.soc_pct[k] >= p.min_soc_pct
        and math.isfinite(cols.pack_voltage_v[k]) and d[k] <= radius_m
    ]  # fmt: skip
    rows.sort(key=lambda k: d[k])  # stable: ties keep row order
    return [str(cols.vehicle_ids[k]) for k in rows[:limit]]


@pytest.mark.parametrize(
    ("lat", "lon", "spread_deg"),
    [(52.52, 13.40, 0.05), (-33.9, 151.2, 0.05), (89.95, 0.0, 0.05), (0.0, 179.99, 0.02), (0.0, -179.99, 0.02)],
    ids=["berlin", "sydney", "near the pole", "antimeridian east", "antimeridian west"],
)
def test_the_query_answers_the_definition(lat: float, lon: float, spread_deg: float) -> None:
    """Over random fleets and points (a pole and the antimeridian included), the answer is
    the brute-force one, whether from all twins or from the steady subset a snapshot keeps."""
    cols = _fleet(3000, lat, lon, spread_deg)
    steady = cols.steady()
    assert steady.steady_for == AvailabilityParams() and len(steady.in_vehicle) < len(cols.in_vehicle)
    rng = np.random.default_rng(1)
    for _ in range(60):
        qlat = float(np.clip(lat + rng.normal(0, spread_deg), -90, 90))
        qlon = float(((lon + rng.normal(0, spread_deg) + 180.0) % 360.0) - 180.0)
        radius, limit = float(rng.uniform(50, 8000)), int(rng.integers(1, 80))
        want = _brute_force(cols, qlat, qlon, radius, limit)
        for c in (cols, steady):
            got = nearest_rentable(c, qlat, qlon, radius, limit, now_s=NOW_S)
            assert [v.vehicle_id for v in got] == want


def test_range_is_usable_charge_times_energy_over_consumption() -> None:
    """est_range_km = (SoC - reserve) x capacity (estimate, else rated) x volts / Wh per km,
    and the answer rounds distance, charge and range to 0.1."""
    cols = RentableInputs.of(
        vehicle_ids=["a", "b"], lat=np.array([52.52, 52.52]), lon=np.array([13.40, 13.401]),
        last_ts=np.full(2, NOW_S), soc_pct=np.array([55.0, 80.0]), pack_voltage_v=np.full(2, 48.0),
        capacity_est_ah=np.array([12.0, np.nan]), rated_capacity_ah=np.full(2, 15.0),
        charging=np.zeros(2, bool), anomaly_flags=np.zeros(2, np.int64),
    )  # fmt: skip
    p = AvailabilityParams(wh_per_km=16.0, reserve_pct=5.0)
    a, b = nearest_rentable(cols, 52.52, 13.40, 500, 5, now_s=NOW_S, params=p)
    assert (a.vehicle_id, a.distance_m, a.soc_pct) == ("a", 0.0, 55.0)
    assert a.est_range_km == round(0.50 * 12.0 * 48.0 / 16.0, 1)
    assert b.est_range_km == round(0.75 * 15.0 * 48.0 / 16.0, 1) and b.distance_m == pytest.approx(67.7, abs=0.2)
    assert nearest_rentable(cols, 52.52, 13.40, 500, 5, now_s=NOW_S + 901, params=p) == []


def test_other_params_than_the_steady_ones_recheck_everything() -> None:
    """A subset kept for the default params still answers right for stricter ones."""
    cols = _fleet(500, 52.52, 13.40, 0.01)
    strict = AvailabilityParams(min_soc_pct=60.0)
    got = nearest_rentable(cols.steady(), 52.52, 13.40, 3000, 500, now_s=NOW_S, params=strict)
    assert got and all(v.soc_pct >= 60.0 for v in got)
    assert got == nearest_rentable(cols, 52.52, 13.40, 3000, 500, now_s=NOW_S, params=strict)


def test_a_table_answers_as_its_columns(clock: ManualClock) -> None:
    """vehicles_near over a table is nearest_rentable over RentableInputs.of_table."""
    t = TwinTable(TwinTableParams(window_samples=8), clock)
    t.apply(make_batch(
        message("b1", 0, [T0_S], soc_pct=70.0, vehicle_id="v1", lat=52.5201),
        message("b2", 0, [T0_S], soc_pct=10.0, vehicle_id="v2"),
        message("b3", 0, [T0_S], soc_pct=90.0, vehicle_id="v3", lat=52.5210),
    ))  # fmt: skip
    got = vehicles_near(t, 52.52, 13.40, 1000, 10, now_s=T0_S + 1)
    assert [v.vehicle_id for v in got] == ["v1", "v3"]
    assert got == nearest_rentable(RentableInputs.of_table(t), 52.52, 13.40, 1000, 10, now_s=T0_S + 1)
    assert vehicles_near(TwinTable(TwinTableParams(), clock), 52.52, 13.40, 10, 1, now_s=T0_S) == []


@pytest.mark.parametrize(("lat", "lon", "radius_m", "limit"), [(91, 0, 10, 1), (0, 181, 10, 1), (0, 0, 0, 1), (0, 0, 10, 0)])
def test_bad_queries_are_refused(lat: float, lon: float, radius_m: float, limit: int) -> None:
    with pytest.raises(ValueError, match="Expected"):
        nearest_rentable(_fleet(10, 0, 0, 0.01), lat, lon, radius_m, limit, now_s=NOW_S)
