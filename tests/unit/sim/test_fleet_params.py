"""Tests for :mod:`sim.fleet_params`: validated fleet parameters."""

from __future__ import annotations

import pytest

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
    ],
)
def test_invalid_params_say_what_was_expected(changes: dict[str, object], message: str) -> None:
    """Each check names the field, the expectation and the value that arrived."""
    with pytest.raises(ValueError, match=message):
        FleetParams().replace(**changes)
