"""Tests for :mod:`twins.hash_ring`: bounded, deterministic and sticky battery placement."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

import twins
from twins.hash_ring import BoundedHashRing, stable_hash

BATTERIES = [f"bat-{i:05d}" for i in range(4000)]


def test_stable_hash_is_pinned() -> None:
    """stable_hash() never changes: a new value would move every battery of a live fleet."""
    assert stable_hash("bat-1") == 12083640798802536926
    assert stable_hash("") == 16476032584258269876
    assert 0 <= stable_hash("x" * 1000) < 2**64


def test_stable_hash_is_the_same_in_another_process() -> None:
    """Unlike hash(), stable_hash() does not depend on the process's hash seed."""
    code = "from twins.hash_ring import stable_hash; print(stable_hash('bat-1'))"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "12345", "PYTHONPATH": str(Path(twins.__file__).parents[1])},
    )
    assert int(out.stdout) == stable_hash("bat-1")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"capacity": 0}, "capacity >= 1"),
        ({"capacity": 5, "vnodes": 0}, "vnodes >= 1"),
        ({"capacity": 5, "initial_shards": -1}, "initial_shards >= 0"),
    ],
)
def test_ring_rejects_bad_parameters(kwargs: dict[str, int], match: str) -> None:
    """capacity and vnodes must be positive, initial_shards non-negative."""
    with pytest.raises(ValueError, match=match):
        BoundedHashRing(**kwargs)


@pytest.mark.parametrize("initial_shards", [0, 1, 4])
def test_capacity_is_never_exceeded(initial_shards: int) -> None:
    """200 batteries at capacity 7 fill 29 shards, none above 7, loads matching assignments."""
    ring = BoundedHashRing(capacity=7, initial_shards=initial_shards)
    shards = ring.assign_many(BATTERIES[:200])
    assert max(ring.loads) <= 7
    assert ring.num_shards == 29  # a shard joins only when all are full: ceil(200 / 7)
    assert sorted(ring.loads) == [4] + [7] * 28
    assert Counter(shards) == {s: load for s, load in enumerate(ring.loads) if load}
    assert len(ring.assignments) == 200


def test_capacity_one_gives_every_battery_its_own_shard() -> None:
    """With capacity=1 the ring is one shard per battery."""
    ring = BoundedHashRing(capacity=1)
    shards = ring.assign_many(BATTERIES[:25])
    assert sorted(shards) == list(range(25))
    assert ring.loads == [1] * 25


def test_placement_is_deterministic_across_instances() -> None:
    """Two rings with the same settings and arrivals place every battery alike."""
    a = BoundedHashRing(capacity=300, vnodes=16, initial_shards=3)
    b = BoundedHashRing(capacity=300, vnodes=16, initial_shards=3)
    assert a.assign_many(BATTERIES[:1000]) == b.assign_many(BATTERIES[:1000])
    assert a.loads == b.loads


def test_placement_follows_the_hash_while_shards_have_room() -> None:
    """Below capacity a battery's shard depends on its id, not on who arrived first."""
    forward = BoundedHashRing(capacity=10_000, initial_shards=4)
    backward = BoundedHashRing(capacity=10_000, initial_shards=4)
    forward.assign_many(BATTERIES[:500])
    backward.assign_many(reversed(BATTERIES[:500]))
    assert forward.assignments == backward.assignments


@pytest.mark.parametrize("n_shards", [4, 8])
def test_initial_shards_spread_batteries_evenly(n_shards: int) -> None:
    """4000 batteries over 4 or 8 empty shards land within ±40 % of an even share each."""
    ring = BoundedHashRing(capacity=100_000, initial_shards=n_shards)
    ring.assign_many(BATTERIES)
    share = len(BATTERIES) / n_shards
    assert all(0.6 * share <= load <= 1.4 * share for load in ring.loads), ring.loads


def test_single_initial_shard_fills_first() -> None:
    """With one shard on the ring, batteries fill it before a second shard joins."""
    ring = BoundedHashRing(capacity=10, initial_shards=1)
    assert ring.assign_many(BATTERIES[:10]) == [0] * 10
    assert ring.assign(BATTERIES[10]) == 1


def test_assign_is_sticky() -> None:
    """Assigning a battery again returns its shard and does not count it twice."""
    ring = BoundedHashRing(capacity=3, initial_shards=2)
    first = ring.assign("bat-a")
    assert ring.assign("bat-a") == first
    assert ring.lookup("bat-a") == first
    assert sum(ring.loads) == 1


def test_lookup_of_an_unknown_battery_is_none() -> None:
    """lookup() never places a battery."""
    ring = BoundedHashRing(capacity=3)
    assert ring.lookup("bat-a") is None
    assert ring.assignments == {}


def test_new_shards_never_move_placed_batteries() -> None:
    """Shards joining the ring leave every earlier assignment where it was."""
    ring = BoundedHashRing(capacity=1000, initial_shards=2)
    before = dict(zip(BATTERIES[:50], ring.assign_many(BATTERIES[:50]), strict=True))
    ring.add_shard()
    ring.add_shard()
    ring.assign_many(BATTERIES[50:300])
    assert {b: ring.assign(b) for b in before} == before
    assert ring.loads[2] > 0 and ring.loads[3] > 0  # the new shards do take new batteries


def test_restore_keeps_recorded_assignments() -> None:
    """A ring restored from the directory returns the recorded shards and their loads."""
    original = BoundedHashRing(capacity=5, initial_shards=2)
    original.assign_many(BATTERIES[:23])
    restored = BoundedHashRing(capacity=5, initial_shards=2)
    restored.restore(original.assignments)
    assert restored.assignments == original.assignments
    assert restored.loads == original.loads
    assert all(restored.assign(b) == s for b, s in original.assignments.items())
    assert sum(restored.loads) == 23


def test_restore_adds_shards_and_respects_capacity_afterwards() -> None:
    """Restoring an assignment to shard 4 grows the ring to 5 shards; full shards stay full."""
    ring = BoundedHashRing(capacity=2)
    ring.restore({"a": 4, "b": 4, "c": 0})
    assert ring.num_shards == 5
    assert ring.loads == [1, 0, 0, 0, 2]
    placed = ring.assign_many(BATTERIES[:7])
    assert 4 not in placed
    assert max(ring.loads) == 2
    assert ring.num_shards == 5  # 9 batteries fit 5 shards of 2 without a new one


def test_restore_does_not_override_a_placed_battery() -> None:
    """restore() keeps the shard a battery already has."""
    ring = BoundedHashRing(capacity=5, initial_shards=1)
    ring.assign("a")
    ring.restore({"a": 3})
    assert ring.lookup("a") == 0
    assert ring.loads[0] == 1 and ring.loads[3] == 0
