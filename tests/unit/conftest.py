"""Fixtures for every unit test: unit tests run without a Ray cluster.

The autouse fixture below makes ``ray.init`` raise, so a unit test that reaches for Ray
(directly or through a module under test) fails loudly instead of quietly starting a
local cluster. Tests that need Ray belong in ``tests/integration``.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

import pytest

from contracts.samples import TelemetryBatch
from contracts.telemetry import decode_batch
from sim.demand import DemandProfile
from sim.faults import record_fleet
from sim.fleet import FleetSimulator
from sim.fleet_params import FleetParams
from twins.telemetry_windows import TelemetryWindows, sliding_windows

_RAY_INIT_MESSAGE = "Unit tests should not depend on Ray being initialized."


def _forbidden_ray_init(*args: object, **kwargs: object) -> None:
    raise RuntimeError(_RAY_INIT_MESSAGE)


@pytest.fixture(autouse=True)
def _no_ray_init(monkeypatch: pytest.MonkeyPatch) -> None:
    """``ray.init`` raises for the duration of every unit test (when Ray is installed)."""
    if importlib.util.find_spec("ray") is None:
        return
    import ray

    monkeypatch.setattr(ray, "init", _forbidden_ray_init)


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
            batch, _, rejected = decode_batch(raws, now_s)
            assert not rejected
            out.append(batch)
    return out


@pytest.fixture(scope="session")
def make_fleet_batches() -> Callable[..., list[TelemetryBatch]]:
    """:func:`fleet_batches`, for tests that need their own fleet."""
    return fleet_batches


@pytest.fixture(scope="session")
def fleet_telemetry() -> list[TelemetryBatch]:
    """20 busy vehicles for 40 simulated minutes."""
    return fleet_batches(20, 2400)


def fleet_windows(seed: int, vehicles: int, stride: int = 16) -> TelemetryWindows:
    """Normal 64-sample windows of a busy simulated fleet over 30 evening minutes."""
    params = FleetParams(vehicles=vehicles, seed=seed, demand=DemandProfile(trips_per_vehicle_per_day=100.0))
    rec = record_fleet(params, 1800.0, EVENING_S)
    return sliding_windows(list(rec.values()), 64, stride, battery_ids=list(rec))


@pytest.fixture(scope="session")
def make_fleet_windows() -> Callable[..., TelemetryWindows]:
    """:func:`fleet_windows`, for the anomaly detectors' tests (train on one seed, judge another)."""
    return fleet_windows
