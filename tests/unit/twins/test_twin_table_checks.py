"""Tests for the checks of :meth:`twins.twin_table.TwinTable.apply` against forged telemetry.

The attack of the security issue: one message for a battery, on another vehicle's topic,
with a ``seq`` far ahead of the genuine stream and 80 °C / 3 % SoC. Before the checks it
moved the twin to the forging vehicle, applied the values, and made every later genuine
message a "duplicate". Here each check (battery claim, ``seq`` range with re-sync, physical
plausibility) is tested on its own, with the allowed cases next to the refused ones, and a
simulated fleet with battery swaps must raise none of them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from contracts.telemetry import RejectReason
from sim.fleet import FleetSimulator
from sim.fleet_params import FleetParams
from twins.clock import ManualClock
from twins.twin_table import ApplyResult, TwinTable, TwinTableParams

from .factories import SWAPPY_FLEET, T0_S, feed_fleet, make_batch, message

BID = "b-00500"
HOME, OTHER = "v-00500", "v-00480"
SEQ0 = 1_800_000_000  # a stream started by ``bms run`` (seq seeded with the Unix time)


def _send(
    table: TwinTable, seq: int, t_rel_s: npt.ArrayLike, vehicle_id: str = HOME, **columns: Any
) -> ApplyResult:
    """Apply one message of ``BID`` with samples at ``T0_S + t_rel_s`` (SoC 60 % unless
    given: below the genuine stream's, so a message is never refused for a SoC rise by chance)."""
    ts = T0_S + np.atleast_1d(np.asarray(t_rel_s, dtype=np.float64))
    columns.setdefault("soc_pct", 60.0)
    return table.apply(make_batch(message(BID, seq, ts, vehicle_id=vehicle_id, **columns)))


def _genuine(table: TwinTable, n: int = 5) -> None:
    """``n`` genuine messages from HOME, one a minute from T0, SoC falling 70 → 70 - n."""
    for k in range(n):
        res = _send(table, SEQ0 + k, 60.0 * k, soc_pct=70.0 - k, temp_c=25.0)
        assert not res.rejected and res.applied_samples == 1


def _reasons(res: ApplyResult) -> list[str]:
    return [r.reason.value for r in res.rejected]


def _last_soc(table: TwinTable) -> float:
    return float(table.latest("soc_pct")[table.slot(BID)])


@pytest.fixture
def table(clock: ManualClock) -> TwinTable:
    """An empty table with the default checks."""
    return TwinTable(TwinTableParams(), clock)


# ---------------------------------------------------------------------------- params
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_seq_jump": 0}, "max_seq_jump >= 1"),
        ({"resync_messages": 0}, "resync_messages >= 1"),
        ({"claim_after_silence_s": -1.0}, "claim_after_silence_s >= 0"),
        ({"max_speed_mps": float("nan")}, "max_speed_mps >= 0, got nan"),
        ({"max_soc_rise_pct_per_s": -0.1}, "max_soc_rise_pct_per_s >= 0"),
    ],
)
def test_params_refuse_out_of_range_check_knobs(kwargs: dict[str, float], match: str) -> None:
    """The check knobs are validated like the others, naming the knob and the bad value."""
    with pytest.raises(ValueError, match=match):
        TwinTableParams(**kwargs)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- the issue's attack
def test_the_forged_message_of_the_issue_changes_nothing(table: TwinTable) -> None:
    """Other vehicle's topic, seq +1e8, 80 °C, 3 % SoC: refused as a claim conflict; the twin
    keeps its vehicle, values, seq mark and last_ts, and the genuine stream goes on."""
    _genuine(table)
    s = table.slot(BID)
    before = (table.vehicle_ids[s], int(table.last_seq[s]), float(table.last_ts[s]), _last_soc(table))
    res = _send(table, SEQ0 + 100_000_000, 300.0, vehicle_id=OTHER, temp_c=80.0, soc_pct=3.0)
    assert _reasons(res) == ["battery_claim_conflict"]
    assert (res.applied_samples, res.accepted_samples, res.duplicate_messages) == (0, 0, 0)
    assert res.accepted_messages.size == 0 and res.vehicle_changes == []
    detail = res.rejected[0].detail
    assert HOME in detail and OTHER in detail and "1800 s of silence" in detail
    assert (table.vehicle_ids[s], int(table.last_seq[s]), float(table.last_ts[s]), _last_soc(table)) == before
    assert table.max_temp_c[s] == 25.0
    # The next genuine messages are applied.
    for k in range(5, 8):
        res = _send(table, SEQ0 + k, 60.0 * k, soc_pct=70.0 - k)
        assert not res.rejected and res.applied_samples == 1
    assert _last_soc(table) == 63.0


def test_a_refused_message_does_not_use_up_its_seq(table: TwinTable) -> None:
    """A forged message with the genuine stream's next seq is refused without marking that
    seq seen: the genuine message with it is applied, not dropped as a replay."""
    _genuine(table)
    assert _reasons(_send(table, SEQ0 + 5, 300.0, vehicle_id=OTHER)) == ["battery_claim_conflict"]
    res = _send(table, SEQ0 + 5, 300.0, soc_pct=64.0)
    assert res.duplicate_messages == 0 and res.applied_samples == 1


def test_rejected_messages_are_reported_by_batch_index(table: TwinTable) -> None:
    """In one batch [genuine, forged, genuine], the forged one is rejected at index 1 and
    the genuine ones around it are accepted (each judged after the one before)."""
    _genuine(table)
    batch = make_batch(
        message(BID, SEQ0 + 5, [T0_S + 300.0], vehicle_id=HOME, soc_pct=65.0),
        message(BID, SEQ0 + 6, [T0_S + 310.0], vehicle_id=OTHER, soc_pct=3.0),
        message(BID, SEQ0 + 6, [T0_S + 360.0], vehicle_id=HOME, soc_pct=64.0),
    )
    res = table.apply(batch)
    assert [(r.index, r.reason) for r in res.rejected] == [(1, RejectReason.BATTERY_CLAIM_CONFLICT)]
    np.testing.assert_array_equal(res.accepted_messages, [0, 2])
    assert res.applied_samples == 2 and _last_soc(table) == 64.0


# ---------------------------------------------------------------------------- battery claims
@pytest.mark.parametrize(("silence_s", "claimed"), [(1799.0, False), (1800.0, True), (7200.0, True)])
def test_another_vehicle_claims_the_battery_only_after_silence(
    table: TwinTable, silence_s: float, claimed: bool
) -> None:
    """A battery silent for claim_after_silence_s (1800 s, on sample time) counts as taken out
    and parked: another vehicle may then take it; sooner it is a claim conflict."""
    _genuine(table, n=1)
    res = _send(table, SEQ0 + 1, silence_s, vehicle_id=OTHER, soc_pct=69.0)
    if claimed:
        assert not res.rejected and res.vehicle_changes == [(BID, HOME, OTHER)]
        assert table.vehicle_ids[table.slot(BID)] == OTHER
    else:
        assert _reasons(res) == ["battery_claim_conflict"]
        assert table.vehicle_ids[table.slot(BID)] == HOME


def test_a_battery_with_no_vehicle_is_claimed_by_the_first(table: TwinTable) -> None:
    """A twin without a vehicle (never seen, or taken out by a done swap, which the planner
    records with set_vehicle(battery, None)) goes to whichever vehicle reports it."""
    _genuine(table, n=2)
    table.vehicle_ids[table.slot(BID)] = None  # what TwinShard.set_vehicle(BID, None) does
    res = _send(table, SEQ0 + 2, 70.0, vehicle_id=OTHER, soc_pct=69.0)
    assert not res.rejected and table.vehicle_ids[table.slot(BID)] == OTHER
    assert res.vehicle_changes == []  # from no vehicle: a first sighting, not a move


def test_a_battery_installed_by_a_done_swap_reports_from_its_new_vehicle(table: TwinTable) -> None:
    """After set_vehicle(battery, new vehicle) (the planner's done swap) the new vehicle's
    messages are the genuine ones, and the old vehicle's are the conflict."""
    _genuine(table, n=2)
    table.vehicle_ids[table.slot(BID)] = OTHER  # what TwinShard.set_vehicle(BID, OTHER) does
    assert not _send(table, SEQ0 + 2, 70.0, vehicle_id=OTHER, soc_pct=69.0).rejected
    assert _reasons(_send(table, SEQ0 + 3, 80.0, vehicle_id=HOME)) == ["battery_claim_conflict"]


# ---------------------------------------------------------------------------- seq range
def test_seq_far_ahead_is_refused_and_the_genuine_stream_goes_on(table: TwinTable) -> None:
    """A forged seq +1e8 on the battery's own vehicle, with a sample two minutes in the
    future, is seq_out_of_range (detail: last seq, got seq); the high-water mark and
    last_ts stay, so the genuine next messages are applied, not replays nor late."""
    _genuine(table)
    s = table.slot(BID)
    last_ts = float(table.last_ts[s])
    forged = SEQ0 + 100_000_000
    res = _send(table, forged, 360.0, temp_c=80.0, soc_pct=3.0)
    assert _reasons(res) == ["seq_out_of_range"]
    detail = res.rejected[0].detail
    assert f"last seq {SEQ0 + 4}, got seq {forged}" in detail and "1 of 3" in detail
    assert int(table.last_seq[s]) == SEQ0 + 4 and table.last_ts[s] == last_ts
    res = _send(table, SEQ0 + 5, 300.0, soc_pct=65.0)
    assert (res.applied_samples, res.late_samples, res.duplicate_messages) == (1, 0, 0)
    assert _last_soc(table) == 65.0 and table.max_temp_c[s] == 25.0


def test_restart_after_downtime_jumps_seq_by_about_the_downtime(table: TwinTable) -> None:
    """A simulator down for an hour comes back with seq about 3600 higher (its counter is
    seeded with the clock): within 64 + 10/s · 3600 s, so accepted; further is refused."""
    _genuine(table, n=1)
    assert not _send(table, SEQ0 + 3700, 3660.0, soc_pct=69.0).rejected
    limit = 64 + 10 * 60
    assert not _send(table, SEQ0 + 3700 + limit, 3720.0, soc_pct=69.0).rejected
    assert _reasons(_send(table, SEQ0 + 3700 + 2 * limit + 1, 3780.0)) == ["seq_out_of_range"]


def test_seq_behind_the_replay_window_is_out_of_range(table: TwinTable) -> None:
    """A seq more than 64 behind the newest cannot be told from a replay: out of range."""
    _genuine(table, n=1)
    assert not _send(table, SEQ0 + 100, 60.0).rejected
    assert _send(table, SEQ0 + 36, 61.0).accepted_samples == 1  # 63 back: a reordered delivery
    assert _reasons(_send(table, SEQ0 + 35, 62.0)) == ["seq_out_of_range"]  # 64 back


def test_a_reset_counter_resyncs_after_three_messages(table: TwinTable) -> None:
    """A device whose counter reset to 0: its first two messages are refused, the third in a
    row (seq +1 each, later in time) re-bases the twin's seq, and the stream goes on."""
    _genuine(table)
    for k in range(2):
        res = _send(table, k, 300.0 + 60.0 * k, soc_pct=60.0)
        assert _reasons(res) == ["seq_out_of_range"]
        assert f"{k + 1} of 3" in res.rejected[0].detail
    res = _send(table, 2, 420.0, soc_pct=59.0)
    assert not res.rejected and res.applied_samples == 1
    s = table.slot(BID)
    assert int(table.last_seq[s]) == 2 and int(table.resync_count[s]) == 0
    assert not _send(table, 3, 480.0, soc_pct=58.0).rejected
    assert _last_soc(table) == 58.0


def test_resync_needs_consecutive_seqs_moving_forward_in_time(table: TwinTable) -> None:
    """Out-of-range messages that skip a seq, or go back in time, start the count again."""
    _genuine(table)
    assert _reasons(_send(table, 10, 300.0)) == ["seq_out_of_range"]
    assert _reasons(_send(table, 12, 310.0)) == ["seq_out_of_range"]  # skipped 11: count 1
    assert _reasons(_send(table, 13, 305.0)) == ["seq_out_of_range"]  # earlier: count 1
    assert _reasons(_send(table, 13, 305.0)) == ["seq_out_of_range"]  # redelivery: no step
    assert _reasons(_send(table, 14, 320.0)) == ["seq_out_of_range"]  # count 2
    assert not _send(table, 15, 330.0).rejected  # count 3: re-based


def test_forged_messages_between_genuine_ones_never_resync(table: TwinTable) -> None:
    """Forged far-ahead seqs interleaved with the genuine stream never add up to a re-sync:
    each genuine message in range clears the count."""
    _genuine(table)
    forged = SEQ0 + 100_000_000
    for k in range(4):
        assert _reasons(_send(table, forged + k, 300.0 + 60.0 * k + 1.0)) == ["seq_out_of_range"]
        assert not _send(table, SEQ0 + 5 + k, 300.0 + 60.0 * k + 30.0, soc_pct=65.0 - k).rejected
    assert int(table.last_seq[table.slot(BID)]) == SEQ0 + 8


# ---------------------------------------------------------------------------- plausibility
def test_soc_jump_within_a_message_is_implausible(table: TwinTable) -> None:
    """SoC 20 → 90 % in one minute inside a message: implausible_telemetry (soc_rise)."""
    res = _send(table, SEQ0, [0.0, 60.0], soc_pct=[20.0, 90.0])
    assert _reasons(res) == ["implausible_telemetry"] and res.applied_samples == 0
    assert "soc_rise" in res.rejected[0].detail and "20.0 % to 90.0 % in 60.0 s" in res.rejected[0].detail
    assert "at most +11.0 %" in res.rejected[0].detail


def test_soc_jump_since_the_last_sample_is_implausible(table: TwinTable) -> None:
    """The first sample of a message is judged against the twin's last one: 66 → 95 % in a
    minute is refused, and the twin keeps its last sample."""
    _genuine(table)
    res = _send(table, SEQ0 + 5, 300.0, soc_pct=95.0)
    assert _reasons(res) == ["implausible_telemetry"]
    assert "since the twin's last sample" in res.rejected[0].detail
    assert _last_soc(table) == 66.0


def test_a_second_message_in_the_batch_is_judged_against_the_first(table: TwinTable) -> None:
    """Two messages of one battery in one batch: the second's step is judged from the
    first (accepted just before it), not from the table as it was before the batch."""
    _genuine(table)
    batch = make_batch(
        message(BID, SEQ0 + 5, [T0_S + 300.0], vehicle_id=HOME, soc_pct=20.0),
        message(BID, SEQ0 + 6, [T0_S + 310.0], vehicle_id=HOME, soc_pct=60.0),
    )
    res = table.apply(batch)
    assert [(r.index, r.reason.value) for r in res.rejected] == [(1, "implausible_telemetry")]
    assert "20.0 % to 60.0 % in 10.0 s" in res.rejected[0].detail
    assert _last_soc(table) == 20.0


def test_plausible_charging_is_accepted(table: TwinTable) -> None:
    """A fast charge (10 → 95 % in an hour, one sample a minute) and a return from the depot
    after two hours at a much higher SoC are both possible, so both are applied."""
    t = np.arange(0.0, 3601.0, 60.0)
    res = _send(table, SEQ0, t, soc_pct=10.0 + 85.0 * t / 3600.0, current_a=-10.0)
    assert not res.rejected and res.applied_samples == t.size
    _send(table, SEQ0 + 1, 3660.0, soc_pct=20.0)
    assert not _send(table, SEQ0 + 2, 3660.0 + 7200.0, soc_pct=98.0).rejected


def test_position_jump_is_implausible(table: TwinTable) -> None:
    """1.1 km (0.01° of latitude) in 5 s is about 220 m/s: implausible_telemetry (speed)."""
    _send(table, SEQ0, 0.0, lat=52.52, lon=13.40)
    res = _send(table, SEQ0 + 1, 5.0, lat=52.53, lon=13.40)
    assert _reasons(res) == ["implausible_telemetry"]
    assert "speed" in res.rejected[0].detail and "expected at most 50 m/s" in res.rejected[0].detail
    res = _send(table, SEQ0 + 2, [10.0, 15.0], lat=[52.52, 52.53], lon=13.40)
    assert "between two samples of the message" in res.rejected[0].detail


def test_riding_and_unknown_positions_are_accepted(table: TwinTable) -> None:
    """A ride at 8 m/s, and samples without a position (NaN), pass the speed check."""
    t = np.arange(0.0, 300.0, 5.0)
    lat = 52.52 + 8.0 * t / 111_000.0
    assert not _send(table, SEQ0, t, lat=lat, lon=13.40, speed_kmh=29.0).rejected
    res = _send(table, SEQ0 + 1, [300.0, 305.0], lat=[np.nan, 55.0], lon=[np.nan, 13.4])
    assert not res.rejected


# ---------------------------------------------------------------------------- state
def test_checkpoint_keeps_the_resync_state(clock: ManualClock, table: TwinTable) -> None:
    """The re-sync count survives a checkpoint: two reset messages before it and one after
    re-base the restored twin, as they would the original."""
    _genuine(table)
    _send(table, 0, 300.0)
    _send(table, 1, 360.0)
    restored = TwinTable.from_bytes(table.to_bytes(), table.params, clock)
    s = restored.slot(BID)
    assert (int(restored.resync_seq[s]), int(restored.resync_count[s])) == (1, 2)
    assert restored.resync_ts[s] == T0_S + 360.0
    res = restored.apply(make_batch(message(BID, 2, [T0_S + 420.0], vehicle_id=HOME)))
    assert not res.rejected and int(restored.last_seq[s]) == 2


def test_replayed_history_is_not_checked_again(table: TwinTable) -> None:
    """replay=True (a shard restoring from its history) applies what the live twin once took,
    even if it no longer fits the twin (here: a swap recorded after it was ingested)."""
    _genuine(table, n=1)
    batch = make_batch(message(BID, SEQ0 + 1, [T0_S + 60.0], vehicle_id=OTHER))
    assert _reasons(table.apply(batch)) == ["battery_claim_conflict"]
    res = table.apply(batch, replay=True)
    assert not res.rejected and res.applied_samples == 1
    assert table.vehicle_ids[table.slot(BID)] == OTHER


# ---------------------------------------------------------------------------- the simulator
def _simulate(params: FleetParams, hours: float) -> tuple[FleetSimulator, ApplyResult]:
    """Run the fleet simulator from an evening (plenty of rides) into one table."""
    sim = FleetSimulator(params, seq_start=SEQ0)
    return sim, feed_fleet(TwinTable(TwinTableParams()), sim, 1_764_172_800.0, hours * 3600)


def test_simulated_fleet_swaps_raise_no_claim_conflicts() -> None:
    """Four simulated hours of a small fleet with few spares: batteries are swapped, charged
    and put back into other vehicles, and the twins refuse none of its messages. (A swapped
    out battery charges for over an hour and rests pool_rest_s >= claim_after_silence_s.)"""
    assert FleetParams().pool_rest_s >= TwinTableParams().claim_after_silence_s
    sim, total = _simulate(SWAPPY_FLEET, hours=4.0)
    events = sim.drain_swap_events()
    removed = {e.removed_battery_id for e in events}
    reused = [e for e in events if e.installed_battery_id in removed]
    assert len(events) >= 5 and len(reused) >= 3, (len(events), len(reused))
    assert total.rejected == []
    # Every reuse put a battery into another vehicle: the twins followed it.
    assert len(total.vehicle_changes) >= len(reused)


def test_without_the_pool_rest_fast_charged_batteries_would_conflict() -> None:
    """The control: with a fast charger and no rest in the pool, a swapped-out battery is
    back in another vehicle within the claim window, which the twins refuse. This is what
    pool_rest_s keeps the simulator from doing."""
    fast = SWAPPY_FLEET.replace(charge_current_a=60.0, pool_rest_s=0.0)
    _, total = _simulate(fast, hours=3.0)
    assert {r.reason for r in total.rejected} == {RejectReason.BATTERY_CLAIM_CONFLICT}
