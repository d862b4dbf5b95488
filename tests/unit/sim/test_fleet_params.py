"""Tests for :mod:`sim.fleet_params`: validated fleet parameters and the settings bridge."""

from __future__ import annotations

import pytest

from bms.settings import SimSettings
from sim.fleet_params import FleetParams


def test_from_default_settings() -> None:
    """An empty [sim] section gives the default fleet."""
    params = FleetParams.from_settings(SimSettings())
    assert params == FleetParams()


def test_from_full_settings_and_overrides() -> None:
    """Every [sim] key except time_scale lands in FleetParams; overrides win."""
    settings = SimSettings(
        vehicles=12,
        report_interval_s=2.0,
        samples_per_message=3,
        center_lat=48.1,
        center_lon=11.6,
        radius_km=3.0,
        seed=99,
        time_scale=10.0,
    )
    params = FleetParams.from_settings(settings, vehicle_id_prefix="x-")
    assert (params.vehicles, params.report_interval_s, params.samples_per_message) == (12, 2.0, 3)
    assert (params.center_lat, params.center_lon, params.radius_km, params.seed) == (
        48.1, 11.6, 3.0, 99,
    )  # fmt: skip
    assert params.vehicle_id_prefix == "x-"


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
