"""Tests for :mod:`twins.directory`: placements are started and saved before they are handed
out, also when a call fails half-way."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from twins.directory import MemoryAssignmentStore, ShardDirectory


class FlakyStore(MemoryAssignmentStore):
    """Fails its first ``fail`` saves (the database went away mid-call)."""

    def __init__(self, fail: int) -> None:
        super().__init__()
        self.fail = fail

    async def save(self, assignments: Mapping[str, int]) -> None:
        if self.fail:
            self.fail -= 1
            raise ConnectionError("postgres went away")
        await super().save(assignments)


class Spawner:
    def __init__(self, fail: int = 0) -> None:
        self.started: list[int] = []
        self.fail = fail

    async def __call__(self, shard_id: int) -> None:
        if self.fail:
            self.fail -= 1
            raise RuntimeError(f"shard {shard_id} did not start")
        self.started.append(shard_id)


async def test_new_batteries_are_placed_started_and_saved() -> None:
    store, spawn = MemoryAssignmentStore(), Spawner()
    d = ShardDirectory(2, spawn, store, initial_shards=1)
    shards = await d.assign(["a", "b", "c"])
    assert len(set(shards[:2])) == 1 and shards[2] != shards[0]  # 2 per shard
    assert sorted(spawn.started) == [0, 1]
    assert store.saved == {"a": shards[0], "b": shards[1], "c": shards[2]}
    assert await d.assign(["c", "a"]) == [shards[2], shards[0]]
    assert await d.lookup(["a", "zz"]) == [shards[0], None]


async def test_a_failed_save_is_finished_by_the_next_call() -> None:
    """The placement stays in the ring when its save fails; the retry must save it (the old
    code saw the battery as known and never saved it, so a restarted directory could place
    it elsewhere)."""
    store = FlakyStore(fail=1)
    d = ShardDirectory(10, Spawner(), store)
    with pytest.raises(ConnectionError):
        await d.assign(["a"])
    assert store.saved == {}
    (shard,) = await d.assign(["a"])
    assert store.saved == {"a": shard}


async def test_a_shard_that_failed_to_start_is_started_before_its_id_is_handed_out() -> None:
    spawn = Spawner()
    store = MemoryAssignmentStore()
    d = ShardDirectory(1, spawn, store, initial_shards=1)
    await d.assign(["a"])
    spawn.fail = 1
    with pytest.raises(RuntimeError, match="did not start"):
        await d.assign(["b"])  # needs shard 1
    (shard,) = await d.assign(["b"])
    assert shard == 1 and 1 in spawn.started and store.saved["b"] == 1
