"""Ray glue of the scheduled model job: a named, detached actor around
:class:`~models.batch_job.FleetModelJob`, with its stores and clients injected."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
import redis.asyncio as aioredis

from contracts.job_reports import DemandForecastReport, RescoreReport, RetrainReport
from models.batch_job import FleetModelJob, HealthHistory
from models.job_params import JobParams
from models.registry import ModelRegistry
from models.weather import weather_source_from_url
from runtime.model_client import ServeModelClient
from runtime.names import MODEL_JOB_NAME, SERVE_APP_NAME
from runtime.options import actor_options
from runtime.twins import FleetClient
from store import open_postgres
from store.demand_cache import RedisDemand
from store.health_history import HealthHistoryStore
from store.model_registry_store import ModelRegistryStore

__all__ = ["ModelJobSpec", "start_model_job"]


@dataclass(frozen=True)
class ModelJobSpec:
    """What the job actor is started with (plain values: it crosses into Ray)."""

    namespace: str
    # Out of reprs: a URL may carry a password, and Ray prints actor arguments in errors.
    postgres_url: str = field(repr=False)
    redis_url: str = field(repr=False)
    redis_prefix: str
    artifacts_root: str
    weather_url: str | None
    serve_app_name: str = SERVE_APP_NAME
    params: JobParams = JobParams()


class _ModelJobActor:
    """Ray actor around :class:`FleetModelJob` (async actor: one event loop)."""

    def __init__(self, spec: ModelJobSpec) -> None:
        @contextlib.asynccontextmanager
        async def registry() -> AsyncIterator[ModelRegistry]:
            async with open_postgres(spec.postgres_url, application_name="bms-model-job") as conn:
                yield ModelRegistry(ModelRegistryStore(conn), Path(spec.artifacts_root))

        @contextlib.asynccontextmanager
        async def history() -> AsyncIterator[HealthHistory]:
            async with open_postgres(spec.postgres_url, application_name="bms-model-job") as conn:
                yield HealthHistoryStore(conn)

        redis = aioredis.Redis.from_url(spec.redis_url, decode_responses=False)
        self.job = FleetModelJob(
            FleetClient(spec.namespace),
            RedisDemand(redis, key_prefix=spec.redis_prefix),
            ServeModelClient(spec.serve_app_name),
            weather_source_from_url(spec.weather_url),
            registry,
            history,
            spec.params,
        )
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self.job.run_forever())

    async def forecast_demand(self) -> DemandForecastReport:
        return await self.job.forecast_demand()

    async def rescore(self) -> RescoreReport:
        return await self.job.rescore()

    async def retrain(self, min_hours: int | None = None) -> RetrainReport:
        return await self.job.retrain(min_hours=min_hours)

    async def status(self) -> dict[str, DemandForecastReport | RescoreReport | RetrainReport]:
        return self.job.status()


def start_model_job(spec: ModelJobSpec, run_schedule: bool = True) -> Any:
    """Start (or find) the named, detached job actor; start its schedule."""
    handle = ray.remote(_ModelJobActor).options(**actor_options("model_job", MODEL_JOB_NAME, spec.namespace)).remote(spec)
    if run_schedule:
        ray.get(handle.start.remote())  # type: ignore[attr-defined]  # ray types the handle as the class
    return handle
