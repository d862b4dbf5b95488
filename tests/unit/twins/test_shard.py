"""Tests for :mod:`twins.shard`: ingest, persistence, state flush and checkpoint recovery.

TwinShard is plain asyncio; here it runs on in-memory backends and a manual clock, so
nothing needs Ray, Postgres or Redis. Background periods are an hour unless a test is
about them, so only the calls a test makes do anything.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping

import numpy as np
import orjson
import pytest

from contracts.candidates import Candidate
from contracts.samples import SAMPLE_FIELDS, TelemetryBatch
from contracts.telemetry import RejectedMessage, RejectReason
from twins.clock import ManualClock
from twins.fleet_query import Filter
from twins.scoring import AnomalyEvent, MemoryDemand, ScoreReport, ScoringParams, TwinScorer
from twins.shard import IngestReport, TwinShard
from twins.sinks import (
    MemoryAssignments,
    MemoryCheckpoints,
    MemoryHistory,
    MemoryState,
    ShardBackends,
)
from twins.twin_table import TwinTableParams

from .factories import T0_S, make_batch, message

PARAMS = TwinTableParams(window_samples=8, lstm_hidden_size=4)


def _backends(
    history: MemoryHistory | None = None,
    checkpoints: MemoryCheckpoints | None = None,
    assigned: list[str] | None = None,
) -> ShardBackends:
    return ShardBackends(
        history or MemoryHistory(),
        MemoryState(),
        checkpoints or MemoryCheckpoints(),
        MemoryAssignments({0: assigned or []}),
    )


def _make_shard(backends: ShardBackends, clock: ManualClock, **kwargs: float) -> TwinShard:
    async def connect() -> ShardBackends:
        return backends

    kwargs.setdefault("checkpoint_interval_s", 3600.0)
    kwargs.setdefault("state_flush_interval_s", 3600.0)
    return TwinShard(0, PARAMS, connect, clock=clock, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def backends() -> ShardBackends:
    """Fresh in-memory history, state cache, checkpoints and (empty) assignments."""
    return _backends()


@pytest.fixture
async def shard(backends: ShardBackends, clock: ManualClock) -> AsyncIterator[TwinShard]:
    """Shard 0 on ``backends`` and the test clock; closed after the test."""
    s = _make_shard(backends, clock)
    yield s
    await s.aclose()


def _history(backends: ShardBackends) -> MemoryHistory:
    assert isinstance(backends.history, MemoryHistory)
    return backends.history


def _states(backends: ShardBackends) -> dict[str, bytes]:
    assert isinstance(backends.state, MemoryState)
    return backends.state.states


def _drive(battery_id: str, seq: int, t_rel_s: list[float], **cols: object) -> TelemetryBatch:
    return make_batch(
        message(battery_id, seq, T0_S + np.array(t_rel_s), vehicle_id=f"veh-{battery_id}", **cols)
    )  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- ingest
async def test_ingest_persists_accepted_samples(shard: TwinShard, backends: ShardBackends) -> None:
    """ingest() returns after the accepted samples are in history, and reports the counts."""
    batch = make_batch(
        message("bat-a", 0, T0_S + np.array([0.0, 1.0, 2.0])),
        message("bat-b", 0, T0_S + np.array([0.0, 1.0])),
    )
    report = await shard.ingest(batch)
    assert (report.messages, report.accepted_messages, report.duplicate_messages) == (2, 2, 0)
    assert (report.accepted_samples, report.applied_samples, report.new_twins) == (5, 5, 2)
    written = _history(backends).batches
    assert len(written) == 1
    assert list(written[0].battery_ids) == ["bat-a", "bat-b"]
    np.testing.assert_array_equal(written[0].columns["ts"], batch.columns["ts"])


async def test_duplicate_messages_are_not_persisted_again(
    shard: TwinShard, backends: ShardBackends
) -> None:
    """A redelivered message is dropped; only the new messages of a mixed batch are written."""
    first = _drive("bat-a", 0, [0.0, 1.0])
    await shard.ingest(first)
    again = await shard.ingest(first)
    assert (again.duplicate_messages, again.accepted_samples) == (1, 0)
    assert len(_history(backends).batches) == 1
    mixed = TelemetryBatch.concat([first, _drive("bat-a", 1, [2.0, 3.0, 4.0])])
    report = await shard.ingest(mixed)
    assert (report.duplicate_messages, report.accepted_messages, report.accepted_samples) == (
        1,
        1,
        3,
    )
    last = _history(backends).batches[-1]
    np.testing.assert_array_equal(last.seqs, [1])
    assert last.n_samples == 3
    snap = await shard.get("bat-a")
    assert snap is not None and snap.samples_total == 5


async def test_late_samples_are_persisted_but_not_applied(
    shard: TwinShard, backends: ShardBackends
) -> None:
    """A late sample goes to history (it is data) but not into the twin's window."""
    await shard.ingest(_drive("bat-a", 0, [0.0, 1.0, 2.0, 3.0, 4.0]))
    report = await shard.ingest(_drive("bat-a", 1, [5.0, 2.5]))
    assert (report.late_samples, report.applied_samples, report.accepted_samples) == (1, 1, 2)
    np.testing.assert_array_equal(
        _history(backends).batches[-1].columns["ts"], T0_S + np.array([5.0, 2.5])
    )
    window = await shard.window("bat-a")
    assert window is not None
    assert window["ts"] == [T0_S + float(t) for t in range(6)]


# ---------------------------------------------------------------------------- stats
async def test_stats_report_freshness_of_accepted_messages(
    shard: TwinShard, clock: ManualClock
) -> None:
    """Freshness is now minus each accepted message's newest sample: 2 s and 5 s here."""
    clock.advance(10.0)
    await shard.ingest(
        make_batch(
            message("bat-a", 0, T0_S + np.array([0.0, 8.0])),
            message("bat-b", 0, [T0_S + 5.0]),
        )
    )
    stats = await shard.stats()
    assert (stats.shard_id, stats.twins, stats.messages) == (0, 2, 2)
    assert stats.freshness_count == 2
    assert stats.freshness_p50_s == pytest.approx(3.5)
    assert stats.freshness_p99_s == pytest.approx(2.0 + 0.99 * 3.0)
    assert stats.last_apply_at_s == T0_S + 10.0
    np.testing.assert_array_equal(np.sort(await shard.latencies()), [2.0, 5.0])
    # A redelivery counts as a message but says nothing about freshness.
    await shard.ingest(make_batch(message("bat-a", 0, T0_S + np.array([0.0, 8.0]))))
    stats = await shard.stats()
    assert (stats.messages, stats.duplicate_messages, stats.freshness_count) == (3, 1, 2)
    assert (stats.accepted_samples, stats.applied_samples, stats.late_samples) == (3, 3, 0)
    shard.reset_latency()
    stats = await shard.stats()
    assert (stats.freshness_count, stats.freshness_p50_s, stats.freshness_p99_s) == (0, None, None)


async def test_stats_count_vehicle_changes(shard: TwinShard) -> None:
    """A battery moving between vehicles (after the claim window) shows in the shard's counters."""
    await shard.ingest(make_batch(message("bat-a", 0, [T0_S], vehicle_id="veh-1")))
    report = await shard.ingest(make_batch(message("bat-a", 1, [T0_S + 1800], vehicle_id="veh-2")))
    assert report.vehicle_changes == 1
    assert (await shard.stats()).vehicle_changes == 1


# ---------------------------------------------------------------------------- state flush
async def test_flush_state_publishes_dirty_twins_only(
    shard: TwinShard, backends: ShardBackends
) -> None:
    """flush_state() writes JSON for twins changed since the last flush, then nothing more."""
    await shard.ingest(
        make_batch(
            message("bat-a", 0, [T0_S], vehicle_id="veh-a", soc_pct=55.0, temp_c=31.0),
            message("bat-b", 0, [T0_S], vehicle_id="veh-b"),
        )
    )
    assert await shard.flush_state() == 2
    states = _states(backends)
    state_a = orjson.loads(states["bat-a"])
    assert state_a == {
        "battery_id": "bat-a",
        "vehicle_id": "veh-a",
        "ts": T0_S,
        "pack_voltage_v": 48.0,
        "current_a": 0.0,
        "temp_c": 31.0,
        "soc_pct": 55.0,
        "lat": 52.52,
        "lon": 13.40,
        "soh_pct_est": None,
        "health_band": "unknown",
        "efc": 0.0,
        "shard": 0,
        # Model outputs: none until the shard's first scoring tick.
        "soh_model_pct": None,
        "health_score": None,
        "priority": None,
        "anomaly_flags": 0,
    }
    states.clear()
    await shard.ingest(
        make_batch(message("bat-a", 1, [T0_S + 1.0], vehicle_id="veh-a", soc_pct=54.0))
    )
    assert await shard.flush_state() == 1
    assert set(states) == {"bat-a"}
    assert orjson.loads(states["bat-a"])["soc_pct"] == 54.0
    assert await shard.flush_state() == 0
    await shard.ingest(
        make_batch(message("bat-b", 0, [T0_S + 2.0], vehicle_id="veh-b"))
    )  # duplicate
    assert await shard.flush_state() == 0


async def test_state_is_flushed_in_the_background(
    backends: ShardBackends, clock: ManualClock
) -> None:
    """With a short state_flush_interval_s, published state appears without a flush call."""
    s = _make_shard(backends, clock, state_flush_interval_s=0.01)
    try:
        await s.ingest(make_batch(message("bat-a", 0, [T0_S])))
        assert await _wait_for(lambda: bool(_states(backends)))
        assert set(_states(backends)) == {"bat-a"}
    finally:
        await s.aclose()


class _FlakyState(MemoryState):
    """A state cache whose first publish fails (a Redis blip)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    async def publish(self, states: Mapping[str, bytes]) -> None:
        self.calls += 1
        if self.calls == 1:
            raise ConnectionError("redis down")
        await super().publish(states)


async def _wait_for(predicate: Callable[[], bool], timeout_s: float = 2.0) -> bool:
    for _ in range(int(timeout_s / 0.01)):
        if predicate():
            return True
        await asyncio.sleep(0.01)
    return predicate()


async def test_failed_background_flush_does_not_stop_the_next(clock: ManualClock) -> None:
    """After a periodic flush fails, later periods still publish newly changed twins."""
    flaky = _FlakyState()
    s = _make_shard(
        ShardBackends(MemoryHistory(), flaky, MemoryCheckpoints(), MemoryAssignments()),
        clock,
        state_flush_interval_s=0.01,
    )
    try:
        await s.ingest(make_batch(message("bat-a", 0, [T0_S])))
        assert await _wait_for(lambda: flaky.calls >= 1)
        await s.ingest(make_batch(message("bat-b", 0, [T0_S])))
        assert await _wait_for(lambda: "bat-b" in flaky.states)
    finally:
        await s.aclose()


async def test_failed_flush_is_retried(clock: ManualClock) -> None:
    """Twins whose state failed to publish are published on a later period."""
    flaky = _FlakyState()
    s = _make_shard(
        ShardBackends(MemoryHistory(), flaky, MemoryCheckpoints(), MemoryAssignments()),
        clock,
        state_flush_interval_s=0.01,
    )
    try:
        await s.ingest(make_batch(message("bat-a", 0, [T0_S])))
        assert await _wait_for(lambda: "bat-a" in flaky.states, timeout_s=0.3)
    finally:
        await s.aclose()


# ---------------------------------------------------------------------------- recovery
async def test_restart_restores_checkpoint_and_replays_newer_history(clock: ManualClock) -> None:
    """A new shard on the same checkpoints and history ends exactly where the old one was.

    Messages from before the checkpoint are replayed too (the replay margin) but dropped by
    seq; messages after it are applied, including a battery the directory placed since.
    """
    history, checkpoints = MemoryHistory(), MemoryCheckpoints()
    old = _make_shard(_backends(history, checkpoints), clock)
    await old.ingest(
        TelemetryBatch.concat(
            [
                _drive(
                    "bat-a",
                    0,
                    [0.0, 1.0, 2.0],
                    current_a=10.0,
                    soc_pct=[90.0, 89.0, 88.0],
                    speed_kmh=20.0,
                ),
                _drive("bat-b", 0, [0.0, 60.0], current_a=-5.0, soc_pct=[40.0, 41.0]),
            ]
        )
    )
    clock.advance(10.0)
    assert await old.checkpoint() > 0
    await old.ingest(
        TelemetryBatch.concat(
            [
                _drive(
                    "bat-a",
                    1,
                    [3.0, 4.0, 5.0],
                    current_a=[30.0, 30.0, 10.0],
                    pack_voltage_v=[46.0, 46.0, 47.0],
                    soc_pct=[87.0, 86.0, 85.0],
                    speed_kmh=20.0,
                ),
                _drive("bat-c", 0, [1.0, 2.0], temp_c=50.0),
            ]
        )
    )
    await old.set_lstm_state(["bat-a"], np.ones((1, 4)), np.zeros((1, 4)))
    await old.checkpoint()  # LSTM state lives only in checkpoints; take one more
    await old.ingest(_drive("bat-a", 2, [6.0, 7.0], current_a=5.0, soc_pct=84.0, speed_kmh=20.0))
    await old.aclose()

    new = _make_shard(_backends(history, checkpoints, assigned=["bat-a", "bat-b", "bat-c"]), clock)
    try:
        for bid in ("bat-a", "bat-b", "bat-c"):
            assert await new.get(bid) == await old.get(bid), bid
            assert await new.window(bid) == await old.window(bid), bid
        stats = await new.stats()
        assert stats.restored_from_checkpoint
        assert stats.replayed_samples == 2  # only bat-a seq 2 is newer than the last checkpoint
        # The bridge's retry of an applied message is recognised after the restart.
        retry = await new.ingest(_drive("bat-a", 2, [6.0, 7.0]))
        assert retry.duplicate_messages == 1
    finally:
        await new.aclose()


async def test_restart_without_checkpoint_replays_assigned_batteries(clock: ManualClock) -> None:
    """With no checkpoint, a shard rebuilds its assigned twins from the whole history."""
    history = MemoryHistory()
    old = _make_shard(_backends(history), clock)
    await old.ingest(_drive("bat-a", 0, [0.0, 1.0, 2.0], current_a=10.0))
    await old.ingest(_drive("bat-z", 0, [0.0]))  # another shard's battery, not assigned below
    new = _make_shard(_backends(history, assigned=["bat-a"]), clock)
    try:
        assert await new.battery_ids() == ["bat-a"]
        assert await new.get("bat-a") == await old.get("bat-a")
        stats = await new.stats()
        assert (stats.restored_from_checkpoint, stats.replayed_samples) == (False, 3)
    finally:
        await old.aclose()
        await new.aclose()


async def test_restart_replays_messages_without_samples(clock: ManualClock) -> None:
    """A message without samples in history does not break the replay of those after it."""
    history = MemoryHistory()
    old = _make_shard(_backends(history), clock)
    cols = {k: np.zeros(1) for k in SAMPLE_FIELDS}
    cols["ts"] = np.array([T0_S])
    await old.ingest(
        TelemetryBatch(
            ["bat-a", "bat-a"], ["veh", "veh"], np.array([0, 1]), np.array([0, 1, 1]), cols
        )
    )
    new = _make_shard(_backends(history, assigned=["bat-a"]), clock)
    try:
        assert await new.get("bat-a") == await old.get("bat-a")
    finally:
        await old.aclose()
        await new.aclose()


async def test_restart_replays_old_samples_ingested_after_the_checkpoint(
    clock: ManualClock,
) -> None:
    """Samples ingested after the last checkpoint are replayed however old their timestamps."""
    history, checkpoints = MemoryHistory(), MemoryCheckpoints()
    clock.advance(3600.0)
    old = _make_shard(_backends(history, checkpoints), clock)
    await old.ingest(_drive("bat-a", 0, [3590.0]))
    await old.checkpoint()
    await old.ingest(_drive("bat-b", 0, [0.0, 60.0, 120.0]))  # buffered an hour, uploaded now
    new = _make_shard(_backends(history, checkpoints, assigned=["bat-a", "bat-b"]), clock)
    try:
        assert await new.get("bat-b") == await old.get("bat-b")
    finally:
        await old.aclose()
        await new.aclose()


class _FlakyHistory(MemoryHistory):
    """A history store whose first write fails (a Postgres blip)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    async def write(self, batch: TelemetryBatch) -> int:
        self.calls += 1
        if self.calls == 1:
            raise ConnectionError("postgres down")
        return await super().write(batch)


async def test_failed_history_write_fails_the_ingest(clock: ManualClock) -> None:
    """ingest() raises when history cannot be written, so the bridge does not acknowledge."""
    history = _FlakyHistory()
    s = _make_shard(
        ShardBackends(history, MemoryState(), MemoryCheckpoints(), MemoryAssignments()), clock
    )
    try:
        with pytest.raises(ConnectionError, match="postgres down"):
            await s.ingest(_drive("bat-a", 0, [0.0, 1.0]))
    finally:
        await s.aclose()


async def test_redelivery_after_a_failed_history_write_is_persisted(clock: ManualClock) -> None:
    """Messages whose history write failed are written when the bridge redelivers them."""
    history = _FlakyHistory()
    s = _make_shard(
        ShardBackends(history, MemoryState(), MemoryCheckpoints(), MemoryAssignments()), clock
    )
    batch = _drive("bat-a", 0, [0.0, 1.0])
    try:
        with pytest.raises(ConnectionError):
            await s.ingest(batch)
        await s.ingest(batch)
        assert sum(b.n_samples for b in history.batches) == 2
    finally:
        await s.aclose()


# ---------------------------------------------------------------------------- reads
async def test_reads_through_the_shard(shard: TwinShard) -> None:
    """get, window, top_n, group_stats and battery_ids answer from the shard's table."""
    await shard.ingest(
        make_batch(
            message("bat-a", 0, T0_S + np.array([0.0, 1.0]), soc_pct=[30.0, 20.0]),
            message("bat-b", 0, [T0_S], soc_pct=70.0),
            message("bat-c", 0, [T0_S], soc_pct=50.0),
        )
    )
    snap = await shard.get("bat-a")
    assert snap is not None and (snap.soc_pct, snap.samples_total) == (20.0, 2)
    assert await shard.get("nope") is None
    window = await shard.window("bat-a")
    assert window is not None
    assert window["soc_pct"] == [30.0, 20.0]
    assert window["cell_min_v"] == [None, None]  # NaN becomes None for JSON
    assert set(window) == set(SAMPLE_FIELDS)
    assert await shard.window("nope") is None
    rows = await shard.top_n("soc_pct", 2, True, [])
    assert [(r.battery_id, r.value) for r in rows] == [("bat-b", 70.0), ("bat-c", 50.0)]
    rows = await shard.top_n("soc_pct", 5, False, [Filter("soc_pct", "gt", 25.0)])
    assert [r.battery_id for r in rows] == ["bat-c", "bat-b"]
    groups = await shard.group_stats(None, ["soc_pct"], [])
    assert groups["all"].to_dict()["soc_pct"]["mean"] == pytest.approx((20.0 + 70.0 + 50.0) / 3)
    assert await shard.battery_ids() == ["bat-a", "bat-b", "bat-c"]
    assert await shard.ping()


async def test_set_lstm_state_for_many_twins(shard: TwinShard) -> None:
    """set_lstm_state() writes one row of (h, c) per battery and counts a step for each."""
    await shard.ingest(make_batch(message("bat-a", 0, [T0_S]), message("bat-b", 0, [T0_S])))
    h = np.array([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]])
    await shard.set_lstm_state(["bat-b", "bat-a"], h, -h)
    table = shard.table
    np.testing.assert_array_equal(table.lstm_h[table.slot("bat-b")], h[0])
    np.testing.assert_array_equal(table.lstm_c[table.slot("bat-a")], -h[1])
    snap = await shard.get("bat-a")
    assert snap is not None and snap.lstm_steps == 1
    with pytest.raises(KeyError, match="nope"):
        await shard.set_lstm_state(["nope"], h[:1], h[:1])


async def test_start_connects_once(clock: ManualClock) -> None:
    """Concurrent first calls share one start: the backends are opened once."""
    calls = 0
    backends = _backends()

    async def connect() -> ShardBackends:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0)
        return backends

    s = TwinShard(
        0, PARAMS, connect, clock=clock, checkpoint_interval_s=3600.0, state_flush_interval_s=3600.0
    )
    try:
        await asyncio.gather(s.start(), s.get("x"), s.battery_ids(), s.start())
        assert calls == 1
    finally:
        await s.aclose()


# ---------------------------------------------------------------------------- scoring reads
class _NoModels:
    """A :class:`twins.scoring.ModelClient` whose every model is down."""

    async def call(self, model: str, ids: list[str], arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise ConnectionError(f"{model} is not deployed")


async def test_reads_judge_stale_scores_by_the_shards_scoring_interval(clock: ManualClock) -> None:
    """A shard scoring every 20 s with stale_after_ticks=5 calls a score stale after 100 s,
    in its snapshots and in the columns it hands the HTTP replicas; a shard without a
    scorer uses the default 3 ticks (its checkpointed scores age too)."""
    params = ScoringParams(stale_after_ticks=5.0)
    scorer = TwinScorer(_NoModels(), MemoryDemand(), params=params, clock=clock)
    s = _make_shard(_backends(), clock, scorer=scorer, score_interval_s=20.0)  # type: ignore[arg-type]
    plain = _make_shard(_backends(), clock, score_interval_s=20.0)
    try:
        assert s.score_stale_after_s == 100.0 and plain.score_stale_after_s == 60.0
        await s.ingest(_drive("bat-a", 0, [0.0]))
        s.table.health_scored_at_s[s.table.slot("bat-a")] = clock.now_s() - 80.0
        snap = await s.get("bat-a")
        assert snap is not None and snap.score_age_s["health"] == 80.0 and not snap.scores_stale
        cols = await s.columns()
        assert cols.score_stale_after_s == 100.0 and not cols.state_of(0, cols.as_of_s)["scores_stale"]
        clock.advance(20.5)
        snap = await s.get("bat-a")
        assert snap is not None and snap.scores_stale and snap.score_age_s["health"] == 100.5
        cols = await s.columns()
        assert cols.state_of(0, cols.as_of_s)["scores_stale"] is True
    finally:
        await s.aclose()
        await plain.aclose()


async def test_scoring_reads_are_typed_records(clock: ManualClock) -> None:
    """anomaly_events answers the scorer's AnomalyEvent records, newest first, at most
    ``limit``; scoring_report answers a copy of the last ScoreReport (None without models)."""
    scorer = TwinScorer(_NoModels(), MemoryDemand(), clock=clock)
    backends = _backends()

    async def connect() -> ShardBackends:
        return backends

    s = TwinShard(
        0, PARAMS, connect, clock=clock, checkpoint_interval_s=3600.0,
        state_flush_interval_s=3600.0, scorer=scorer, score_interval_s=3600.0,
    )  # fmt: skip
    plain = _make_shard(_backends(), clock)
    try:
        await s.ingest(_drive("bat-a", 0, [0.0, 1.0]))
        report = await s.score()
        assert report.errors and report.twins == 1
        copy = await s.scoring_report()
        assert isinstance(copy, ScoreReport) and copy == report
        copy.errors.clear()  # the caller's copy: the shard's own report is untouched
        copy.retries["health"] = 1
        assert scorer.last_report.errors and scorer.last_report.retries == {}
        scorer.events.extend(
            AnomalyEvent("bat-a", kind, 0.5, T0_S + k) for k, kind in enumerate(("temp_rise", "voltage_sag", "cell_imbalance"))
        )
        events = await s.anomaly_events(limit=2)
        assert all(isinstance(e, AnomalyEvent) for e in events)
        assert [e.kind for e in events] == ["cell_imbalance", "voltage_sag"]
        assert await plain.scoring_report() is None and await plain.anomaly_events() == []
    finally:
        await s.aclose()
        await plain.aclose()


# ---------------------------------------------------------------------------- refused messages
async def test_refused_message_is_reported_not_persisted_and_raises_an_event(
    shard: TwinShard, backends: ShardBackends, clock: ManualClock
) -> None:
    """A message the twin refuses comes back in IngestReport.rejected (batch index, reason,
    detail), is not written to history, and becomes an anomaly event of its battery, with
    the models off (no scorer) too."""
    await shard.ingest(make_batch(message("bat-a", 0, [T0_S], vehicle_id="veh-1")))
    clock.advance(10.0)
    report = await shard.ingest(
        make_batch(
            message("bat-b", 0, [T0_S + 5.0]),
            message("bat-a", 1, [T0_S + 10.0], vehicle_id="veh-2", soc_pct=3.0, temp_c=80.0),
        )
    )
    assert [(r.index, r.reason.value) for r in report.rejected] == [(1, "battery_claim_conflict")]
    assert "veh-2" in report.rejected[0].detail
    assert (report.messages, report.accepted_messages, report.accepted_samples) == (2, 1, 1)
    assert shard.scorer is None
    assert [b for batch in _history(backends).batches for b in batch.battery_ids] == ["bat-a", "bat-b"]
    events = await shard.anomaly_events()
    assert [(e.battery_id, e.kind, e.at_s) for e in events] == [("bat-a", "battery_claim_conflict", T0_S + 10.0)]
    snap = await shard.get("bat-a")
    assert snap is not None and snap.vehicle_id == "veh-1" and snap.soc_pct == 80.0


async def test_refusal_events_join_model_events_and_never_reach_the_planner(clock: ManualClock) -> None:
    """With the models on, refusal events are listed with the models' events, newest first;
    they set no flag on the twin and are not pushed to the planner as urgent jobs."""
    pushed: list[list[Candidate]] = []

    async def planner(candidates: list[Candidate]) -> None:
        pushed.append(candidates)

    scorer = TwinScorer(_NoModels(), MemoryDemand(), clock=clock)
    backends = _backends()

    async def connect() -> ShardBackends:
        return backends

    s = TwinShard(
        0, PARAMS, connect, clock=clock, checkpoint_interval_s=3600.0,
        state_flush_interval_s=3600.0, scorer=scorer, score_interval_s=3600.0, push_urgent=planner,
    )  # fmt: skip
    try:
        scorer.events.append(AnomalyEvent("bat-x", "temp_rise", 3.0, T0_S - 1.0))
        await s.ingest(_drive("bat-a", 0, [0.0]))
        report = await s.ingest(_drive("bat-a", 100_000_000, [1.0]))
        assert [r.reason.value for r in report.rejected] == ["seq_out_of_range"]
        await s.score()
        events = await s.anomaly_events(limit=10)
        assert [(e.battery_id, e.kind) for e in events] == [("bat-a", "seq_out_of_range"), ("bat-x", "temp_rise")]
        assert [e.kind for e in await s.anomaly_events(limit=1)] == ["seq_out_of_range"]
        assert pushed == []
        assert s.table.anomaly_flags[s.table.slot("bat-a")] == 0
        assert await s.swap_candidates(0) == []
    finally:
        await s.aclose()


async def test_done_swap_recorded_with_set_vehicle_lets_batteries_change_vehicle(shard: TwinShard) -> None:
    """The planner's done swap, set_vehicle(out, None) and set_vehicle(in, vehicle), lets both
    batteries report from their new vehicles at once, inside the claim window."""
    await shard.ingest(
        make_batch(
            message("bat-a", 0, [T0_S], vehicle_id="veh-1"), message("bat-b", 0, [T0_S], vehicle_id="veh-2")
        )
    )
    await shard.set_vehicle("bat-a", None)  # taken out of veh-1
    await shard.set_vehicle("bat-b", "veh-1")  # put into veh-1
    report = await shard.ingest(
        make_batch(
            message("bat-b", 1, [T0_S + 60.0], vehicle_id="veh-1"),
            message("bat-a", 1, [T0_S + 60.0], vehicle_id="veh-3"),
        )
    )
    assert report.rejected == () and report.accepted_messages == 2


async def test_restart_replays_history_without_checking_it_again(clock: ManualClock) -> None:
    """History holds what the twins accepted, some of it thanks to facts history lacks (a
    swap recorded with set_vehicle): a restarted shard replays it all without refusals."""
    history = MemoryHistory()
    old = _make_shard(_backends(history, assigned=["bat-a"]), clock)
    await old.ingest(make_batch(message("bat-a", 0, [T0_S], vehicle_id="veh-1")))
    await old.set_vehicle("bat-a", "veh-2")
    report = await old.ingest(make_batch(message("bat-a", 1, [T0_S + 60.0], vehicle_id="veh-2")))
    assert report.rejected == ()
    await old.aclose()
    new = _make_shard(_backends(history, assigned=["bat-a"]), clock)
    try:
        snap = await new.get("bat-a")
        assert snap is not None and (snap.vehicle_id, snap.samples_total) == ("veh-2", 2)
    finally:
        await new.aclose()


def test_ingest_report_total_sums_counts_and_reindexes_rejections() -> None:
    """The router's report of a whole batch: counts summed over the shards' reports, and each
    rejected message indexed into the whole batch through its part's positions."""
    a = IngestReport(2, 1, 0, 3, 3, 0, 0, 1, 0, rejected=(RejectedMessage(1, RejectReason.SEQ_OUT_OF_RANGE, "x"),))
    b = IngestReport(1, 0, 0, 0, 0, 0, 0, 0, 0, rejected=(RejectedMessage(0, RejectReason.BATTERY_CLAIM_CONFLICT, "y"),))
    total = IngestReport.total([(a, [0, 3]), (b, [1])])
    assert (total.messages, total.accepted_messages, total.accepted_samples, total.new_twins) == (3, 1, 3, 1)
    assert [(r.index, r.reason.value, r.detail) for r in total.rejected] == [
        (1, "battery_claim_conflict", "y"), (3, "seq_out_of_range", "x"),
    ]  # fmt: skip


# ---------------------------------------------------------------------------- alerts
async def test_alert_reports_go_to_the_sink_in_order(clock: ManualClock) -> None:
    """A shard with alert rules judges its twins on its own tick and sends each complete
    report to the sink, in the order made: a hot sample is in the first report, and gone
    from the one after a cool sample replaced it."""
    from twins.alert_rules import TwinAlertReport, TwinAlertRules

    reports: list[TwinAlertReport] = []

    async def sink(report: TwinAlertReport) -> None:
        await asyncio.sleep(0)  # a real sink awaits a remote call
        reports.append(report)

    s = TwinShard(
        3, PARAMS, _connect(_backends()), clock=clock, checkpoint_interval_s=3600.0, state_flush_interval_s=3600.0,
        alert_rules=TwinAlertRules("shard-3"), alert_sink=sink, alert_interval_s=0.01,
    )  # fmt: skip
    try:
        await s.ingest(_drive("b-1", 1, [0.0, 1.0], temp_c=[30.0, 82.0]))
        assert await _wait_for(lambda: any(r.signals for r in reports))
        first = next(r for r in reports if r.signals)
        assert first.source == "shard-3" and [x.key for x in first.signals] == ["pack_overtemp:b-1"]
        await s.ingest(_drive("b-1", 2, [60.0], temp_c=31.0))
        report = await s.evaluate_alerts()
        assert report is not None and report.signals == []
        assert reports[-1] is report
    finally:
        await s.aclose()


def _connect(backends: ShardBackends) -> Callable[[], Awaitable[ShardBackends]]:
    async def connect() -> ShardBackends:
        return backends

    return connect


class _GatedHistory(MemoryHistory):
    """A history store whose writes wait for ``gate`` and fail while ``down`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.gate.set()
        self.down = False

    async def write(self, batch: TelemetryBatch) -> int:
        await self.gate.wait()
        if self.down:
            raise ConnectionError("postgres down")
        return await super().write(batch)


async def test_a_checkpoint_never_holds_samples_history_lacks(clock: ManualClock) -> None:
    """A checkpoint taken while a write is in flight waits for it to commit: restored after
    a crash, a table holding uncommitted messages would take their redelivery for duplicates
    and the messages would never reach history."""
    history = _GatedHistory()
    checkpoints = MemoryCheckpoints()
    s = _make_shard(ShardBackends(history, MemoryState(), checkpoints, MemoryAssignments()), clock)
    try:
        await s.start()
        history.gate.clear()
        ingest = asyncio.create_task(s.ingest(_drive("bat-a", 0, [0.0, 1.0])))
        await asyncio.sleep(0.01)
        checkpoint = asyncio.create_task(s.checkpoint())
        await asyncio.sleep(0.01)
        later = asyncio.create_task(s.ingest(_drive("bat-a", 1, [2.0, 3.0])))
        await asyncio.sleep(0.01)
        assert not checkpoint.done() and not later.done()  # waiting on the write; applies held
        history.gate.set()
        await asyncio.gather(ingest, checkpoint, later)
        restored = _make_shard(ShardBackends(MemoryHistory(), MemoryState(), checkpoints, MemoryAssignments()), clock)
        try:
            twin = await restored.get("bat-a")
            assert twin is not None and twin.samples_total == 2  # the committed message only
        finally:
            await restored.aclose()
    finally:
        await s.aclose()


async def test_after_a_failed_write_no_later_write_commits_before_the_rebuild(clock: ManualClock) -> None:
    """Fail-stop: the write queued behind a failed one fails too, so history never holds a
    newer message ahead of an older one that failed (which would then come back *late*)."""
    history = _GatedHistory()
    s = _make_shard(ShardBackends(history, MemoryState(), MemoryCheckpoints(), MemoryAssignments()), clock)
    try:
        await s.start()
        history.gate.clear()
        history.down = True
        first = asyncio.create_task(s.ingest(_drive("bat-a", 0, [0.0, 1.0])))
        await asyncio.sleep(0.01)
        second = asyncio.create_task(s.ingest(_drive("bat-a", 1, [2.0, 3.0])))
        await asyncio.sleep(0.01)
        history.gate.set()
        await asyncio.sleep(0.01)
        history.down = False  # back before the second write would have run
        for task in (first, second):
            with pytest.raises(ConnectionError):
                await task
        assert history.batches == []
        # Redelivered in order, both are applied and written once.
        await s.ingest(_drive("bat-a", 0, [0.0, 1.0]))
        await s.ingest(_drive("bat-a", 1, [2.0, 3.0]))
        twin = await s.get("bat-a")
        assert twin is not None and twin.samples_total == 4 and twin.last_ts == T0_S + 3.0
        assert sum(b.n_samples for b in history.batches) == 4
    finally:
        await s.aclose()
