"""The routes answered from the read snapshot: one battery, availability and the fleet map.

The app gets a :class:`ReadSnapshots` over the fake fleet on a fake clock
(:mod:`.fake_snapshot`), so each test decides what the snapshot holds and how old it is,
and changes the live twins behind it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from contracts.access import Role
from contracts.work_orders import SwapRecord, WorkOrderState
from serve.http import create_api
from serve.http.batteries import BatteryRead
from serve.http.fleet import FleetMap
from serve.http.read_snapshot import ReadSnapshots
from serve.http.vehicles import AvailabilityResponse

from ...twins.factories import T0_S, make_batch, message
from .conftest import Fakes, bearer
from .fake_snapshot import ColumnsLoader, FakeClock, snapshots_over
from .fakes import NOW_S


@dataclasses.dataclass
class Reads:
    """The snapshot behind the app, its loader and clock."""

    reads: ReadSnapshots
    loader: ColumnsLoader
    clock: FakeClock


@pytest.fixture
def reads(fakes: Fakes) -> Reads:
    clock = FakeClock(NOW_S)
    snapshots, loader = snapshots_over(fakes.fleet, clock)
    return Reads(snapshots, loader, clock)


def _client(fakes: Fakes, reads: Reads, role: Role) -> TestClient:
    token = fakes.stores.tokens_.issue(role, f"{role.value}-1")
    deps = dataclasses.replace(fakes.deps(), reads=reads.reads)
    return TestClient(create_api(deps), headers=bearer(token))


@pytest.fixture
def manager(fakes: Fakes, reads: Reads) -> Iterator[TestClient]:
    with _client(fakes, reads, Role.FLEET_MANAGER) as c:
        yield c


# ---------------------------------------------------------------------- one battery
def test_a_battery_is_answered_from_the_snapshot_with_its_age(
    fakes: Fakes, reads: Reads, manager: TestClient
) -> None:
    """The first read takes the snapshot; a sample applied after it does not show until the
    next refresh, and every answer says as of when and how stale it is."""
    first = manager.get("/api/v1/batteries/bat-a")
    assert first.status_code == 200 and first.headers["content-type"] == "application/json"
    body = BatteryRead.model_validate(first.json())
    assert body.soc_pct == pytest.approx(11.0) and body.as_of_s == NOW_S and body.staleness_s == 0.0
    fakes.fleet.table.apply(make_batch(message("bat-a", 1, [T0_S + 30.0], soc_pct=10.5, vehicle_id="veh-a")))
    reads.clock.advance(0.75)
    again = manager.get("/api/v1/batteries/bat-a").json()
    assert again["soc_pct"] == pytest.approx(11.0) and again["staleness_s"] == 0.75
    assert reads.loader.calls == 1
    reads.clock.advance(3.0)  # three periods: the next read starts a refresh
    manager.get("/api/v1/batteries/bat-a")
    fresh = manager.get("/api/v1/batteries/bat-a").json()
    assert fresh["soc_pct"] == pytest.approx(10.5) and fresh["samples_total"] == 3
    assert fresh["as_of_s"] == NOW_S + 3.75


def test_a_battery_newer_than_the_snapshot_is_read_live(
    fakes: Fakes, reads: Reads, manager: TestClient
) -> None:
    """A twin created after the snapshot is read from its shard (as of now, staleness 0);
    one no shard has is a 404 naming it; a malformed id a 422."""
    manager.get("/api/v1/batteries/bat-a")
    fakes.fleet.table.apply(make_batch(message("bat-new", 0, [T0_S], vehicle_id="veh-n")))
    reads.clock.advance(0.5)
    r = manager.get("/api/v1/batteries/bat-new")
    assert r.status_code == 200, r.text
    body = BatteryRead.model_validate(r.json())
    assert body.vehicle_id == "veh-n" and body.as_of_s == NOW_S + 0.5 and body.staleness_s == 0.0
    r = manager.get("/api/v1/batteries/nobody-here")
    assert r.status_code == 404 and "nobody-here" in r.json()["detail"]
    assert manager.get("/api/v1/batteries/bad id!").status_code == 422


def test_score_ages_and_staleness_are_answered_from_the_snapshot_and_live(
    fakes: Fakes, reads: Reads, manager: TestClient
) -> None:
    """A twin whose priority model has not scored it for 45 s (over 3 ticks of 10 s) reads
    stale, with each model's age measured at as_of_s (a later answer from the same snapshot
    keeps them, and says its staleness); a twin read live answers the same fields."""
    t = fakes.fleet.table
    b = t.index["bat-b"]
    t.health_scored_at_s[b] = t.anomaly_scored_at_s[b] = NOW_S - 2.0
    t.priority_scored_at_s[b] = t.scored_at_s[b] = NOW_S - 45.0
    body = manager.get("/api/v1/batteries/bat-b").json()
    BatteryRead.model_validate(body)
    assert body["score_age_s"] == {"health": 2.0, "anomaly": 2.0, "degradation": None, "priority": 45.0}
    assert body["scores_stale"] is True and body["scored_at_s"] == NOW_S - 45.0
    never = manager.get("/api/v1/batteries/bat-a").json()
    assert never["scores_stale"] is False and set(never["score_age_s"].values()) == {None}
    reads.clock.advance(0.5)
    again = manager.get("/api/v1/batteries/bat-b").json()
    assert again["score_age_s"] == body["score_age_s"] and again["staleness_s"] == 0.5
    t.apply(make_batch(message("bat-new", 0, [T0_S], vehicle_id="veh-n")))
    t.health_scored_at_s[t.index["bat-new"]] = NOW_S - 10.0
    live = manager.get("/api/v1/batteries/bat-new").json()
    BatteryRead.model_validate(live)
    assert live["staleness_s"] == 0.0 and live["scores_stale"] is False
    assert live["score_age_s"] == {"health": 10.0, "anomaly": None, "degradation": None, "priority": None}


def test_a_swap_reported_here_is_read_at_once(fakes: Fakes, reads: Reads) -> None:
    """A technician's done swap moves the batteries between vehicles; this replica reads
    both live until a snapshot taken after the swap (it reads its own writes)."""
    clock = reads.clock
    fakes.planner.orders[1] = dataclasses.replace(fakes.planner.orders[1], state=WorkOrderState.EN_ROUTE)

    async def report_and_move(*args: object, **kwargs: object) -> object:
        swap = kwargs.get("swap") or args[4]
        assert isinstance(swap, SwapRecord)
        out = await original(*args, **kwargs)  # type: ignore[operator]
        t = fakes.fleet.table
        t.vehicle_ids[t.index[swap.battery_out_id]] = None
        t.vehicle_ids[t.index[swap.battery_in_id]] = swap.vehicle_id
        reads.reads.invalidate([swap.battery_out_id, swap.battery_in_id])  # as the runtime does
        return out

    original = fakes.planner.report
    fakes.planner.report = report_and_move  # type: ignore[method-assign]
    with _client(fakes, reads, Role.FLEET_MANAGER) as manager:
        assert manager.get("/api/v1/batteries/bat-c").json()["vehicle_id"] == "veh-c"
        clock.advance(0.2)
        swap = {"vehicle_id": "veh-a", "battery_out_id": "bat-a", "battery_in_id": "bat-c"}
        r = manager.post("/api/v1/work-orders/1/transition", json={"state": "done", "swap": swap})
        assert r.status_code == 200, r.text
        out, into = manager.get("/api/v1/batteries/bat-a").json(), manager.get("/api/v1/batteries/bat-c").json()
        assert out["vehicle_id"] is None and into["vehicle_id"] == "veh-a" and into["staleness_s"] == 0.0
        assert manager.get("/api/v1/batteries/bat-b").json()["as_of_s"] == NOW_S  # others: snapshot


# ---------------------------------------------------------------------- availability
def test_availability_comes_from_the_snapshot(fakes: Fakes, reads: Reads) -> None:
    """Rentable vehicles with the snapshot's age; a vehicle that became rentable after the
    snapshot shows only after the next refresh."""
    path = "/api/v1/availability"
    t = fakes.fleet.table
    t.charging[t.index["bat-c"]] = True
    with _client(fakes, reads, Role.CUSTOMER) as rider:
        first = rider.get(path, params={"lat": 52.52, "lon": 13.40})
        assert first.status_code == 200, first.text
        body = AvailabilityResponse.model_validate(first.json())
        assert [v.vehicle_id for v in body.vehicles] == ["veh-b"] and body.as_of_s == NOW_S
        t.charging[t.index["bat-c"]] = False
        reads.clock.advance(0.5)
        later = rider.get(path, params={"lat": 52.52, "lon": 13.40}).json()
        assert [v["vehicle_id"] for v in later["vehicles"]] == ["veh-b"] and later["staleness_s"] == 0.5
        assert reads.loader.calls == 1
        assert rider.get(path, params={"lat": 52.52, "lon": 13.40, "radius_m": 0}).status_code == 422


# ---------------------------------------------------------------------- the map
@pytest.mark.parametrize("role", [Role.FLEET_MANAGER, Role.OPS])
def test_the_map_has_every_twin_in_columns(fakes: Fakes, reads: Reads, role: Role) -> None:
    """Fleet managers and ops get every twin, one list per column, valid as a FleetMap."""
    with _client(fakes, reads, role) as c:
        r = c.get("/api/v1/fleet/map")
    assert r.status_code == 200, r.text
    body = FleetMap.model_validate(r.json())
    assert body.count == 3 and body.battery_id == ["bat-a", "bat-b", "bat-c"]
    assert body.soc_pct == [11.0, 60.0, 95.0] and body.temp_c[1] == 50.0
    assert body.as_of_s == NOW_S and body.staleness_s == 0.0


@pytest.mark.parametrize("role", [Role.CUSTOMER, Role.TECHNICIAN])
def test_the_map_is_not_for_riders_or_technicians(fakes: Fakes, reads: Reads, role: Role) -> None:
    with _client(fakes, reads, role) as c:
        r = c.get("/api/v1/fleet/map")
    assert r.status_code == 403 and "bat-a" not in r.text


def test_the_map_schema_names_the_dashboards_columns(fakes: Fakes, reads: Reads) -> None:
    """The OpenAPI document declares the map's response with the columns the dashboard draws."""
    with _client(fakes, reads, Role.OPS) as c:
        doc = c.get("/openapi.json").json()
    ref = doc["paths"]["/api/v1/fleet/map"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    props = doc["components"]["schemas"][ref.rsplit("/", 1)[1]]["properties"]
    assert list(props) == [
        "as_of_s", "staleness_s", "count", "battery_id", "vehicle_id", "lat", "lon", "soc_pct",
        "health_score", "soh_pct", "temp_c", "health_band", "anomaly_flags", "charging",
    ]  # fmt: skip
