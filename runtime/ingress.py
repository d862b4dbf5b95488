"""The HTTP ingress: the FastAPI app of :mod:`serve.http`, served by a Ray Serve deployment.

The deployment only wires: its constructor builds the Ray-backed dependencies
(:mod:`runtime.api_deps`) and Serve asks it for the app afterwards
(``__serve_build_asgi_app__``, with ``@serve.ingress()`` given no app), so the routes are
plain functions of :class:`serve.http.deps.ApiDeps` that unit tests run without Ray.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import redis.asyncio as aioredis
from fastapi import FastAPI
from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.serve.handle import DeploymentHandle

from runtime.api_deps import (
    PostgresStores,
    RayBridgeStats,
    RayFleetReader,
    RayPlannerClient,
    ServeModelStatus,
)
from runtime.names import DEFAULT_NAMESPACE
from serve.http import ApiDeps, create_api

__all__ = ["ApiIngress", "IngressConfig"]


class IngressConfig(BaseModel):
    """Arguments of the ingress deployment (validated when the app is built)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    namespace: str = Field(DEFAULT_NAMESPACE, description="Ray namespace of the twin actors")
    postgres_url: str = Field(description="PostgreSQL URL for telemetry history", repr=False)
    redis_url: str = Field(description="Redis URL for dead-letter counters", repr=False)
    redis_prefix: str = "bms:"
    bridge_actor_names: list[str] = Field(default_factory=list)
    max_history_rows: int = Field(10_000, ge=1, le=1_000_000)


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=200)
@serve.ingress()
class ApiIngress:
    """The HTTP face of the twins; reads go to shards, history to PostgreSQL.

    Parameters
    ----------
    config
        Where the actors, PostgreSQL and Redis are.
    models
        Handles of the model deployments, by family (their live status and drift).
    """

    def __init__(self, config: IngressConfig, models: dict[str, DeploymentHandle[Any]]) -> None:
        # One pool and one Redis client per replica (both pool their connections), not one
        # per request; the app's lifespan opens and closes them.
        self._pool = AsyncConnectionPool(
            config.postgres_url, min_size=1, max_size=4, open=False, kwargs={"autocommit": True}
        )
        self._redis = aioredis.Redis.from_url(config.redis_url, decode_responses=False)
        self._deps = ApiDeps(
            fleet=RayFleetReader(config.namespace),
            planner=RayPlannerClient(config.namespace),
            bridges=RayBridgeStats(config.namespace, config.bridge_actor_names),
            models=ServeModelStatus(models),
            stores=PostgresStores(self._pool, self._redis, config.redis_prefix),
            max_history_rows=config.max_history_rows,
        )

    @asynccontextmanager
    async def _connections(self, app: FastAPI) -> AsyncIterator[None]:
        # open() does not wait for a connection: the API starts (and /healthz answers)
        # while PostgreSQL is still coming up; history reads wait for the pool instead.
        await self._pool.open()
        try:
            yield
        finally:
            await self._pool.close()
            await self._redis.aclose()

    def __serve_build_asgi_app__(self) -> FastAPI:
        """The app Serve runs, called once after ``__init__``."""
        return create_api(self._deps, lifespan=self._connections)
