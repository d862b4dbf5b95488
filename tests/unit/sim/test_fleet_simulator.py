"""Tests for :mod:`sim.fleet`: the vectorised fleet and the messages it emits."""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import orjson
import pytest

from contracts.telemetry import decode_message
from sim.demand import DemandProfile
from sim.fleet import FleetSimulator
from sim.fleet_params import FleetParams

# 2025-11-26 16:00 UTC (17:00 in Berlin): the evening peak, so trips start quickly.
EVENING_S = 1_764_172_800.0


def _run(
    sim: FleetSimulator, seconds: int, dt_s: float = 1.0, start_s: float = EVENING_S
) -> list[tuple[float, str, bytes]]:
    """All (now_s, topic, payload) the fleet emits over ``seconds``."""
    out: list[tuple[float, str, bytes]] = []
    for k in range(1, int(seconds / dt_s) + 1):
        now_s = start_s + k * dt_s
        out.extend((now_s, topic, payload) for topic, payload in sim.advance(dt_s, now_s))
    return out


@pytest.fixture(scope="module")
def busy_params() -> FleetParams:
    """60 vehicles with heavy demand: many trips, parks and messages in a few minutes."""
    return FleetParams(vehicles=60, seed=11, demand=DemandProfile(trips_per_vehicle_per_day=150.0))


def test_same_seed_same_messages(busy_params: FleetParams) -> None:
    """Two simulators with equal params emit byte-identical messages."""
    a = _run(FleetSimulator(busy_params), 300)
    b = _run(FleetSimulator(busy_params), 300)
    assert a and a == b


def test_other_seed_other_messages(busy_params: FleetParams) -> None:
    """A different seed gives a different fleet."""
    a = _run(FleetSimulator(busy_params), 120)
    b = _run(FleetSimulator(busy_params.replace(seed=12)), 120)
    assert a != b


def test_every_payload_passes_the_contract_and_seq_counts_per_battery(
    busy_params: FleetParams,
) -> None:
    """All payloads validate; each battery's seq starts at 0 and rises by 1 per message."""
    sim = FleetSimulator(busy_params)
    seqs: dict[str, list[int]] = defaultdict(list)
    n_samples = 0
    for now_s, topic, payload in _run(sim, 900):
        msg = decode_message(topic, payload, now_s)
        seqs[msg.battery_id].append(msg.seq)
        ts = [s.ts for s in msg.samples]
        assert ts == sorted(ts) and len(set(ts)) == len(ts)
        assert ts[-1] == now_s
        assert 1 <= len(msg.samples) <= busy_params.samples_per_message
        n_samples += len(msg.samples)
    assert len(seqs) == busy_params.vehicles
    for battery_seqs in seqs.values():
        assert battery_seqs == list(range(len(battery_seqs)))
    assert n_samples > 1000


def test_riders_report_every_interval_and_parked_twelve_times_less(
    busy_params: FleetParams,
) -> None:
    """Riding samples are report_interval_s apart; parked ones 12x that."""
    params = busy_params.replace(samples_per_message=1)
    gaps: dict[str, list[tuple[float, float, float]]] = defaultdict(list)
    last: dict[str, tuple[float, float]] = {}
    for _, _, payload in _run(FleetSimulator(params), 900):
        d = orjson.loads(payload)
        (s,) = d["samples"]
        if d["vehicle_id"] in last:
            prev_ts, prev_speed = last[d["vehicle_id"]]
            gaps[d["vehicle_id"]].append((s["ts"] - prev_ts, prev_speed, s["speed_kmh"]))
        last[d["vehicle_id"]] = (s["ts"], s["speed_kmh"])
    all_gaps = [g for v in gaps.values() for g in v]
    riding = [gap for gap, before, after in all_gaps if before > 0 and after > 0]
    assert riding and set(riding) == {5.0}
    parked = [gap for gap, before, after in all_gaps if before == 0 and after == 0]
    assert parked and max(parked) == 60.0


def test_riders_move_inside_the_area_and_odometers_grow(busy_params: FleetParams) -> None:
    """Riders move at scooter speeds, stay within radius_km and only add distance."""
    p = busy_params
    odometer: dict[str, float] = {}
    moved = 0
    for now_s, topic, payload in _run(FleetSimulator(p), 600):
        msg = decode_message(topic, payload, now_s)
        for s in msg.samples:
            dy = (s.lat - p.center_lat) * 110.574
            dx = (s.lon - p.center_lon) * 111.320 * math.cos(math.radians(p.center_lat))
            assert math.hypot(dx, dy) <= p.radius_km + 1e-3
            assert 0.0 <= s.speed_kmh <= p.max_speed_kmh
            prev = odometer.get(msg.vehicle_id, s.odometer_km)
            assert s.odometer_km >= prev
            moved += s.odometer_km > prev
            odometer[msg.vehicle_id] = s.odometer_km
    assert moved > 100


def test_riders_draw_current_and_parked_vehicles_idle(busy_params: FleetParams) -> None:
    """Riding currents are amps (with small regen dips); parked ones are ~0.05 A."""
    riding: list[float] = []
    parked: list[float] = []
    for now_s, topic, payload in _run(FleetSimulator(busy_params), 600):
        for s in decode_message(topic, payload, now_s).samples:
            (riding if s.speed_kmh > 0 else parked).append(s.current_a)
    assert 2.0 < float(np.mean(riding)) < 15.0
    assert max(riding) < 40.0
    assert abs(float(np.mean(parked)) - 0.05) < 0.02


def test_vehicles_below_min_trip_soc_take_no_trips() -> None:
    """A battery under min_trip_soc_pct keeps its vehicle parked, however high demand is."""
    params = FleetParams(
        vehicles=50,
        seed=1,
        initial_soc_min_pct=11.0,
        initial_soc_max_pct=14.0,
        demand=DemandProfile(trips_per_vehicle_per_day=200.0),
    )
    sim = FleetSimulator(params)
    _run(sim, 120)
    assert sim.riding_count == 0
    assert sim.swap_count == 0


def test_swap_changes_the_vehicle_battery_link() -> None:
    """A parked vehicle below swap_below_soc_pct gets a charged pool battery.

    The link moves (vehicle -> new battery, old battery -> pool), the swap is logged, the
    old battery's buffered samples leave under the old id, and later messages carry the
    new battery id with that battery's own seq from 0.
    """
    params = FleetParams(
        vehicles=20,
        seed=5,
        initial_soc_min_pct=5.0,
        initial_soc_max_pct=8.0,
        spare_fraction=0.0,
        min_spares=3,
    )
    sim = FleetSimulator(params)
    before = sim.links()
    assert before == {f"v-{k:05d}": f"b-{k:05d}" for k in range(20)}
    messages = _run(sim, 300)
    events = sim.drain_swap_events()
    assert len(events) == sim.swap_count == 3
    assert sim.drain_swap_events() == []
    after = sim.links()
    for e in events:
        assert before[e.vehicle_id] == e.removed_battery_id
        assert after[e.vehicle_id] == e.installed_battery_id
        assert sim.battery_of(e.vehicle_id) == e.installed_battery_id
        assert sim.vehicle_of(e.installed_battery_id) == e.vehicle_id
        assert sim.vehicle_of(e.removed_battery_id) is None
        installed = sim.battery_ids.index(e.installed_battery_id)
        assert sim.packs.soc_pct[installed] >= params.swapped_soc_min_pct - 0.1
    swapped = {e.vehicle_id: e for e in events}
    for now_s, topic, payload in messages:
        msg = decode_message(topic, payload, now_s)
        if msg.vehicle_id in swapped:
            e = swapped[msg.vehicle_id]
            if msg.samples[0].ts > e.time_s:
                assert msg.battery_id == e.installed_battery_id
            else:
                assert msg.battery_id == e.removed_battery_id
    new_battery_msgs = [
        decode_message(t, p, n) for n, t, p in messages if b'"battery_id":"b-0002' in p
    ]
    assert new_battery_msgs and [m.seq for m in new_battery_msgs][:1] == [0]


def test_swaps_happen_a_few_times_per_hour_in_a_normal_fleet() -> None:
    """With default params, 1000 vehicles see at least a few swaps per simulated hour."""
    sim = FleetSimulator(FleetParams(vehicles=1000, seed=2))
    _run(sim, 4 * 3600, dt_s=30.0, start_s=EVENING_S - 6 * 3600)
    assert sim.swap_count >= 8


def test_advance_rejects_a_clock_that_is_not_unix_seconds_or_goes_back() -> None:
    """advance() wants Unix seconds that increase; the errors quote what arrived."""
    sim = FleetSimulator(FleetParams(vehicles=5))
    with pytest.raises(ValueError, match=r"Expected now_s as Unix seconds in \(1e9, 1e10\), got 5"):
        sim.advance(1.0, 5.0)
    sim.advance(1.0, EVENING_S)
    with pytest.raises(ValueError, match="Expected now_s after the previous tick"):
        sim.advance(1.0, EVENING_S)
    with pytest.raises(ValueError, match=r"Expected dt_s > 0, got -1\.0"):
        sim.advance(-1.0, EVENING_S + 1)


def test_ids_and_lookups() -> None:
    """Vehicles and batteries get zero-padded ids; unknown ids raise KeyError."""
    sim = FleetSimulator(FleetParams(vehicles=3, min_spares=2, spare_fraction=0.0))
    assert sim.vehicle_ids == ("v-00000", "v-00001", "v-00002")
    assert sim.battery_ids == ("b-00000", "b-00001", "b-00002", "b-00003", "b-00004")
    assert sim.vehicle_of("b-00004") is None
    with pytest.raises(KeyError, match="Expected a vehicle id of this fleet, got 'v-9'"):
        sim.battery_of("v-9")
    with pytest.raises(KeyError, match="Expected a battery id of this fleet, got 'x'"):
        sim.vehicle_of("x")
