"""Consistent hashing with bounded loads: which shard hosts a battery.

Each shard owns ``vnodes`` points on a 64-bit ring. A new battery walks clockwise from its
own hash to the first shard with room (fewer than ``capacity`` twins); when every shard is
full a new shard joins the ring. Placement is therefore deterministic, spreads evenly, and
never exceeds ``capacity`` (Mirrokni, Thorup & Zadimoghaddam, "Consistent Hashing with
Bounded Loads", SODA 2018). With ``capacity=1`` every battery gets a shard of its own.

Assignments are sticky: the directory records them, so a battery never moves when shards
join, and its twin state never has to migrate.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Iterable, Mapping

__all__ = ["BoundedHashRing", "stable_hash"]


def stable_hash(key: str) -> int:
    """64-bit hash that is the same in every process (``hash()`` is salted per process)."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big")


class BoundedHashRing:
    """Sticky battery → shard placement.

    Parameters
    ----------
    capacity
        Most twins one shard may host (the ``shard_size`` setting).
    vnodes
        Points per shard on the ring; more points spread load more evenly.
    initial_shards
        Shards on the ring before the first battery arrives (size it to the expected fleet
        so batteries spread at once instead of filling shard 0 first).
    """

    def __init__(self, capacity: int, vnodes: int = 64, initial_shards: int = 1) -> None:
        if capacity < 1:
            raise ValueError(f"Expected capacity >= 1, got {capacity}.")
        if vnodes < 1 or initial_shards < 0:
            raise ValueError(f"Expected vnodes >= 1 and initial_shards >= 0, got {vnodes}, {initial_shards}.")
        self.capacity = capacity
        self.vnodes = vnodes
        self._points: list[int] = []
        self._owners: list[int] = []
        self.loads: list[int] = []
        self.assignments: dict[str, int] = {}
        self._non_full: set[int] = set()
        for _ in range(initial_shards):
            self.add_shard()

    @property
    def num_shards(self) -> int:
        return len(self.loads)

    def add_shard(self) -> int:
        shard = len(self.loads)
        self.loads.append(0)
        self._non_full.add(shard)
        for v in range(self.vnodes):
            p = stable_hash(f"shard-{shard}#{v}")
            i = bisect.bisect(self._points, p)
            self._points.insert(i, p)
            self._owners.insert(i, shard)
        return shard

    def restore(self, assignments: Mapping[str, int]) -> None:
        """Load recorded assignments (adding shards up to the highest id seen)."""
        for bid, shard in assignments.items():
            while shard >= self.num_shards:
                self.add_shard()
            if bid not in self.assignments:
                self.assignments[bid] = shard
                self.loads[shard] += 1
                if self.loads[shard] >= self.capacity:
                    self._non_full.discard(shard)

    def lookup(self, battery_id: str) -> int | None:
        return self.assignments.get(battery_id)

    def assign(self, battery_id: str) -> int:
        """The shard of ``battery_id``, placing it if it is new."""
        shard = self.assignments.get(battery_id)
        if shard is not None:
            return shard
        if not self._non_full:
            self.add_shard()
        if len(self._non_full) == 1:
            shard = next(iter(self._non_full))
        else:
            i = bisect.bisect(self._points, stable_hash(battery_id))
            n = len(self._points)
            while True:
                owner = self._owners[i % n]
                if owner in self._non_full:
                    shard = owner
                    break
                i += 1
        self.assignments[battery_id] = shard
        self.loads[shard] += 1
        if self.loads[shard] >= self.capacity:
            self._non_full.discard(shard)
        return shard

    def assign_many(self, battery_ids: Iterable[str]) -> list[int]:
        return [self.assign(b) for b in battery_ids]
