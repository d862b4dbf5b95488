"""The scheduled model job: zone demand forecasts, fleet rescoring with health trends, retraining.

Three periodic tasks, each also callable on demand (HTTP, tests):

* :meth:`FleetModelJob.forecast_demand` (hourly): reads the observed ride starts per zone
  (the shards count them), gets the weather (simulated, or an Open-Meteo-style service),
  calls the demand deployment once for all zones and writes the next 24 h per zone to
  Redis, where the shards' priority scoring reads them.
* :meth:`FleetModelJob.rescore` (hourly): a scoring tick on every shard at once, then one
  health row per battery into ``health_history`` and the SOH trend per battery and per
  cohort over the look-back window.
* :meth:`FleetModelJob.retrain` (daily): refits the label-free models on what the fleet
  accumulated (the demand LSTM on the observed ride history) and registers the result as a
  *candidate* version: a person (or an A/B split) decides whether it goes to production.
  The health model is not retrained from the fleet: its label, true capacity, is only known
  from depot capacity tests, which this system does not record yet.

The class is plain asyncio with injected clients (the protocols below); the runtime's
:func:`runtime.model_job.start_model_job` runs it as a named, detached Ray actor.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from contracts.health import HealthRow, HealthTrend
from contracts.job_reports import DemandForecastReport, RescoreReport, RetrainReport
from contracts.ride_history import RideHistory
from models.demand_lstm import HORIZON_HOURS, DemandInputs, DemandLstmParams
from models.demand_lstm import train as train_demand
from models.job_params import JobParams
from models.predictors import demand_request
from models.registry import ModelRegistry, data_fingerprint
from models.weather import WeatherSource
from twins.scoring import ModelClient, ScoreReport

__all__ = ["JOB_ACTOR", "DemandCache", "FleetModelJob", "HealthHistory", "JobParams", "ShardFanout"]

log = logging.getLogger(__name__)

#: Seconds before a failed scheduled run is tried again (at most its period).
RETRY_AFTER_S = 30.0
#: Who the job's registry changes are attributed to (the audit trail's actor).
JOB_ACTOR = "bms-model-job"
_HOUR_S = 3600


class ShardFanout(Protocol):
    """The twin shards, all at once (:class:`runtime.twins.FleetClient`)."""

    async def score_all(self) -> list[ScoreReport]:
        """One scoring tick on every shard now; each shard's report."""
        ...

    async def health_rows(self) -> list[HealthRow]:
        """One health row per scored twin, fleet-wide."""
        ...

    async def vehicles_per_zone(self) -> dict[str, int]:
        """How many vehicles (twins) each zone holds, fleet-wide."""
        ...


class DemandCache(Protocol):
    """Observed ride starts and zone forecasts (:class:`store.demand_cache.RedisDemand`)."""

    async def ride_history(self, end_hour_s: int, hours: int) -> tuple[list[str], npt.NDArray[np.float64]]: ...

    async def write_forecast(
        self, start_s: int, forecasts: Mapping[str, npt.NDArray[np.float64]], vehicles: Mapping[str, int]
    ) -> None: ...


class HealthHistory(Protocol):
    """Health rows over time (:class:`store.health_history.HealthHistoryStore`)."""

    async def append(self, rows: Sequence[HealthRow], scored_at_s: float) -> int: ...

    async def battery_trends(self, since_s: float, limit: int = 1000) -> list[HealthTrend]: ...

    async def cohort_trends(self, since_s: float) -> list[HealthTrend]: ...


class FleetModelJob:
    """The periodic model work of a fleet (see the module docstring)."""

    def __init__(
        self,
        shards: ShardFanout,
        demand: DemandCache,
        models: ModelClient,
        weather: WeatherSource,
        open_registry: Callable[[], contextlib.AbstractAsyncContextManager[ModelRegistry]],
        open_history: Callable[[], contextlib.AbstractAsyncContextManager[HealthHistory]],
        params: JobParams = JobParams(),
        now_s: Callable[[], float] = time.time,
    ) -> None:
        self.shards = shards
        self.demand = demand
        self.models = models
        self.weather = weather
        self.open_registry = open_registry
        self.open_history = open_history
        self.params = params
        self.now_s = now_s
        self.last: dict[str, DemandForecastReport | RescoreReport | RetrainReport] = {}

    async def _inputs(self, zones_rides: np.ndarray, end_hour_s: int) -> DemandInputs:
        p = self.params
        past = await self.weather.hourly(p.lat, p.lon, end_hour_s - p.history_hours * _HOUR_S, p.history_hours)
        nxt = await self.weather.hourly(p.lat, p.lon, end_hour_s, HORIZON_HOURS)
        return DemandInputs(history_rides=zones_rides, weather_past=past, weather_next=nxt)

    async def forecast_demand(self) -> DemandForecastReport:
        """Forecast the next 24 h of every zone with observed rides; write them to Redis."""
        end_hour = int(self.now_s() // _HOUR_S) * _HOUR_S
        zones, rides = await self.demand.ride_history(end_hour, self.params.history_hours)
        if not zones:
            out = DemandForecastReport(at_s=self.now_s(), zones=0, reason="no ride starts observed yet")
        else:
            inputs = await self._inputs(rides, end_hour)
            res = await self.models.call("demand", zones, demand_request(inputs))
            forecast = np.asarray(res["rides"], dtype=np.float64)
            # The priority model works per vehicle: the vehicles of each zone, fleet-wide.
            vehicles = await self.shards.vehicles_per_zone()
            await self.demand.write_forecast(end_hour, dict(zip(zones, forecast, strict=True)), vehicles)
            out = DemandForecastReport(
                at_s=self.now_s(), zones=len(zones), start_s=end_hour, rides_next_24h=float(forecast.sum())
            )
        self.last["forecast_demand"] = out
        return out

    async def rescore(self) -> RescoreReport:
        """Score every shard now, record health per battery, compute trends."""
        now = self.now_s()
        reports = await self.shards.score_all()
        rows = await self.shards.health_rows()
        since = now - self.params.trend_window_days * 86_400.0
        async with self.open_history() as history:
            written = await history.append(rows, now)
            batteries = await history.battery_trends(since, limit=20)
            cohorts = await history.cohort_trends(since)
        out = RescoreReport(
            at_s=now,
            twins_scored=sum(r.twins for r in reports),
            model_errors=tuple(sorted({m for r in reports for m in r.errors})),
            health_rows=written,
            fastest_fading=tuple(t for t in batteries if t.slope_pct_per_30d is not None)[:10],
            cohorts=tuple(cohorts),
        )
        self.last["rescore"] = out
        return out

    async def retrain(self, actor: str = JOB_ACTOR, min_hours: int | None = None) -> RetrainReport:
        """Refit the demand LSTM on the fleet's ride history; register it as a candidate."""
        need = self.params.min_retrain_hours if min_hours is None else min_hours
        end_hour = int(self.now_s() // _HOUR_S) * _HOUR_S
        zones, rides = await self.demand.ride_history(end_hour, need)
        observed = int(np.flatnonzero(rides.sum(axis=0) > 0)[0]) if rides.size and rides.sum() else None
        span = 0 if observed is None else need - observed
        if not zones or span < need:
            out = RetrainReport(
                at_s=self.now_s(), model="demand", registered_version=None, hours=span, zones=len(zones),
                reason=f"{span} h of ride history, {need} h needed",
            )  # fmt: skip
            self.last["retrain"] = out
            return out
        start = end_hour - need * _HOUR_S
        weather = await self.weather.hourly(self.params.lat, self.params.lon, start, need)
        history = RideHistory(zone_ids=tuple(zones), rides=rides.astype(np.int64), weather=weather)
        params = DemandLstmParams(history_hours=min(self.params.history_hours, need - HORIZON_HOURS - 1))
        model = await asyncio.to_thread(train_demand, history, params, 0)
        with tempfile.TemporaryDirectory(prefix="bms-retrain-") as work:
            model.save(Path(work))
            async with self.open_registry() as registry:
                version = await registry.register(
                    "demand", Path(work), dict(model.metrics), {"source": "fleet", "hours": need, **params.as_dict()},
                    data_fingerprint(rides), actor,
                )
        out = RetrainReport(
            at_s=self.now_s(), model="demand", registered_version=version.version, hours=need, zones=len(zones)
        )
        self.last["retrain"] = out
        return out

    async def run_forever(self) -> None:
        """The three tasks on their periods; a failing run is logged and retried after
        :data:`RETRY_AFTER_S` (or its period, if shorter): a failure is usually something
        not up yet (the models right after ``serve deploy``) or a blip, and should not cost
        the fleet an hour without forecasts."""
        p = self.params

        async def every(period_s: float, fn: Callable[[], Awaitable[Any]]) -> None:
            while True:
                try:
                    await fn()
                except Exception:
                    log.exception("model job: %s failed", fn.__name__)
                    await asyncio.sleep(min(period_s, RETRY_AFTER_S))
                    continue
                await asyncio.sleep(period_s)

        await asyncio.gather(
            every(p.demand_interval_s, self.forecast_demand),
            every(p.rescore_interval_s, self.rescore),
            every(p.retrain_interval_s, self.retrain),
        )

    def status(self) -> dict[str, DemandForecastReport | RescoreReport | RetrainReport]:
        """The last report of each task that has run, by task name."""
        return dict(self.last)
