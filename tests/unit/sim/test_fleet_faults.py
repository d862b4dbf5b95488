"""Tests for live fault injection in :class:`sim.fleet.FleetSimulator`: batteries that
develop a thermal runaway or a weak cell while the fleet runs, and keep it until swapped out."""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

import orjson
import pytest

from sim.faults import FaultKind
from sim.fleet import FleetSimulator
from sim.fleet_params import FleetParams

# 2025-11-26 16:00 UTC (17:00 in Berlin): the evening peak, so vehicles ride.
EVENING_S = 1_764_172_800.0

Sample = dict[str, Any]


def _samples(sim: FleetSimulator, seconds: float, dt_s: float = 5.0, start_s: float = EVENING_S) -> dict[str, list[Sample]]:
    """Battery id -> its samples (each with the vehicle as ``vehicle``), over ``seconds``."""
    out: dict[str, list[Sample]] = defaultdict(list)
    for k in range(1, int(seconds / dt_s) + 1):
        for _, payload in sim.advance(dt_s, start_s + k * dt_s):
            msg = orjson.loads(payload)
            out[msg["battery_id"]].extend({**s, "vehicle": msg["vehicle_id"]} for s in msg["samples"])
    return out


RUNAWAYS = FleetParams(vehicles=40, seed=3, initial_faults=3, fault_kinds=(FaultKind.THERMAL_RUNAWAY,))


def test_initial_runaways_report_80_c_within_20_minutes_and_no_other_battery_does() -> None:
    """A fleet with initial_faults=3 has three faulty batteries, onsets in the first 600 s;
    within 20 simulated minutes each reports 80 C or more, no other battery gets near the
    60 C alert, and a vehicle in a runaway stands still from its onset on."""
    sim = FleetSimulator(RUNAWAYS)
    assert len(sim.faults()) == 3
    assert all(0.0 <= f.onset_ts_s < 600.0 for f in sim.faults().values())  # from the start
    samples = _samples(sim, 20 * 60)
    faults = sim.faults()  # now in Unix seconds
    hottest = {b: max(s["temp_c"] for s in ss) for b, ss in samples.items()}
    assert {b for b, t in hottest.items() if t >= 80.0} == set(faults)
    assert max(t for b, t in hottest.items() if b not in faults) < 45.0
    for battery_id, fault in faults.items():
        assert fault.kind is FaultKind.THERMAL_RUNAWAY
        assert EVENING_S <= fault.onset_ts_s < EVENING_S + 600.0
        after = [s for s in samples[battery_id] if s["ts"] >= fault.onset_ts_s]
        assert after and all(s["speed_kmh"] == 0.0 for s in after)
        assert max(s["temp_c"] for s in after) <= 95.0  # levelled off, inside the contract


def test_initial_faults_take_the_kinds_in_turn_and_a_weak_cell_opens_the_spread() -> None:
    """With the default kinds the three initial faults are runaway, weak cell, runaway; the
    weak cell's spread (cell_max - cell_min) grows past 0.3 V within half an hour while its
    pack stays cool."""
    sim = FleetSimulator(RUNAWAYS.replace(fault_kinds=(FaultKind.THERMAL_RUNAWAY, FaultKind.WEAK_CELL)))
    kinds = Counter(f.kind for f in sim.faults().values())
    assert kinds == {FaultKind.THERMAL_RUNAWAY: 2, FaultKind.WEAK_CELL: 1}
    samples = _samples(sim, 30 * 60)
    (weak,) = [b for b, f in sim.faults().items() if f.kind is FaultKind.WEAK_CELL]
    spread = [s["cell_max_v"] - s["cell_min_v"] for s in samples[weak]]
    assert spread[0] < 0.2 and max(spread) > 0.3
    assert max(s["temp_c"] for s in samples[weak]) < 45.0
    others = [s["cell_max_v"] - s["cell_min_v"] for b, ss in samples.items() if b not in sim.faults() for s in ss]
    assert max(others) < 0.3


def test_same_seed_same_faults() -> None:
    """Equal params give the same faults and the same messages; another seed other faults."""
    a, b = FleetSimulator(RUNAWAYS), FleetSimulator(RUNAWAYS)
    assert a.faults() == b.faults()
    assert _samples(a, 900) == _samples(b, 900)
    assert a.faults() == b.faults()
    assert FleetSimulator(RUNAWAYS.replace(seed=4)).faults() != FleetSimulator(RUNAWAYS).faults()


def test_faults_develop_as_a_poisson_process_at_the_rate() -> None:
    """At 12 faults per vehicle and day, 200 vehicles develop about 100 in an hour (Poisson:
    sd 10), each on a distinct battery in a vehicle, of both default kinds; a fleet at rate 0
    develops none."""
    params = FleetParams(
        vehicles=200, seed=1, initial_soc_min_pct=60.0, fault_rate_per_vehicle_day=12.0,
        fault_response_s=86_400.0,
    )  # fmt: skip
    sim = FleetSimulator(params)
    assert sim.faults() == {}
    _samples(sim, 3600, dt_s=10.0)
    faults = sim.faults()
    assert 70 <= len(faults) <= 130
    assert all(sim.vehicle_of(b) is not None for b in faults)
    assert all(EVENING_S < f.onset_ts_s <= EVENING_S + 3600 for f in faults.values())
    assert {f.kind for f in faults.values()} == {FaultKind.THERMAL_RUNAWAY, FaultKind.WEAK_CELL}
    quiet = FleetSimulator(params.replace(fault_rate_per_vehicle_day=0.0))
    _samples(quiet, 3600, dt_s=10.0)
    assert quiet.faults() == {}


def test_the_field_team_swaps_a_faulty_battery_out_and_the_fault_goes_with_it() -> None:
    """fault_response_s after the onset the parked vehicle gets a charged spare: the swap is
    logged, the fault leaves with the battery (repaired in the depot), the vehicle reports
    normal temperatures under its new battery and may be rented again."""
    params = RUNAWAYS.replace(vehicles=10, initial_faults=1, initial_fault_window_s=60.0, fault_response_s=300.0)
    sim = FleetSimulator(params)
    ((battery_id, _),) = sim.faults().items()
    vehicle_id = sim.vehicle_of(battery_id)
    assert vehicle_id is not None
    samples = _samples(sim, 20 * 60)
    events = [e for e in sim.drain_swap_events() if e.vehicle_id == vehicle_id]
    assert len(events) == 1 and events[0].removed_battery_id == battery_id
    swap = events[0]
    assert swap.time_s - EVENING_S <= 60.0 + 300.0 + 5.0
    assert sim.faults() == {} and sim.vehicle_of(battery_id) is None
    assert sim.battery_of(vehicle_id) == swap.installed_battery_id
    later = [s for s in samples[swap.installed_battery_id] if s["vehicle"] == vehicle_id]
    assert later and max(s["temp_c"] for s in later) < 45.0
    assert max(s["temp_c"] for s in samples[battery_id]) >= 45.0  # it was heating up before


def test_standing_still_holds_a_fault_where_it_was() -> None:
    """A fleet that stood still for an hour did not let its faults progress: the onsets
    move with the clock, so a fault is as far along after the gap as before it."""
    sim = FleetSimulator(RUNAWAYS)
    _samples(sim, 300)
    before = sim.faults()
    sim.stand_still_until(EVENING_S + 300 + 3600)
    after = sim.faults()
    assert {b: f.onset_ts_s + 3600 for b, f in before.items()} == {b: f.onset_ts_s for b, f in after.items()}


@pytest.mark.parametrize("kind", list(FaultKind))
def test_every_fault_kind_runs_live_within_the_contract(kind: FaultKind) -> None:
    """Each kind can be injected live; the messages still pass the contract (checked by
    decoding them all), and the faulty battery's readings differ from the same fleet's
    without it from the onset on."""
    from contracts.telemetry import decode_batch

    params = RUNAWAYS.replace(initial_faults=2, fault_kinds=(kind,))
    sim = FleetSimulator(params)
    for k in range(1, 1 + 20 * 60 // 5):
        now_s = EVENING_S + 5 * k
        messages = sim.advance(5.0, now_s)
        if messages:
            _, _, rejected = decode_batch(messages, now_s)
            assert rejected == []
    assert len(sim.faults()) == 2
