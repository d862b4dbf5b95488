"""Tests for :mod:`sim.fleet_params`: validated fleet parameters."""

from __future__ import annotations

import pytest

from sim.faults import FaultKind
from sim.fleet_params import FleetParams


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"vehicles": 0}, r"Expected vehicles in \[1, 1000000\], got 0"),
        ({"samples_per_message": 501}, "the contract's maximum"),
        ({"cruise_speed_min_kmh": 30.0}, "cruise_speed_kmh"),
        ({"swap_below_soc_pct": 1.0}, "cutoff_soc_pct <= swap_below_soc_pct"),
        ({"vehicle_id_prefix": "v/"}, "Expected vehicle_id_prefix to start an id"),
        ({"radius_km": 0.0}, r"Expected radius_km in \(0, 100\]"),
        ({"fault_rate_per_vehicle_day": -0.1}, r"fault_rate_per_vehicle_day in \[0, 100\], got -0.1"),
        ({"initial_faults": -1}, r"initial_faults in \[0, 1000000\], got -1"),
        ({"initial_fault_window_s": 0.0}, r"initial_fault_window_s in \(0, 86400\], got 0.0"),
        ({"fault_response_s": -1.0}, r"fault_response_s in \[0, 2592000\]"),
        ({"fault_kinds": ()}, "non-empty tuple of distinct FaultKind members"),
        ({"fault_kinds": ("thermal_runaway",)}, r"got \('thermal_runaway',\)"),
        ({"fault_kinds": (FaultKind.WEAK_CELL, FaultKind.WEAK_CELL)}, "distinct"),
    ],
)
def test_invalid_params_say_what_was_expected(changes: dict[str, object], message: str) -> None:
    """Each check names the field, the expectation and the value that arrived."""
    with pytest.raises(ValueError, match=message):
        FleetParams().replace(**changes)


def test_faults_are_off_by_default() -> None:
    """FleetParams' own defaults inject no fault (benchmarks and tests see the fleet they
    always did); bms run switches them on through [sim]."""
    p = FleetParams()
    assert (p.fault_rate_per_vehicle_day, p.initial_faults) == (0.0, 0)
