"""Tests for :mod:`bms.sim_swaps`: the simulated field team's swaps recorded in the twins,
with the twins' links injected (no Ray)."""

from __future__ import annotations

import asyncio

import pytest

from alerts.book import AlertBook
from bms.sim_swaps import swap_recorder
from contracts.alerts import AlertState
from contracts.telemetry import decode_batch
from sim.fleet import FleetSimulator, SwapEvent
from twins.alert_rules import TwinAlertRules
from twins.twin_table import TwinTable, TwinTableParams

from .twins.factories import SWAPPY_FLEET

EVENING_S = 1_764_172_800.0


class _Links:
    """Records set_vehicle calls; fails for the batteries in ``fail``."""

    def __init__(self, fail: frozenset[str] = frozenset()) -> None:
        self.calls: list[tuple[str, str | None]] = []
        self.fail = fail

    async def set_vehicle(self, battery_id: str, vehicle_id: str | None) -> None:
        await asyncio.sleep(0)
        if battery_id in self.fail:
            raise ConnectionError(f"shard of {battery_id} unreachable")
        self.calls.append((battery_id, vehicle_id))


class _TableLinks:
    """A twin table's links, set as a shard's ``set_vehicle`` sets them."""

    def __init__(self, table: TwinTable) -> None:
        self.table = table

    async def set_vehicle(self, battery_id: str, vehicle_id: str | None) -> None:
        slot, _ = self.table.ensure(battery_id)
        self.table.vehicle_ids[slot] = vehicle_id


_EVENTS = [SwapEvent(EVENING_S, "v-00001", "b-00001", "b-00031"), SwapEvent(EVENING_S, "v-00007", "b-00007", "b-00032")]


async def test_each_swap_unlinks_the_removed_battery_and_links_the_installed_one() -> None:
    """Per swap: the removed battery goes in no vehicle, the installed one in the vehicle."""
    links = _Links()
    await swap_recorder(links, settle_s=0.0)(_EVENTS)
    assert links.calls == [
        ("b-00001", None), ("b-00031", "v-00001"), ("b-00007", None), ("b-00032", "v-00007"),
    ]  # fmt: skip


async def test_a_failed_link_does_not_stop_the_others_and_is_reported_with_counts() -> None:
    """One unreachable shard: the other changes are still made, then the error says how
    many of how many failed and names the first failure."""
    links = _Links(fail=frozenset({"b-00031"}))
    with pytest.raises(RuntimeError, match=r"record 4 battery-vehicle links for 2 swap\(s\), 1 failed.*b-00031"):
        await swap_recorder(links, settle_s=0.0)(_EVENTS)
    assert links.calls == [("b-00001", None), ("b-00007", None), ("b-00032", "v-00007")]


async def test_the_recorder_waits_before_recording_and_not_for_nothing() -> None:
    """Swaps are recorded settle_s after the call (the removed battery's last samples get to
    the twins first); a tick without swaps returns at once."""
    links = _Links()
    record = swap_recorder(links, settle_s=0.05)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await record([])
    assert loop.time() - t0 < 0.04 and links.calls == []
    await record(_EVENTS[:1])
    assert loop.time() - t0 >= 0.05 and len(links.calls) == 2
    with pytest.raises(ValueError, match="Expected settle_s >= 0, got -1"):
        swap_recorder(links, settle_s=-1.0)


async def _run_into_twins(record: bool, hours: float, dt_s: float = 10.0) -> tuple[TwinTable, FleetSimulator, int, set[str]]:
    """A swappy fleet into a twin table, each tick's swaps recorded after its messages (as
    run_fleet does) or not at all; the twins' alert rules feed an alert book every tick.
    The table, the fleet, the rejected messages and the keys of the alerts that fired."""
    table = TwinTable(TwinTableParams())
    rules, book = TwinAlertRules("shard-0"), AlertBook()
    sim = FleetSimulator(SWAPPY_FLEET, seq_start=1_764_000_000)
    recorder = swap_recorder(_TableLinks(table), settle_s=0.0)
    rejected, fired = 0, set()
    for k in range(1, int(hours * 3600 / dt_s) + 1):
        now_s = EVENING_S + k * dt_s
        raws = sim.advance(dt_s, now_s)
        if raws:
            batch, _, bad = decode_batch(raws, now_s)
            assert not bad
            rejected += len(table.apply(batch).rejected)
        events = sim.drain_swap_events()
        if record:
            await recorder(events)
        changes = book.observe("shard-0", rules.evaluate(table, now_s).signals, now_s) + book.evaluate(now_s)
        fired |= {t.alert_key for t in changes if t.to_state is AlertState.FIRING}
    return table, sim, rejected, fired


async def test_recorded_swaps_raise_no_battery_silent_alert() -> None:
    """Four hours of a fleet that swaps often: with the swaps recorded, every twin's vehicle
    is the one the battery is really in (pool batteries in none), the twins refuse nothing,
    and no battery_silent alert fires. Without them (the control), batteries taken out
    still sit in their old vehicles for the twins and each raises one."""
    table, sim, rejected, fired = await _run_into_twins(record=True, hours=4.0)
    assert sim.swap_count >= 5 and rejected == 0
    for battery_id in sim.battery_ids:
        if battery_id in table.index:
            assert table.vehicle_ids[table.slot(battery_id)] == sim.vehicle_of(battery_id)
    assert fired == set()

    _, sim, _, fired = await _run_into_twins(record=False, hours=4.0)
    assert len([k for k in fired if k.startswith("battery_silent:")]) >= 3
