"""A shard's scoring tick through in-process models (the Serve path runs the same code)."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from contracts.samples import TelemetryBatch
from models.served_model import InProcessModels
from models.training import TrainingPlan, train_all
from twins.battery_twin import BatteryTwin
from twins.clock import Clock
from twins.scoring import MemoryDemand, ScoringParams, TwinScorer
from twins.twin_table import TwinTable


class FixedClock(Clock):
    def __init__(self, now_s: float) -> None:
        self.t = now_s

    def now_s(self) -> float:
        return self.t


@pytest.fixture(scope="module")
def models() -> InProcessModels:
    """Health, priority and degradation, trained small (the quick plan)."""
    work = Path(tempfile.mkdtemp(prefix="bms-test-models-"))
    plan = TrainingPlan(**{**TrainingPlan.quick().__dict__, "health_packs": 150, "priority_scenarios": 800})
    trained = train_all(plan, work, ["health", "priority", "degradation"])
    return InProcessModels.from_artifacts({t.name: t.directory for t in trained})


@pytest.fixture(scope="module")
def fed_table(make_fleet_batches: Callable[..., list[TelemetryBatch]]) -> tuple[TwinTable, float]:
    batches = make_fleet_batches(20, 3600)
    now = float(max(b.columns["ts"].max() for b in batches))
    table = TwinTable(clock=FixedClock(now))
    for b in batches:
        table.apply(b)
    return table, now


async def test_tick_fills_every_model_column_and_the_snapshot(
    models: InProcessModels, fed_table: tuple[TwinTable, float]
) -> None:
    """One tick writes SOH, health score, priority and (for twins with a new capacity
    measurement) an LSTM step with RUL bands; a model that is missing is reported, not fatal."""
    table, now = fed_table
    n = len(table)
    # An hour of riding completes few full discharge segments; give half the twins a fresh
    # capacity measurement, as a segment ending at a charger does.
    measured = np.arange(n) % 2 == 0
    table.capacity_est_ah[:n][measured] = np.linspace(14.5, 11.0, int(measured.sum()))
    table.capacity_estimates[:n][measured] += 1
    demand = MemoryDemand()
    scorer = TwinScorer(models, demand, clock=FixedClock(now))
    report = await scorer.score(table)
    assert report.twins == n
    assert report.rows["health"] == n and report.rows["priority"] == n
    assert "anomaly" in report.errors  # not loaded in this client
    assert np.all(np.isfinite(table.soh_model_pct[:n]))
    assert np.all((table.priority[:n] >= 0) & (table.priority[:n] <= 100))
    stepped = table.lstm_steps[:n] > 0
    np.testing.assert_array_equal(stepped, measured | (table.capacity_estimates[:n] > 0))
    assert report.rows["degradation"] == int(stepped.sum()) > 0
    assert np.all(table.rul70_p10_cycles[:n][stepped] <= table.rul70_p90_cycles[:n][stepped])
    assert np.all(table.lstm_capacity_mark[:n][stepped] == table.capacity_estimates[:n][stepped])
    snap = BatteryTwin(table, int(np.flatnonzero(stepped)[0])).snapshot()
    assert snap.soh_model_pct is not None and snap.health_score is not None
    assert snap.rul_cycles_to_70pct["p50"] is not None and snap.priority is not None

    # A second tick with no new capacity measurement does not step the LSTM again.
    steps_before = table.lstm_steps[:n].copy()
    again = await scorer.score(table)
    assert again.rows["degradation"] == 0
    np.testing.assert_array_equal(table.lstm_steps[:n], steps_before)


async def test_low_charge_and_high_demand_raise_priority(
    models: InProcessModels, fed_table: tuple[TwinTable, float]
) -> None:
    """The zone forecast feeds priority: the same fleet in a busier zone scores higher."""
    table, now = fed_table
    n = len(table)
    low = TwinScorer(models, MemoryDemand(), params=ScoringParams(default_rides_per_vehicle_h=0.01), clock=FixedClock(now))
    await low.score(table)
    p_low = table.priority[:n].copy()
    high = TwinScorer(models, MemoryDemand(), params=ScoringParams(default_rides_per_vehicle_h=1.5), clock=FixedClock(now))
    await high.score(table)
    p_high = table.priority[:n].copy()
    assert p_high.mean() > p_low.mean()


async def test_ride_starts_are_counted_per_zone_hour(
    models: InProcessModels, make_fleet_batches: Callable[..., list[TelemetryBatch]]
) -> None:
    """Vehicles that start moving after standing still count as ride starts in their zone-hour."""
    batches = make_fleet_batches(20, 3600, seed=5)
    table = TwinTable()
    demand = MemoryDemand()
    scorer = TwinScorer(models, demand)
    half = len(batches) // 2
    for b in batches[:half]:
        table.apply(b)
    await scorer.score(table)  # first sight: nothing counted
    assert sum(demand.rides.values()) == 0
    for b in batches[half:]:
        table.apply(b)
    report = await scorer.score(table)
    assert report.ride_starts == sum(demand.rides.values()) > 0
    assert all(hour % 3600 == 0 for _, hour in demand.rides)


async def test_only_twins_observed_long_enough_count_towards_drift(
    models: InProcessModels, fed_table: tuple[TwinTable, float]
) -> None:
    """Twins an hour old are scored but do not feed the models' drift monitors (a fresh
    start would otherwise look drifted); with no minimum history they all count."""
    table, now = fed_table
    n = len(table)

    def drift_samples() -> int:
        return int(models.models["health"].status()["drift"]["1"]["samples"])

    before = drift_samples()
    report = await TwinScorer(models, MemoryDemand(), clock=FixedClock(now)).score(table)
    assert report.rows["health"] == n and drift_samples() == before
    eager = TwinScorer(models, MemoryDemand(), params=ScoringParams(drift_min_history_s=0.0), clock=FixedClock(now))
    await eager.score(table)
    assert drift_samples() == min(before + n, models.models["health"]._drift[1].window)
