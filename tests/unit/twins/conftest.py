"""Shared fixtures for the twin tests: a manual clock and small tables."""

from __future__ import annotations

import pytest

from twins.clock import ManualClock
from twins.twin_table import TwinTable, TwinTableParams

from .factories import T0_S


@pytest.fixture
def clock() -> ManualClock:
    """A clock frozen at the start of the hand-made series (``T0_S``) until advanced."""
    return ManualClock(start_s=T0_S)


@pytest.fixture
def table(clock: ManualClock) -> TwinTable:
    """An empty table with default estimator knobs and a window of 128 samples.

    128 leaves room for an hour of one-minute samples, so physics tests see every sample.
    """
    return TwinTable(TwinTableParams(window_samples=128), clock)
