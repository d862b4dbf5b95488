"""The scheduled model job on in-memory fakes of its protocols: no Ray, no servers.

:class:`models.batch_job.FleetModelJob` reaches the shards, the demand cache, the health
history and the models only through the protocols in its module; these fakes stand in for
the runtime and store implementations.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from contracts.health import HealthRow, HealthTrend
from models.batch_job import FleetModelJob
from models.job_params import JobParams
from models.weather import SimWeatherSource
from twins.scoring import ScoreReport

NOW_S = 1_764_172_800.0  # a whole hour
ZONES = ["z1", "z2"]


class FakeShards:
    async def score_all(self) -> list[ScoreReport]:
        return [ScoreReport(twins=3), ScoreReport(twins=2, errors={"demand": "down"})]

    async def health_rows(self) -> list[HealthRow]:
        return [HealthRow("b1", "2026-11", 95.0, 90.0, 10.0, 1), HealthRow("b2", "2026-10", 88.0, 70.0, 300.0, 1)]

    async def vehicles_per_zone(self) -> dict[str, int]:
        return {"z1": 4, "z2": 1}


class FakeDemand:
    def __init__(self, hours_observed: int) -> None:
        self.hours_observed = hours_observed
        self.written: tuple[int, dict[str, npt.NDArray[np.float64]], dict[str, int]] | None = None

    async def ride_history(self, end_hour_s: int, hours: int) -> tuple[list[str], npt.NDArray[np.float64]]:
        rides = np.zeros((len(ZONES), hours))
        rides[:, hours - min(hours, self.hours_observed):] = 1.0
        return (list(ZONES), rides) if self.hours_observed else ([], np.zeros((0, hours)))

    async def write_forecast(
        self, start_s: int, forecasts: Mapping[str, npt.NDArray[np.float64]], vehicles: Mapping[str, int]
    ) -> None:
        self.written = (start_s, dict(forecasts), dict(vehicles))


class FakeModels:
    async def call(self, model: str, ids: list[str], arrays: Mapping[str, npt.NDArray[Any]]) -> dict[str, npt.NDArray[Any]]:
        assert model == "demand" and arrays["history_rides"].shape[0] == len(ids)
        return {"rides": np.full((len(ids), 24), 0.5)}


class FakeHistory:
    def __init__(self) -> None:
        self.rows: list[HealthRow] = []

    async def append(self, rows: Sequence[HealthRow], scored_at_s: float) -> int:
        self.rows.extend(rows)
        return len(rows)

    async def battery_trends(self, since_s: float, limit: int = 1000) -> list[HealthTrend]:
        return [HealthTrend("b2", -1.5, 3, 88.0), HealthTrend("b1", None, 1, 95.0)][:limit]

    async def cohort_trends(self, since_s: float) -> list[HealthTrend]:
        return [HealthTrend("2026-10", -1.5, 3, 88.0)]


def _job(demand: FakeDemand, history: FakeHistory) -> FleetModelJob:
    @contextlib.asynccontextmanager
    async def no_registry() -> AsyncIterator[Any]:
        raise AssertionError("retraining must not register with this little history")
        yield

    @contextlib.asynccontextmanager
    async def open_history() -> AsyncIterator[FakeHistory]:
        yield history

    return FleetModelJob(
        FakeShards(), demand, FakeModels(), SimWeatherSource(), no_registry, open_history,
        JobParams(), now_s=lambda: NOW_S,
    )  # fmt: skip


async def test_rescore_records_every_row_and_reports_trends() -> None:
    """A rescore scores every shard, appends one health row per battery and reports the
    failing models, the fading batteries (trend known) and the cohorts."""
    history = FakeHistory()
    report = await _job(FakeDemand(0), history).rescore()
    assert report.twins_scored == 5 and report.model_errors == ("demand",)
    assert report.health_rows == 2 and [r.battery_id for r in history.rows] == ["b1", "b2"]
    assert [t.key for t in report.fastest_fading] == ["b2"] and report.cohorts[0].key == "2026-10"


async def test_forecast_writes_every_zone_with_its_vehicles() -> None:
    """A forecast covers every zone with rides and hands the store the vehicles per zone."""
    demand = FakeDemand(hours_observed=200)
    job = _job(demand, FakeHistory())
    report = await job.forecast_demand()
    assert report.zones == 2 and report.start_s == int(NOW_S) and report.reason is None
    assert report.rides_next_24h == pytest.approx(2 * 24 * 0.5)
    assert demand.written is not None and demand.written[2] == {"z1": 4, "z2": 1}
    assert job.status()["forecast_demand"] == report


async def test_no_rides_no_forecast_with_the_reason() -> None:
    """Without observed rides nothing is forecast, and the report says why."""
    report = await _job(FakeDemand(0), FakeHistory()).forecast_demand()
    assert report.zones == 0 and report.reason is not None and "no ride" in report.reason


async def test_retrain_declines_short_history() -> None:
    """Too little ride history: no version is registered, and the reason names the hours."""
    report = await _job(FakeDemand(hours_observed=48), FakeHistory()).retrain()
    assert report.registered_version is None and report.reason is not None
    assert f"{JobParams().min_retrain_hours} h needed" in report.reason
