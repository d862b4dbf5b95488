"""Read snapshots for the HTTP tests: a fleet's twins as columns, on a clock the test moves.

:class:`ColumnsLoader` stands in for the runtime's loader (one call per shard): it takes
the fake fleet's table as columns when called, counts the calls, and can be told to fail
or to wait, so tests see what a replica answers between refreshes.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from serve.http.read_snapshot import ReadSnapshots
from twins.twin_columns import TwinColumns

from .fakes import NOW_S, FakeFleet

__all__ = ["ColumnsLoader", "FakeClock", "snapshots_over"]


@dataclass
class FakeClock:
    """Unix seconds that move only when a test says so."""

    now_s: float = NOW_S

    def __call__(self) -> float:
        return self.now_s

    def advance(self, dt_s: float) -> None:
        self.now_s += dt_s


@dataclass
class ColumnsLoader:
    """Takes ``fleet``'s twins as columns as of ``clock`` (what the shards would answer).

    Parameters
    ----------
    fleet
        Whose table is read.
    clock
        Dates the columns.
    fail
        Raised by the next calls while set.
    gate
        When set, each call waits for it (a slow shard).
    """

    fleet: FakeFleet
    clock: FakeClock
    calls: int = 0
    fail: Exception | None = None
    gate: asyncio.Event | None = None
    called: asyncio.Event = field(default_factory=asyncio.Event)

    async def __call__(self) -> TwinColumns:
        self.calls += 1
        self.called.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        return TwinColumns.from_table(self.fleet.table, self.fleet.zones, self.clock())


def snapshots_over(
    fleet: FakeFleet, clock: FakeClock, refresh_interval_s: float = 1.0
) -> tuple[ReadSnapshots, ColumnsLoader]:
    """A :class:`ReadSnapshots` over ``fleet`` on ``clock``, and its loader."""
    loader = ColumnsLoader(fleet, clock)
    return ReadSnapshots(loader, refresh_interval_s=refresh_interval_s, clock=clock), loader
