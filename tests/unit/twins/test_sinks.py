"""Tests for :mod:`twins.sinks`: the in-memory backends that stand in for Postgres and Redis."""

from __future__ import annotations

import numpy as np

from contracts.samples import SAMPLE_FIELDS, TelemetryBatch
from twins.clock import ManualClock
from twins.sinks import (
    MemoryAssignments,
    MemoryCheckpoints,
    MemoryHistory,
    MemoryState,
    ShardBackends,
)

from .factories import T0_S, make_batch, message


async def test_history_replay_selects_batteries_by_write_time() -> None:
    """With a clock, replay() returns the asked batteries' messages written after the bound,
    whatever their sample time, ordered by battery then seq."""
    clock = ManualClock(T0_S)
    history = MemoryHistory(clock=clock)
    await history.write(
        make_batch(
            message("bat-a", 0, T0_S + np.array([0.0, 10.0, 20.0]), soc_pct=[80.0, 79.0, 78.0]),
            message("bat-b", 0, T0_S + np.array([5.0, 15.0])),
        )
    )
    clock.advance(100.0)
    await history.write(
        make_batch(
            message("bat-a", 2, T0_S + np.array([40.0]), soc_pct=[75.0]),
            message("bat-a", 1, T0_S - np.array([3600.0, 3500.0]), soc_pct=[77.0, 76.0]),
        )
    )
    out = await history.replay(["bat-a"], ingested_since_s=T0_S + 50.0)
    assert list(out.battery_ids) == ["bat-a", "bat-a"]
    np.testing.assert_array_equal(out.seqs, [1, 2])
    np.testing.assert_array_equal(out.msg_offsets, [0, 2, 3])
    np.testing.assert_array_equal(out.columns["soc_pct"], [77.0, 76.0, 75.0])
    assert (await history.replay(["bat-a"], ingested_since_s=T0_S + 200.0)).n_messages == 0


async def test_history_replay_without_clock_returns_everything() -> None:
    """Without a clock every message of the asked batteries is replayed (allowed: twins dedup)."""
    history = MemoryHistory()
    await history.write(make_batch(message("bat-a", 0, [T0_S]), message("bat-a", 1, [T0_S + 10.0])))
    out = await history.replay(["bat-a"], ingested_since_s=T0_S + 1e6)
    np.testing.assert_array_equal(out.seqs, [0, 1])
    assert (await history.replay(["bat-z"], ingested_since_s=-np.inf)).n_messages == 0


async def test_history_replay_copes_with_messages_without_samples() -> None:
    """Messages without samples (allowed by TelemetryBatch) neither crash nor shift a replay."""
    cols = {k: np.full(2, 1.0) for k in SAMPLE_FIELDS}
    cols["ts"] = T0_S + np.array([1.0, 2.0])
    history = MemoryHistory()
    await history.write(
        TelemetryBatch(
            ["a", "a", "a", "a"], ["v"] * 4, np.arange(4), np.array([0, 1, 1, 2, 2]), cols
        )
    )
    out = await history.replay(["a"], ingested_since_s=T0_S)
    np.testing.assert_array_equal(out.seqs, [0, 1, 2, 3])
    np.testing.assert_array_equal(out.msg_offsets, [0, 1, 1, 2, 2])
    np.testing.assert_array_equal(out.columns["ts"], cols["ts"])


async def test_memory_state_checkpoints_and_assignments() -> None:
    """State keeps the latest bytes per battery; checkpoints the latest per shard."""
    state = MemoryState()
    await state.publish({"a": b"1", "b": b"2"})
    await state.publish({"a": b"3"})
    assert state.states == {"a": b"3", "b": b"2"}
    cps = MemoryCheckpoints()
    assert await cps.load(0) is None
    await cps.save(0, b"old", 1, 10.0)
    await cps.save(0, b"new", 2, 20.0)
    assert await cps.load(0) == (b"new", 20.0)
    assignments = MemoryAssignments({0: ["a"]})
    got = await assignments.batteries_of(0)
    got.append("mutated")
    assert await assignments.batteries_of(0) == ["a"]
    assert await assignments.batteries_of(1) == []


async def test_backends_aclose_closes_parts_that_can_close() -> None:
    """ShardBackends.aclose() awaits aclose() on each backend that has one."""
    closed: list[str] = []

    class ClosingState(MemoryState):
        async def aclose(self) -> None:
            closed.append("state")

    backends = ShardBackends(
        MemoryHistory(), ClosingState(), MemoryCheckpoints(), MemoryAssignments()
    )
    await backends.aclose()
    assert closed == ["state"]
