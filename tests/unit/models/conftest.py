"""Shared fixtures of the model tests: simulated telemetry as the twins receive it."""

from __future__ import annotations

import pytest

from serve.telemetry_contract import decode_batch
from sim.demand import DemandProfile
from sim.fleet import FleetSimulator
from sim.fleet_params import FleetParams
from twins.samples import TelemetryBatch

# 2025-11-26 16:00 UTC: the evening peak, so trips start quickly.
EVENING_S = 1_764_172_800.0


def fleet_batches(vehicles: int, seconds: int, seed: int = 11, dt_s: float = 5.0) -> list[TelemetryBatch]:
    """The decoded telemetry of a busy simulated fleet, one batch per tick."""
    sim = FleetSimulator(
        FleetParams(vehicles=vehicles, seed=seed, demand=DemandProfile(trips_per_vehicle_per_day=150.0))
    )
    out = []
    for k in range(1, int(seconds / dt_s) + 1):
        now_s = EVENING_S + k * dt_s
        raws = sim.advance(dt_s, now_s)
        if raws:
            batch, _, rejected = decode_batch(raws, now_s, )
            assert not rejected
            out.append(batch)
    return out


@pytest.fixture(scope="session")
def fleet_telemetry() -> list[TelemetryBatch]:
    """20 busy vehicles for 40 simulated minutes."""
    return fleet_batches(20, 2400)
