"""Tests for saving and restoring a simulated fleet (:mod:`sim.fleet_snapshot`,
:meth:`FleetSimulator.snapshot` / :meth:`~FleetSimulator.restore`), and for what it is for:
a fleet restored after a restart that the twins take without a single rejection."""

from __future__ import annotations

import asyncio
import io
import logging
import zipfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from contracts.telemetry import RejectReason
from sim.battery_model import PackParams
from sim.demand import DemandProfile
from sim.faults import FaultKind
from sim.fleet import FleetSimulator
from sim.fleet_params import FleetParams
from sim.fleet_snapshot import FleetSnapshotError, write_snapshot_file
from sim.publisher import ClientFactory, PublishClient, run_fleet
from twins.twin_table import ApplyResult, TwinTable, TwinTableParams

from ..twins.factories import SWAPPY_FLEET, feed_fleet

# 2025-11-26 16:00 UTC (17:00 in Berlin): the evening peak, so trips start quickly.
EVENING_S = 1_764_172_800.0
SEQ0 = 1_764_000_000  # a stream started by ``bms run`` (seq seeded with the Unix time)

Messages = list[tuple[float, str, bytes]]


def _run(sim: FleetSimulator, start_s: float, seconds: float, dt_s: float = 1.0) -> Messages:
    """All (now_s, topic, payload) the fleet emits over ``seconds`` after ``start_s``."""
    out: Messages = []
    for k in range(1, int(seconds / dt_s) + 1):
        now_s = start_s + k * dt_s
        out.extend((now_s, topic, payload) for topic, payload in sim.advance(dt_s, now_s))
    return out


@pytest.fixture(scope="module")
def busy_params() -> FleetParams:
    """40 vehicles with heavy demand, low batteries and fast chargers: rides, parks and
    swaps within minutes."""
    return FleetParams(
        vehicles=40, seed=5, initial_soc_min_pct=5.0, initial_soc_max_pct=25.0, min_spares=6,
        demand=DemandProfile(trips_per_vehicle_per_day=150.0), pool_rest_s=60.0,
        charge_current_a=60.0,
    )  # fmt: skip


@pytest.fixture(scope="module")
def ran(busy_params: FleetParams) -> tuple[FleetSimulator, bytes]:
    """A busy fleet after 15 minutes (riders on the road, half-full buffers, swaps done),
    and its snapshot."""
    sim = FleetSimulator(busy_params, seq_start=SEQ0)
    _run(sim, EVENING_S, 900)
    assert sim.riding_count > 0 and sim.swap_count > 0
    return sim, sim.snapshot()


def _doctor(data: bytes, **changes: Any) -> bytes:
    """``data`` with some arrays changed (a function of the saved array) or, as ``meta``,
    record fields replaced, re-encoded."""
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        members = {k: npz[k] for k in npz.files}
    meta = orjson.loads(members["meta.json"].tobytes())
    meta.update(changes.pop("meta", {}))
    members["meta.json"] = np.frombuffer(orjson.dumps(meta), dtype=np.uint8)
    members.update({name: change(members[name]) for name, change in changes.items()})
    buf = io.BytesIO()
    np.savez(buf, **members)
    return buf.getvalue()


# ---------------------------------------------------------------------------- round trip
def test_a_restored_fleet_emits_exactly_what_the_original_would(
    busy_params: FleetParams, ran: tuple[FleetSimulator, bytes]
) -> None:
    """Restored from a snapshot taken mid-ride, a fleet fed the same clock emits the same
    bytes as the original from that point on, with the same links, swaps and next snapshot."""
    original_then, data = ran
    original = FleetSimulator.restore(data, busy_params)  # the module's fleet stays untouched
    restored = FleetSimulator.restore(data, busy_params)
    assert restored.links() == original_then.links()
    assert restored.swap_count == original_then.swap_count
    assert restored.now_s == original_then.now_s == EVENING_S + 900
    start_s = EVENING_S + 900
    a, b = _run(original, start_s, 900), _run(restored, start_s, 900)
    assert a and a == b
    assert original.drain_swap_events() == restored.drain_swap_events() != []
    assert original.snapshot() == restored.snapshot()


def test_the_original_continues_like_its_restored_copy(
    busy_params: FleetParams, ran: tuple[FleetSimulator, bytes]
) -> None:
    """The round trip does not depend on the original having been restored itself: a
    fleet simulated from the start and a copy restored from its snapshot agree."""
    sim = FleetSimulator(busy_params, seq_start=SEQ0)
    _run(sim, EVENING_S, 300)
    copy = FleetSimulator.restore(sim.snapshot(), busy_params)
    assert _run(sim, EVENING_S + 300, 600) == _run(copy, EVENING_S + 300, 600)


def test_a_fleet_saved_before_its_first_tick_restores_too(busy_params: FleetParams) -> None:
    """A snapshot of a fleet that never ticked (no clock yet) restores to one that emits
    the same messages as the original."""
    data = FleetSimulator(busy_params, seq_start=SEQ0).snapshot()
    restored = FleetSimulator.restore(data, busy_params)
    assert restored.now_s is None
    assert _run(restored, EVENING_S, 300) == _run(FleetSimulator(busy_params, seq_start=SEQ0), EVENING_S, 300)


def test_every_state_array_is_in_the_snapshot(ran: tuple[FleetSimulator, bytes]) -> None:
    """Every numpy array of the simulator and of its packs is saved: a new state field that
    the snapshot forgot would fail here, not as a subtly different restored fleet."""
    sim, _ = ran
    saved = {id(a) for a in sim._state_arrays().values()}
    for owner in (sim, sim.packs):
        arrays = {k for k, v in vars(owner).items() if isinstance(v, np.ndarray)}
        assert arrays and all(id(getattr(owner, k)) in saved for k in arrays), arrays


def test_the_seq_margin_moves_every_counter_and_nothing_else(
    busy_params: FleetParams, ran: tuple[FleetSimulator, bytes]
) -> None:
    """seq_margin=32 adds 32 to every battery's seq; the messages are otherwise the same."""
    _, data = ran
    plain = _run(FleetSimulator.restore(data, busy_params), EVENING_S + 900, 300)
    shifted = _run(FleetSimulator.restore(data, busy_params, seq_margin=32), EVENING_S + 900, 300)
    assert len(plain) == len(shifted) > 0
    for (t0, topic0, p0), (t1, topic1, p1) in zip(plain, shifted, strict=True):
        m0, m1 = orjson.loads(p0), orjson.loads(p1)
        assert (t0, topic0) == (t1, topic1) and m1["seq"] == m0["seq"] + 32
        assert {**m1, "seq": None} == {**m0, "seq": None}
    with pytest.raises(ValueError, match="Expected seq_margin >= 0, got -1"):
        FleetSimulator.restore(data, busy_params, seq_margin=-1)


# ---------------------------------------------------------------------------- refusals
@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"vehicles": 41}, "vehicles: 40 -> 41"),
        ({"seed": 6}, "seed: 5 -> 6"),
        ({"pack": PackParams(rated_capacity_ah=12.0)}, "pack.rated_capacity_ah: 15.0 -> 12.0"),
    ],
)
def test_a_snapshot_of_other_params_is_refused_naming_the_difference(
    busy_params: FleetParams, ran: tuple[FleetSimulator, bytes], change: dict[str, Any], named: str
) -> None:
    """Params that differ in any field, nested ones too, are refused; the error names the
    field with its saved and current value."""
    _, data = ran
    with pytest.raises(FleetSnapshotError, match="same fleet params") as err:
        FleetSimulator.restore(data, busy_params.replace(**change))
    assert named in str(err.value)


def _truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _flipped(data: bytes) -> bytes:
    # A byte inside the first member's data: zip's CRC catches it.
    b = bytearray(data)
    b[200] ^= 0xFF
    return bytes(b)


def _foreign_zip(data: bytes) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, weights=np.zeros(3))
    return buf.getvalue()


def _oversized(data: bytes) -> bytes:
    return _doctor(data, x_km=lambda a: np.zeros(10_000))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: b"", "not one"),
        (lambda d: b"hello, I am a fleet", "not one"),
        (_truncated, "not one"),
        (_flipped, "damaged"),
        (_foreign_zip, "missing"),
        (_oversized, "oversized \\['x_km.npy'\\]"),
        (lambda d: _doctor(d, x_km=lambda a: a.astype(np.float32)), "'x_km' of shape \\(40,\\) and dtype float64"),
        (lambda d: _doctor(d, meta={"format": "other"}), "record with format 'bms-fleet-snapshot'"),
        (lambda d: _doctor(d, meta={"version": 99}), "format version 1, got version 99"),
        (lambda d: _doctor(d, meta={"rng": {"bit_generator": "MT19937"}}), "PCG64"),
        (lambda d: _doctor(d, meta={"now_s": -1.0}), "clock as Unix seconds"),
        (lambda d: _doctor(d, battery_of=np.zeros_like), "battery_of"),
        (lambda d: _doctor(d, vehicle_of=lambda a: np.roll(a, 1)), "vehicle_of"),
        (lambda d: _doctor(d, seq=lambda a: a - 2**40), "seq: in"),
        (lambda d: _doctor(d, pack_soc_pct=lambda a: a + np.nan), "pack_soc_pct"),
        (lambda d: _doctor(d, buffered=lambda a: a + 6), "buffered"),
    ],
    ids=[
        "empty", "text", "truncated", "flipped-byte", "foreign-npz", "oversized", "wrong-dtype",
        "foreign-record", "other-version", "other-rng", "bad-clock", "broken-links", "broken-inverse", "negative-seq",
        "nan-soc", "overfull-buffer",
    ],
)  # fmt: skip
def test_a_damaged_or_doctored_snapshot_is_refused_clearly(
    busy_params: FleetParams, ran: tuple[FleetSimulator, bytes], damage: Callable[[bytes], bytes], message: str
) -> None:
    """Bytes that are no snapshot, a damaged one, or one whose arrays or record break the
    simulator's invariants raise FleetSnapshotError (a ValueError) saying what was expected."""
    _, data = ran
    with pytest.raises(FleetSnapshotError, match=message) as err:
        FleetSimulator.restore(damage(data), busy_params)
    assert str(err.value).startswith("Expected")
    assert isinstance(err.value, ValueError)


def test_the_snapshot_holds_no_pickled_objects(ran: tuple[FleetSimulator, bytes]) -> None:
    """Every member is a plain numeric .npy array (numpy refuses object arrays without
    allow_pickle), so restoring cannot run code from a tampered file."""
    _, data = ran
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        names = zf.namelist()
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        kinds = {npz[k].dtype.kind for k in npz.files}
    assert all(n.endswith(".npy") for n in names) and kinds <= {"f", "i", "u", "b"}


# ---------------------------------------------------------------------------- downtime
def test_standing_still_moves_the_clock_and_keeps_charge_and_position(
    busy_params: FleetParams, ran: tuple[FleetSimulator, bytes]
) -> None:
    """After stand_still_until, nothing happened in the gap: no sample is stamped inside
    it, every battery's SoC and every vehicle's odometer is where it was, and the report
    phases are kept (no vehicle reports in the first second)."""
    _, data = ran
    sim = FleetSimulator.restore(data, busy_params)
    soc = sim.packs.soc_pct.copy()
    gap_s = 3600.0
    sim.stand_still_until(EVENING_S + 900 + gap_s)
    assert sim.now_s == EVENING_S + 900 + gap_s
    assert np.array_equal(sim.packs.soc_pct, soc)
    messages = _run(sim, EVENING_S + 900 + gap_s, 120)
    ts = [s["ts"] for _, _, p in messages for s in orjson.loads(p)["samples"]]
    held = [t for t in ts if t <= EVENING_S + 900]  # buffered before the stop, sent after
    assert all(t > EVENING_S + 900 + gap_s for t in ts if t not in held)
    assert len(held) < len(ts)
    with pytest.raises(ValueError, match="at or after the last tick"):
        sim.stand_still_until(EVENING_S)


def test_standing_still_before_the_first_tick_does_nothing(busy_params: FleetParams) -> None:
    """A fleet that never ticked has no clock to move: the call leaves it as it was."""
    sim = FleetSimulator(busy_params)
    sim.stand_still_until(EVENING_S)
    assert sim.now_s is None
    assert _run(sim, EVENING_S, 60) == _run(FleetSimulator(busy_params), EVENING_S, 60)


# ---------------------------------------------------------------------------- the twins across a restart
_DT_S = 10.0
_MARGIN = 32  # what bms run adds (bms/fleet_state.py)


def _feed(table: TwinTable, sim: FleetSimulator, start_s: float, seconds: float) -> ApplyResult:
    return feed_fleet(table, sim, start_s, seconds, _DT_S)


@pytest.fixture(scope="module")
def before_restart() -> tuple[TwinTable, FleetSimulator, bytes]:
    """Two hours of the swappy fleet applied to a twin table; the fleet and its snapshot."""
    table = TwinTable(TwinTableParams())
    sim = FleetSimulator(SWAPPY_FLEET, seq_start=SEQ0)
    res = _feed(table, sim, EVENING_S, 7200)
    assert res.rejected == [] and sim.swap_count >= 3
    return table, sim, sim.snapshot()


def _copy(table: TwinTable) -> TwinTable:
    return TwinTable.from_bytes(table.to_bytes(), table.params)


@pytest.mark.parametrize("downtime_s", [5.0, 120.0, 7200.0])
def test_twins_take_a_restored_fleet_without_a_rejection(
    before_restart: tuple[TwinTable, FleetSimulator, bytes], downtime_s: float
) -> None:
    """A clean stop and restart: the fleet restored with the seq margin, standing still for
    the downtime, then two hours more. The twins (which kept their state) refuse none of its
    messages (seq, battery claims, SoC and position steps all pass), drop none as a
    duplicate, and follow the swaps made after the restart."""
    table, _, data = before_restart
    table = _copy(table)
    restored = FleetSimulator.restore(data, SWAPPY_FLEET, seq_margin=_MARGIN)
    stop_s = EVENING_S + 7200
    restored.stand_still_until(stop_s + downtime_s)
    swaps0 = restored.swap_count
    res = _feed(table, restored, stop_s + downtime_s, 7200)
    assert res.messages > 500
    assert res.rejected == [] and res.duplicate_messages == 0
    assert restored.swap_count > swaps0 and res.vehicle_changes


def test_twins_take_a_fleet_restored_after_a_crash_without_a_rejection(
    before_restart: tuple[TwinTable, FleetSimulator, bytes],
) -> None:
    """A crash: the fleet ran 5 more ticks after its last snapshot (the twins saw those
    messages), then died. Restored from the older snapshot, its seq counters skip past
    what was sent (no message is lost as a duplicate) and the twins refuse nothing."""
    table, _, data = before_restart
    table = _copy(table)
    lost = FleetSimulator.restore(data, SWAPPY_FLEET)  # the fleet that went on, then crashed
    stop_s = EVENING_S + 7200
    after = _feed(table, lost, stop_s, 5 * _DT_S)
    assert after.messages > 0 and after.rejected == []
    restored = FleetSimulator.restore(data, SWAPPY_FLEET, seq_margin=_MARGIN)
    restart_s = stop_s + 5 * _DT_S + 60.0
    restored.stand_still_until(restart_s)
    res = _feed(table, restored, restart_s, 3600)
    assert res.messages > 200
    assert res.rejected == [] and res.duplicate_messages == 0


def test_control_a_fresh_fleet_after_the_restart_is_refused(
    before_restart: tuple[TwinTable, FleetSimulator, bytes],
) -> None:
    """The control, what bms run did before: a fresh fleet (seq seeded with the clock,
    batteries back in their first vehicles, SoC and positions from the start) meets the
    twins of the old one, which refuse its seq jumps, battery claims and SoC jumps."""
    table, _, _ = before_restart
    table = _copy(table)
    restart_s = EVENING_S + 7200 + 120.0
    fresh = FleetSimulator(SWAPPY_FLEET, seq_start=SEQ0 + int(restart_s - EVENING_S))
    res = _feed(table, fresh, restart_s, 600)
    reasons = {r.reason for r in res.rejected}
    assert len(res.rejected) >= 20
    assert reasons >= {RejectReason.SEQ_OUT_OF_RANGE, RejectReason.BATTERY_CLAIM_CONFLICT}


# ---------------------------------------------------------------------------- saving while running
class _NullClient:
    async def publish(self, topic: str, payload: bytes, qos: int) -> None:
        await asyncio.sleep(0)


def _null_factory() -> ClientFactory:
    @asynccontextmanager
    async def make(i: int) -> AsyncIterator[PublishClient]:
        yield _NullClient()

    return make


async def test_run_fleet_saves_snapshots_while_running_and_at_the_end(tmp_path: Path) -> None:
    """run_fleet saves every snapshot_interval_s and once more at the end; the file it
    leaves restores to the fleet as it stopped."""
    params = FleetParams(vehicles=8)
    fleet = FleetSimulator(params)
    saves: list[bytes] = []
    path = tmp_path / "sim" / "fleet.npz"

    def save(data: bytes) -> None:
        saves.append(data)
        write_snapshot_file(path, data)

    await run_fleet(
        fleet, "mqtt://h:1", duration_s=0.5, tick_s=0.05, client_factory=_null_factory(),
        save_snapshot=save, snapshot_interval_s=0.15,
    )  # fmt: skip
    assert 3 <= len(saves) <= 5
    restored = FleetSimulator.restore(path.read_bytes(), params)
    assert restored.now_s == fleet.now_s and restored.snapshot() == fleet.snapshot()
    assert [p.name for p in path.parent.iterdir()] == ["fleet.npz"]  # no temporary left


async def test_run_fleet_saves_when_stopped_and_survives_a_failing_save(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A save that raises OSError (a full disk) is logged and the fleet runs on; a stop
    request still ends with a save."""
    fleet = FleetSimulator(FleetParams(vehicles=5))
    calls: list[float | None] = []

    def save(data: bytes) -> None:
        calls.append(fleet.now_s)
        raise OSError(28, "No space left on device")

    stop = asyncio.Event()
    with caplog.at_level(logging.WARNING, logger="sim.publisher"):
        task = asyncio.create_task(run_fleet(
            fleet, "mqtt://h:1", None, tick_s=0.02, stop=stop, client_factory=_null_factory(),
            save_snapshot=save, snapshot_interval_s=0.05,
        ))  # fmt: skip
        await asyncio.sleep(0.2)
        stop.set()
        summary = await asyncio.wait_for(task, 2.0)
    assert summary.ticks >= 5 and len(calls) >= 2
    assert calls[-1] == fleet.now_s  # the last save is of the fleet as it stopped
    assert "Could not save the fleet snapshot" in caplog.text and "No space left" in caplog.text


def test_write_snapshot_file_replaces_the_file_atomically(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file holds the old bytes or the new ones; a write that fails before the rename
    leaves the old file and no temporary behind."""
    path = tmp_path / "sim" / "fleet.npz"
    write_snapshot_file(path, b"first")
    write_snapshot_file(path, b"second")
    assert path.read_bytes() == b"second"

    def no_disk(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr("sim.fleet_snapshot.os.fsync", no_disk)
    with pytest.raises(OSError, match="Input/output error"):
        write_snapshot_file(path, b"third")
    assert path.read_bytes() == b"second"
    assert [p.name for p in path.parent.iterdir()] == ["fleet.npz"]


# ---------------------------------------------------------------------------- faults
_FAULT_MEMBERS = ("fault_kind", "fault_onset_s", "fault_magnitude", "fault_drift_per_min")


@pytest.fixture(scope="module")
def faulty_params(busy_params: FleetParams) -> FleetParams:
    """The busy fleet with three initial faults (both default kinds) and new ones at a high rate."""
    return busy_params.replace(initial_faults=3, fault_rate_per_vehicle_day=20.0)


def _without(data: bytes, *names: str) -> bytes:
    """``data`` without some members: a snapshot written before they existed."""
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        members = {k: npz[k] for k in npz.files if k not in names}
    buf = io.BytesIO()
    np.savez(buf, **members)
    return buf.getvalue()


def test_faults_survive_the_round_trip(faulty_params: FleetParams) -> None:
    """A fleet with faults (started and pending) restores with the same faults and then
    emits what the original emits; so does one saved before its first tick (its initial
    faults still pending, their onsets counted from the start)."""
    sim = FleetSimulator(faulty_params, seq_start=SEQ0)
    pending = FleetSimulator.restore(sim.snapshot(), faulty_params)
    assert pending.faults() == sim.faults() and len(sim.faults()) == 3
    assert _run(pending, EVENING_S, 120) == _run(FleetSimulator(faulty_params, seq_start=SEQ0), EVENING_S, 120)
    _run(sim, EVENING_S, 600)
    faults = sim.faults()
    assert len(faults) > 3 and {f.kind for f in faults.values()} == {FaultKind.THERMAL_RUNAWAY, FaultKind.WEAK_CELL}
    restored = FleetSimulator.restore(sim.snapshot(), faulty_params)
    assert restored.faults() == faults
    assert _run(restored, EVENING_S + 600, 600) == _run(sim, EVENING_S + 600, 600)
    assert restored.faults() == sim.faults()


def test_a_snapshot_from_before_live_faults_restores_with_none(
    faulty_params: FleetParams, ran: tuple[FleetSimulator, bytes]
) -> None:
    """A snapshot without the fault members (and whose params record lacks the fault
    settings) loads, into params with faults switched on too, with no faulty battery: the
    initial faults are a fresh fleet's, and the rest come from now on."""
    original, data = ran
    old = _without(data, *_FAULT_MEMBERS)
    with np.load(io.BytesIO(old), allow_pickle=False) as npz:
        meta = orjson.loads(npz["meta.json"].tobytes())
    for name in ("fault_rate_per_vehicle_day", "initial_faults", "initial_fault_window_s", "fault_kinds", "fault_response_s"):
        del meta["params"][name]
    old = _doctor(old, meta={"params": meta["params"]})
    restored = FleetSimulator.restore(old, faulty_params)
    assert restored.faults() == {}
    assert restored.links() == original.links() and restored.now_s == original.now_s
    _run(restored, EVENING_S + 900, 300)
    assert restored.faults()  # new ones develop at faulty_params' rate


def test_other_fault_settings_do_not_stop_a_restore(
    faulty_params: FleetParams, ran: tuple[FleetSimulator, bytes]
) -> None:
    """The fault settings shape the future, not the saved state: a snapshot restores under
    other ones (a changed [sim] fault rate keeps the fleet), while other fleet params are
    still refused."""
    sim = FleetSimulator(faulty_params, seq_start=SEQ0)
    _run(sim, EVENING_S, 300)
    quiet = faulty_params.replace(fault_rate_per_vehicle_day=0.0, initial_faults=0, fault_response_s=60.0)
    restored = FleetSimulator.restore(sim.snapshot(), quiet)
    assert restored.faults() == sim.faults() != {}
    with pytest.raises(FleetSnapshotError, match="seed: 5 -> 6"):
        FleetSimulator.restore(sim.snapshot(), quiet.replace(seed=6))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: _without(d, "fault_kind"), "fault arrays: all of"),
        (lambda d: _doctor(d, fault_kind=lambda a: a + 9), "fault_kind: in"),
        (lambda d: _doctor(d, fault_onset_s=lambda a: np.where(np.isinf(a), 0.0, a)), "fault_onset_s"),
        (lambda d: _doctor(d, fault_magnitude=lambda a: a + np.nan), "fault_magnitude"),
    ],
    ids=["some-fault-members", "unknown-kind", "onset-without-fault", "nan-magnitude"],
)
def test_doctored_fault_arrays_are_refused(
    faulty_params: FleetParams, damage: Callable[[bytes], bytes], message: str
) -> None:
    """Fault arrays come all or none, with known kinds, an onset exactly where there is a
    fault, and finite strengths; anything else is refused saying what was expected."""
    data = FleetSimulator(faulty_params).snapshot()
    with pytest.raises(FleetSnapshotError, match=message) as err:
        FleetSimulator.restore(damage(data), faulty_params)
    assert str(err.value).startswith("Expected")
