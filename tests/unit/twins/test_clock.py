"""Tests for :mod:`twins.clock`: the time seam."""

from __future__ import annotations

import time

import pytest

from twins.clock import ManualClock, WallClock


def test_manual_clock_moves_only_when_told() -> None:
    """ManualClock starts where asked and advances by exactly dt_s."""
    clock = ManualClock(start_s=100.0)
    assert clock.now_s() == 100.0
    clock.advance(2.5)
    assert clock.now_s() == 102.5


def test_manual_clock_never_goes_back() -> None:
    """advance() refuses a negative step and leaves the time alone."""
    clock = ManualClock(start_s=100.0)
    with pytest.raises(ValueError, match="Expected dt_s >= 0, got -1"):
        clock.advance(-1.0)
    assert clock.now_s() == 100.0


def test_wall_clock_reads_unix_time() -> None:
    """WallClock is time.time()."""
    before = time.time()
    now = WallClock().now_s()
    assert before <= now <= time.time()
