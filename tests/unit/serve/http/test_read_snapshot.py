"""Tests for :mod:`serve.http.read_snapshot`: the snapshot's answers and how it stays fresh."""

from __future__ import annotations

import asyncio
import logging

import orjson
import pytest

from serve.http.batteries import BatteryRead
from serve.http.fleet import FleetMap
from serve.http.read_snapshot import MAP_COLUMNS, ReadSnapshot
from serve.http.vehicles import AvailabilityResponse
from twins.battery_twin import BatteryTwin
from twins.twin_columns import TwinColumns

from ...twins.factories import T0_S, make_batch, message
from .fake_snapshot import FakeClock, snapshots_over
from .fakes import NOW_S, FakeFleet


@pytest.fixture
def fleet() -> FakeFleet:
    """The three-twin fake fleet (bat-a low, bat-b hot, bat-c full), bat-c charging and
    bat-b scored with a flag."""
    f = FakeFleet()
    t = f.table
    b, c = t.index["bat-b"], t.index["bat-c"]
    t.health_score[b], t.soh_model_pct[b], t.anomaly_flags[b] = 61.25, 78.0, 2
    t.charging[c] = True
    return f


def test_a_battery_reads_as_its_twin_at_the_snapshot(fleet: FakeFleet) -> None:
    """battery_json answers the twin's state as of the snapshot, with as_of_s and
    staleness_s, valid as a BatteryRead; an unknown battery is None."""
    snap = ReadSnapshot(TwinColumns.from_table(fleet.table, fleet.zones, NOW_S))
    body = orjson.loads(snap.battery_json("bat-b", NOW_S + 2.5) or b"")
    BatteryRead.model_validate(body)
    twin = BatteryTwin(fleet.table, fleet.table.index["bat-b"], fleet.zones).snapshot().to_dict()
    assert {k: body[k] for k in twin} == {k: v for k, v in orjson.loads(orjson.dumps(twin)).items()}
    assert body["as_of_s"] == NOW_S and body["staleness_s"] == 2.5
    assert body["anomaly_flags"] == ["temp_rise"] and body["health_band"] == "poor"
    assert snap.battery_json("nobody", NOW_S) is None and "nobody" not in snap and len(snap) == 3
    assert snap.staleness_s(NOW_S - 5) == 0.0  # a clock behind the shards': never negative


def test_the_map_is_one_list_per_column(fleet: FakeFleet) -> None:
    """map_json has as_of_s, staleness_s, count and the MAP_COLUMNS, each as long as count,
    rounded, with null for what a twin does not know; valid as a FleetMap."""
    snap = ReadSnapshot(TwinColumns.from_table(fleet.table, fleet.zones, NOW_S))
    body = orjson.loads(snap.map_json(NOW_S + 1.0))
    FleetMap.model_validate(body)
    assert list(body) == ["as_of_s", "staleness_s", "count", *MAP_COLUMNS]
    assert body["count"] == 3 and all(len(body[c]) == 3 for c in MAP_COLUMNS)
    assert body["battery_id"] == ["bat-a", "bat-b", "bat-c"]
    assert body["vehicle_id"] == ["veh-a", "veh-b", "veh-c"]
    assert body["soc_pct"] == [11.0, 60.0, 95.0] and body["temp_c"] == [25.0, 50.0, 25.0]
    assert body["health_score"] == [None, 61.2, None]  # 61.25 to 1 decimal, half to even
    assert body["soh_pct"] == [None, 78.0, None]
    assert body["health_band"] == ["unknown", "poor", "unknown"]
    assert body["anomaly_flags"] == [[], ["temp_rise"], []]
    assert body["charging"] == [False, False, True]
    assert body["lat"] == [52.52] * 3 and body["staleness_s"] == 1.0


def test_an_empty_fleet_has_an_empty_map() -> None:
    fleet = FakeFleet()
    fleet.table = type(fleet.table)(fleet.table.params, fleet.table.clock)
    body = orjson.loads(ReadSnapshot(TwinColumns.from_table(fleet.table, fleet.zones, NOW_S)).map_json(NOW_S))
    assert body["count"] == 0 and body["battery_id"] == [] and FleetMap.model_validate(body)


def test_availability_answers_vehicles_only(fleet: FakeFleet) -> None:
    """availability_json: nearest rentable vehicles (bat-b flagged and bat-c charging are
    not, bat-a is too low: nothing), then with the flag cleared veh-b; only vehicle fields."""
    snap = ReadSnapshot(TwinColumns.from_table(fleet.table, fleet.zones, NOW_S))
    assert orjson.loads(snap.availability_json(52.52, 13.40, 500, 5, now_s=NOW_S))["vehicles"] == []
    fleet.table.anomaly_flags[fleet.table.index["bat-b"]] = 0
    snap = ReadSnapshot(TwinColumns.from_table(fleet.table, fleet.zones, NOW_S))
    body = orjson.loads(snap.availability_json(52.52, 13.40, 500, 5, now_s=NOW_S + 3))
    AvailabilityResponse.model_validate(body)
    assert body["staleness_s"] == 3.0 and [v["vehicle_id"] for v in body["vehicles"]] == ["veh-b"]
    assert set(body["vehicles"][0]) == {"vehicle_id", "lat", "lon", "distance_m", "soc_pct", "est_range_km"}


# ---------------------------------------------------------------------- freshness
async def test_the_first_read_loads_once_for_everyone(fleet: FakeFleet) -> None:
    """Concurrent first reads share one load; later reads within the period load nothing."""
    clock = FakeClock()
    reads, loader = snapshots_over(fleet, clock)
    assert reads.current is None
    got = await asyncio.gather(*(reads.get() for _ in range(5)))
    assert loader.calls == 1 and all(s is got[0] for s in got) and reads.current is got[0]
    clock.advance(2.0)
    assert await reads.get() is got[0] and loader.calls == 1


async def test_a_snapshot_three_periods_old_is_answered_and_refreshed(fleet: FakeFleet) -> None:
    """With no background refresh running, a snapshot older than three periods is still
    answered (its staleness says so) while one refresh starts behind it."""
    clock = FakeClock()
    reads, loader = snapshots_over(fleet, clock)
    first = await reads.get()
    clock.advance(3.5)
    assert await reads.get() is first and await reads.get() is first
    await asyncio.sleep(0)
    assert loader.calls == 2
    assert (await reads.get()).as_of_s == NOW_S + 3.5


async def test_the_background_refresh_takes_new_state(fleet: FakeFleet) -> None:
    """run() refreshes every period: a twin's new sample shows in a later snapshot."""
    clock = FakeClock()
    reads, loader = snapshots_over(fleet, clock, refresh_interval_s=0.001)
    task = asyncio.create_task(reads.run())
    try:
        await asyncio.wait_for(loader.called.wait(), 5)
        fleet.table.apply(make_batch(message("bat-a", 1, [T0_S + 30.0], soc_pct=10.5, vehicle_id="veh-a")))
        calls = loader.calls
        while loader.calls < calls + 2:
            await asyncio.sleep(0.001)
        state = (await reads.get()).state("bat-a")
        assert state is not None and state["soc_pct"] == 10.5 and state["samples_total"] == 3
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    await reads.aclose()


async def test_a_failed_refresh_keeps_the_last_snapshot(
    fleet: FakeFleet, caplog: pytest.LogCaptureFixture
) -> None:
    """A refresh that raises is logged; the previous snapshot keeps answering (older); the
    first load failing fails the read."""
    clock = FakeClock()
    reads, loader = snapshots_over(fleet, clock, refresh_interval_s=0.001)
    loader.fail = RuntimeError("shard gone")
    with pytest.raises(RuntimeError, match="shard gone"):
        await reads.get()
    loader.fail = None
    first = await reads.get()
    loader.fail = RuntimeError("shard gone")
    loader.called.clear()
    with caplog.at_level(logging.WARNING, logger="serve.http.read_snapshot"):
        task = asyncio.create_task(reads.run())
        await asyncio.wait_for(loader.called.wait(), 5)
        await asyncio.sleep(0.01)
        task.cancel()
    assert reads.current is first
    assert "refresh failed" in caplog.text


async def test_own_writes_are_read_live_until_a_later_snapshot(fleet: FakeFleet) -> None:
    """After invalidate(b), a snapshot taken before it does not serve b (other batteries
    still), and one taken after does."""
    clock = FakeClock()
    reads, _ = snapshots_over(fleet, clock)
    old = await reads.get()
    clock.advance(0.5)
    reads.invalidate(["bat-a"])
    assert not reads.serves(old, "bat-a") and reads.serves(old, "bat-b")
    assert not reads.serves(old, "nobody")
    clock.advance(0.5)
    new = await reads.refresh()
    assert reads.serves(new, "bat-a")


def test_the_refresh_period_must_be_positive(fleet: FakeFleet) -> None:
    with pytest.raises(ValueError, match="refresh_interval_s > 0"):
        snapshots_over(fleet, FakeClock(), refresh_interval_s=0)
