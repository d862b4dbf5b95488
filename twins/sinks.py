"""What a shard needs from the outside world, as Protocols.

The shard writes history, publishes latest state and checkpoints through these seams;
production wires them to PostgreSQL and Redis (:mod:`twins.backends`), unit tests to the
in-memory versions below, so shard logic is tested without Ray, databases or brokers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from contracts.samples import SAMPLE_FIELDS, TelemetryBatch
from twins.clock import Clock

__all__ = [
    "AssignmentSource",
    "CheckpointSink",
    "HistorySink",
    "MemoryAssignments",
    "MemoryCheckpoints",
    "MemoryHistory",
    "MemoryState",
    "ShardBackends",
    "StateSink",
]


class HistorySink(Protocol):
    async def write(self, batch: TelemetryBatch) -> int:
        """Persist every sample of ``batch``; return rows written."""
        ...

    async def replay(self, battery_ids: Sequence[str], ingested_since_s: float) -> TelemetryBatch:
        """Samples of these batteries persisted after ``ingested_since_s`` (Unix s), whatever
        their sample time, one message per (battery, seq) in seq order.

        Returning more than that is allowed (twins drop what they already hold, by seq and
        time); returning less loses data on a restart.
        """
        ...


class StateSink(Protocol):
    async def publish(self, states: Mapping[str, bytes]) -> None:
        """Store the latest JSON state of each battery (for dashboards)."""
        ...


class CheckpointSink(Protocol):
    async def save(self, shard_id: int, payload: bytes, n_twins: int, taken_at_s: float) -> None: ...

    async def load(self, shard_id: int) -> tuple[bytes, float] | None: ...


class AssignmentSource(Protocol):
    async def batteries_of(self, shard_id: int) -> list[str]:
        """Batteries the directory placed on ``shard_id``."""
        ...


@dataclass
class ShardBackends:
    history: HistorySink
    state: StateSink
    checkpoints: CheckpointSink
    assignments: AssignmentSource

    async def aclose(self) -> None:
        for part in (self.history, self.state, self.checkpoints, self.assignments):
            close = getattr(part, "aclose", None)
            if close is not None:
                await close()


@dataclass
class MemoryHistory:
    """History kept in a list of batches (tests).

    With a ``clock``, each write is stamped and :meth:`replay` returns what was written
    after ``ingested_since_s``; without one it returns everything of those batteries,
    which the replay contract allows.
    """

    batches: list[TelemetryBatch] = field(default_factory=list)
    clock: Clock | None = None
    written_at_s: list[float] = field(default_factory=list)

    async def write(self, batch: TelemetryBatch) -> int:
        self.batches.append(batch)
        self.written_at_s.append(self.clock.now_s() if self.clock else 0.0)
        return batch.n_samples

    async def replay(self, battery_ids: Sequence[str], ingested_since_s: float) -> TelemetryBatch:
        wanted = set(battery_ids)
        parts = []
        for b, at in zip(self.batches, self.written_at_s, strict=True):
            if self.clock is not None and at <= ingested_since_s:
                continue
            keep = np.array([bid in wanted for bid in b.battery_ids], dtype=bool)
            if keep.any():
                parts.append(b.select_messages(keep))
        if not parts:
            return TelemetryBatch.empty()
        joined = TelemetryBatch.concat(parts)
        # One message per (battery, seq), batteries in id order, seq ascending.
        order = sorted(range(joined.n_messages), key=lambda k: (joined.battery_ids[k], int(joined.seqs[k])))
        offs = joined.msg_offsets
        idx = np.concatenate([np.arange(offs[k], offs[k + 1]) for k in order]) if order else np.zeros(0, np.int64)
        counts = np.diff(offs)[order]
        offsets = np.zeros(len(order) + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        return TelemetryBatch(
            battery_ids=[joined.battery_ids[k] for k in order],
            vehicle_ids=[joined.vehicle_ids[k] for k in order],
            seqs=joined.seqs[order],
            msg_offsets=offsets,
            columns={k: joined.columns[k][idx.astype(np.int64)] for k in SAMPLE_FIELDS},
            received_at_s=joined.recv[order],
        )


@dataclass
class MemoryState:
    states: dict[str, bytes] = field(default_factory=dict)

    async def publish(self, states: Mapping[str, bytes]) -> None:
        self.states.update(states)


@dataclass
class MemoryCheckpoints:
    saved: dict[int, tuple[bytes, float]] = field(default_factory=dict)

    async def save(self, shard_id: int, payload: bytes, n_twins: int, taken_at_s: float) -> None:
        self.saved[shard_id] = (payload, taken_at_s)

    async def load(self, shard_id: int) -> tuple[bytes, float] | None:
        return self.saved.get(shard_id)


@dataclass
class MemoryAssignments:
    by_shard: dict[int, list[str]] = field(default_factory=dict)

    async def batteries_of(self, shard_id: int) -> list[str]:
        return list(self.by_shard.get(shard_id, []))
