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

from twins.samples import SAMPLE_FIELDS, TelemetryBatch

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

    async def replay(self, battery_ids: Sequence[str], since_ts: float) -> TelemetryBatch:
        """Persisted samples of these batteries with ts > since_ts, one message per (battery, seq)."""
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
    """History kept in a list of batches (tests)."""

    batches: list[TelemetryBatch] = field(default_factory=list)

    async def write(self, batch: TelemetryBatch) -> int:
        self.batches.append(batch)
        return batch.n_samples

    async def replay(self, battery_ids: Sequence[str], since_ts: float) -> TelemetryBatch:
        wanted = set(battery_ids)
        parts = []
        for b in self.batches:
            keep = np.array([bid in wanted for bid in b.battery_ids], dtype=bool)
            if keep.any():
                parts.append(b.select_messages(keep))
        if not parts:
            return TelemetryBatch.empty()
        joined = TelemetryBatch.concat(parts)
        ts_ok = joined.columns["ts"] > since_ts
        # Count per message with bincount, not np.add.reduceat over msg_offsets: reduceat
        # misreads a message without samples (it returns the next message's first value)
        # and raises IndexError when such a message comes last.
        msg_ok = np.bincount(joined.message_index()[ts_ok], minlength=joined.n_messages) > 0
        out = joined.select_messages(msg_ok)
        keep_s = out.columns["ts"] > since_ts
        counts = np.bincount(out.message_index()[keep_s], minlength=out.n_messages)
        offsets = np.zeros(out.n_messages + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        return TelemetryBatch(
            battery_ids=list(out.battery_ids),
            vehicle_ids=list(out.vehicle_ids),
            seqs=out.seqs,
            msg_offsets=offsets,
            columns={k: out.columns[k][keep_s] for k in SAMPLE_FIELDS},
            received_at_s=out.received_at_s,
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
