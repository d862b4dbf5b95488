"""ShardDirectory: the one place that knows which shard hosts which battery.

Placement is :class:`~twins.hash_ring.BoundedHashRing` (consistent hashing with bounded
loads); assignments are recorded (PostgreSQL in production) so they survive restarts and a
battery never moves. The directory starts shard actors as the fleet grows. Readers (the
bridge, the HTTP API) cache assignments, so the directory sees one call per *new* battery,
not one per message.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Protocol, cast

from twins.hash_ring import BoundedHashRing

__all__ = ["AssignmentStore", "MemoryAssignmentStore", "ShardDirectory"]


class AssignmentStore(Protocol):
    async def load_all(self) -> dict[str, int]: ...

    async def save(self, assignments: Mapping[str, int]) -> None: ...


class MemoryAssignmentStore:
    def __init__(self) -> None:
        self.saved: dict[str, int] = {}

    async def load_all(self) -> dict[str, int]:
        return dict(self.saved)

    async def save(self, assignments: Mapping[str, int]) -> None:
        self.saved.update(assignments)


class ShardDirectory:
    """Battery → shard map; spawns shards on demand.

    Parameters
    ----------
    shard_size
        Most twins per shard (``1`` gives one actor per battery).
    spawn_shard
        Starts (or finds) the shard with this id; awaited before its id is handed out.
    store
        Where assignments are recorded.
    initial_shards
        Shards created up front (size to the expected fleet).
    """

    def __init__(
        self,
        shard_size: int,
        spawn_shard: Callable[[int], Awaitable[None]],
        store: AssignmentStore | Callable[[], Awaitable[AssignmentStore]],
        initial_shards: int = 1,
    ) -> None:
        self._ring = BoundedHashRing(shard_size, initial_shards=0)
        self._initial_shards = initial_shards
        self._spawn = spawn_shard
        self._store_or_factory = store
        self._store: AssignmentStore | None = None
        self._spawned: set[int] = set()
        self._unsaved: dict[str, int] = {}
        self._lock = asyncio.Lock()
        self._started: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self._started is None:
            self._started = asyncio.get_running_loop().create_task(self._start())
        await asyncio.shield(self._started)

    async def _start(self) -> None:
        s = self._store_or_factory
        if hasattr(s, "load_all"):
            self._store = cast(AssignmentStore, s)  # hasattr does not narrow a union
        else:
            self._store = await s()
        assert self._store is not None
        self._ring.restore(await self._store.load_all())
        while self._ring.num_shards < self._initial_shards:
            self._ring.add_shard()
        await self._spawn_missing()

    async def _spawn_missing(self) -> None:
        missing = [i for i in range(self._ring.num_shards) if i not in self._spawned]
        # Actor starts are slow (a worker process each): start them concurrently.
        await asyncio.gather(*(self._spawn(i) for i in missing))
        self._spawned.update(missing)

    async def assign(self, battery_ids: Sequence[str]) -> list[int]:
        """Shard ids for these batteries, placing and recording new ones."""
        await self.start()
        assert self._store is not None
        async with self._lock:
            out = []
            for b in battery_ids:
                known = self._ring.lookup(b)
                if known is None:
                    known = self._ring.assign(b)
                    self._unsaved[b] = known
                out.append(known)
            # Placed but not yet started or saved (a call that failed half-way placed them
            # too): the shards start and the placements are saved before any caller gets
            # them, so a retry finishes what a failed call began.
            if self._unsaved or len(self._spawned) < self._ring.num_shards:
                await self._spawn_missing()
                if self._unsaved:
                    await self._store.save(dict(self._unsaved))
                    self._unsaved.clear()
            return out

    async def lookup(self, battery_ids: Sequence[str]) -> list[int | None]:
        await self.start()
        return [self._ring.lookup(b) for b in battery_ids]

    async def num_shards(self) -> int:
        await self.start()
        return self._ring.num_shards

    async def loads(self) -> list[int]:
        await self.start()
        return list(self._ring.loads)

    async def batteries_of(self, shard_id: int) -> list[str]:
        await self.start()
        return [b for b, s in self._ring.assignments.items() if s == shard_id]
