"""Time seams: twins and shards never call ``time.time()`` directly, so tests can move time."""

from __future__ import annotations

import time
from typing import Protocol

__all__ = ["Clock", "ManualClock", "WallClock"]


class Clock(Protocol):
    """Wall-clock time in Unix seconds."""

    def now_s(self) -> float: ...


class WallClock:
    """The real clock."""

    def now_s(self) -> float:
        return time.time()


class ManualClock:
    """A clock that moves only when told to (tests, replays, what-if runs)."""

    def __init__(self, start_s: float = 1.8e9) -> None:
        self._now_s = start_s

    def now_s(self) -> float:
        return self._now_s

    def advance(self, dt_s: float) -> None:
        if dt_s < 0:
            raise ValueError(f"Expected dt_s >= 0, got {dt_s}.")
        self._now_s += dt_s

    def set(self, now_s: float) -> None:
        """Move to ``now_s`` (never back: a clock the twins share only moves forward)."""
        if now_s < self._now_s:
            raise ValueError(f"Expected a time >= {self._now_s}, got {now_s}.")
        self._now_s = now_s
