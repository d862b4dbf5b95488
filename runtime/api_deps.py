"""The HTTP API's dependencies (:mod:`serve.http.deps`) over Ray, Serve, PostgreSQL and Redis.

Each class implements one protocol the routes call. Two translations happen here, so the
routes never see Ray:

* a remote call that raised re-raises the *original* exception (a ``KeyError`` for an
  unknown work order, a ``ValueError`` for a bad field), not Ray's ``RayTaskError`` wrapper;
* an actor that is not running becomes :class:`serve.http.errors.ServiceUnavailable`
  (a 503), e.g. :class:`~serve.http.errors.PlannerNotRunning`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import ray
import redis.asyncio as aioredis
from psycopg_pool import AsyncConnectionPool
from ray.actor import ActorHandle
from ray.exceptions import RayError, RayTaskError
from ray.serve.handle import DeploymentHandle

from runtime.names import PLANNER_NAME
from runtime.twins import FleetClient
from serve.http.auth import TokenCache
from serve.http.deps import (
    DeadLetterReader,
    HealthHistoryReader,
    ModelRegistryAccess,
    TelemetryHistory,
    TokenAdmin,
    WebhookAdmin,
    WorkOrderReader,
)
from serve.http.errors import PlannerNotRunning, ServiceUnavailable
from store import DeadLetterStore, TelemetryStore
from store.health_history import HealthHistoryStore
from store.model_registry_store import ModelRegistryStore
from store.token_store import TokenStore
from store.webhook_store import WebhookStore
from store.work_order_store import WorkOrderStore
from twins.twin_columns import TwinColumns

if TYPE_CHECKING:
    from contracts.access import Principal, Role, TokenInfo
    from contracts.work_orders import SwapRecord, WorkOrder, WorkOrderState
    from planners.plan_jobs import PlanJob
    from planners.planner import PlanRecord, TechnicianRoute
    from planners.views import QueueEntry, Roster
    from serve.mqtt_bridge import BridgeStats
    from twins.battery_twin import TwinSnapshot
    from twins.fleet_query import AvailableVehicle, Filter, GroupStats, TopNRow
    from twins.scoring import AnomalyEvent
    from twins.shard import ShardStats

__all__ = [
    "PostgresStores",
    "RayBridgeStats",
    "RayFleetReader",
    "RayPlannerClient",
    "ServeModelStatus",
    "unwrapped",
]

T = TypeVar("T")

log = logging.getLogger(__name__)


async def unwrapped(call: Awaitable[T]) -> T:
    """Await a Ray call; if the remote task raised, raise its original exception.

    Ray raises a ``RayTaskError`` that also subclasses the cause's class when it can, but
    not always (classes it cannot subclass), and the HTTP layer must not depend on either.
    A cause that could not be pickled arrives as a ``RayError``: then the wrapper stays.
    """
    try:
        return await call
    except RayTaskError as err:
        cause = err.cause
        if isinstance(cause, Exception) and not isinstance(cause, RayError):
            raise cause from err
        raise


class RayFleetReader:
    """:class:`serve.http.deps.FleetReader` over the twin shards (:class:`FleetClient`)."""

    def __init__(self, namespace: str) -> None:
        self._fleet = FleetClient(namespace)
        self._last_columns: dict[int, TwinColumns] = {}
        self._silent_shards: set[int] = set()

    @staticmethod
    async def _call(call: Awaitable[T]) -> T:
        try:
            return await unwrapped(call)
        except RayError:
            raise
        except ValueError as err:
            if isinstance(err.__cause__, RayTaskError):  # the shard refused the arguments
                raise
            # Raised here, not by a shard: ray.get_actor found no directory or shard actor.
            raise ServiceUnavailable(f"The twin shards are not running: {err}") from err

    async def get(self, battery_id: str) -> TwinSnapshot | None:
        return await self._call(self._fleet.get(battery_id))

    async def window(self, battery_id: str) -> dict[str, list[float | None]] | None:
        out: dict[str, list[float | None]] | None = await self._call(self._fleet.window(battery_id))
        return out

    async def top_n(
        self, by: str, n: int, *, descending: bool, filters: Sequence[Filter]
    ) -> list[TopNRow]:
        return await self._call(self._fleet.top_n(by, n, descending=descending, filters=filters))

    async def group_stats(
        self, group_by: str | None, fields: Sequence[str], *, filters: Sequence[Filter] = ()
    ) -> dict[str, GroupStats]:
        return await self._call(self._fleet.group_stats(group_by, fields, filters=filters))

    async def shard_stats(self) -> list[ShardStats]:
        return await self._call(self._fleet.shard_stats())

    async def num_shards(self) -> int:
        return await self._call(self._fleet.num_shards())

    async def ping(self) -> None:
        await self._call(self._fleet.ping_all())

    async def anomaly_events(self, limit: int) -> list[AnomalyEvent]:
        return await self._call(self._fleet.anomaly_events(limit))

    async def available_vehicles(
        self, lat: float, lon: float, radius_m: float, limit: int
    ) -> list[AvailableVehicle]:
        return await self._call(self._fleet.available_vehicles(lat, lon, radius_m, limit))

    async def columns(self) -> TwinColumns:
        """Every shard's twins as columns, for the read snapshot (one call per shard).

        A shard that does not answer (restarting after a crash) keeps the columns it gave
        last, so its twins stay readable; the snapshot's ``as_of_s`` is then that older
        time. A shard that never answered raises.
        """
        parts = await self._call(self._fleet.columns())
        for shard_id, part in enumerate(parts):
            if isinstance(part, BaseException):
                if shard_id not in self._last_columns:
                    raise ServiceUnavailable(f"Twin shard {shard_id} did not answer: {part!r}") from part
                if shard_id not in self._silent_shards:  # once per outage, not every refresh
                    self._silent_shards.add(shard_id)
                    log.warning("shard %d did not answer (%r); its columns of %.1f s ago stay",
                                shard_id, part, time.time() - self._last_columns[shard_id].as_of_s)
            else:
                self._last_columns[shard_id] = part
                self._silent_shards.discard(shard_id)
        return TwinColumns.concat([self._last_columns[i] for i in range(len(parts))])


class RayPlannerClient:
    """:class:`serve.http.deps.PlannerClient` over the named planner actor.

    The actor is looked up on every call, not once: ``bms run`` may start the planner after
    the ingress, or restart it, and a stale handle would answer 500s for good.
    ``on_swap`` hears the batteries of every swap reported through it (the read snapshot
    reads them live until it has caught up: :meth:`ReadSnapshots.invalidate`).
    """

    def __init__(self, namespace: str, on_swap: Callable[[Sequence[str]], None] | None = None) -> None:
        self.namespace = namespace
        self._on_swap = on_swap

    def _actor(self) -> ActorHandle[Any]:
        try:
            return ray.get_actor(PLANNER_NAME, namespace=self.namespace)
        except ValueError:
            raise PlannerNotRunning() from None

    async def queue(self) -> list[QueueEntry]:
        out: list[QueueEntry] = await unwrapped(self._actor().queue.remote())
        return out

    async def latest(self) -> PlanRecord | None:
        out: PlanRecord | None = await unwrapped(self._actor().latest.remote())
        return out

    async def pull(self) -> int:
        out: int = await unwrapped(self._actor().pull.remote())
        return out

    async def submit_plan(self, reason: str, requested_by: str) -> PlanJob:
        out: PlanJob = await unwrapped(self._actor().submit_plan.remote(reason, requested_by))
        return out

    async def plan_job(self, job_id: str) -> PlanJob:
        out: PlanJob = await unwrapped(self._actor().plan_job.remote(job_id))
        return out

    async def roster(self) -> Roster:
        out: Roster = await unwrapped(self._actor().roster.remote())
        return out

    async def route_of(self, technician_id: str) -> TechnicianRoute | None:
        out: TechnicianRoute | None = await unwrapped(self._actor().route_of.remote(technician_id))
        return out

    async def report(
        self,
        order_id: int,
        state: WorkOrderState,
        actor: str,
        technician_id: str | None,
        swap: SwapRecord | None,
        note: str | None,
        assigned_to: str | None = None,
    ) -> WorkOrder:
        call: Awaitable[WorkOrder] = self._actor().report.remote(
            order_id, state, actor, technician_id, swap, note, assigned_to
        )
        out: WorkOrder = await unwrapped(call)
        if swap is not None and self._on_swap is not None:
            self._on_swap((swap.battery_out_id, swap.battery_in_id))
        return out


class RayBridgeStats:
    """:class:`serve.http.deps.BridgeStatsSource` over the named bridge worker actors."""

    def __init__(self, namespace: str, names: Sequence[str]) -> None:
        self.namespace = namespace
        self.names = tuple(names)

    async def stats(self) -> dict[str, BridgeStats | None]:
        out: dict[str, BridgeStats | None] = {}
        for name in self.names:
            try:
                handle = ray.get_actor(name, namespace=self.namespace)
            except ValueError:  # not started, or stopped: reported, not an error
                out[name] = None
                continue
            out[name] = await unwrapped(handle.stats.remote())
        return out


class ServeModelStatus:
    """:class:`serve.http.deps.ModelStatusSource` over the model deployments' handles."""

    def __init__(self, handles: Mapping[str, DeploymentHandle[Any]]) -> None:
        self._handles = dict(handles)

    def names(self) -> list[str]:
        return sorted(self._handles)

    async def status(self, name: str) -> Mapping[str, Any] | None:
        handle = self._handles.get(name)
        if handle is None:
            return None
        out: Mapping[str, Any] = await unwrapped(handle.status.remote())
        return out


class PostgresStores:
    """:class:`serve.http.deps.Stores`: each store on a pooled connection for one request.

    Parameters
    ----------
    pool
        Autocommit connections (every store method commits its own transaction).
    redis
        A client with ``decode_responses=False`` (dead-letter stream and counts).
    redis_prefix
        Prefix of the Redis keys.
    token_cache
        Remembers authenticated tokens for a few seconds (:class:`serve.http.auth.TokenCache`).
    """

    def __init__(
        self,
        pool: AsyncConnectionPool,
        redis: aioredis.Redis,
        redis_prefix: str,
        token_cache: TokenCache | None = None,
    ) -> None:
        self._pool = pool
        self._redis = redis
        self._redis_prefix = redis_prefix
        self._token_cache = token_cache or TokenCache()

    @asynccontextmanager
    async def history(self) -> AsyncIterator[TelemetryHistory]:
        async with self._pool.connection() as conn:
            yield TelemetryStore(conn)

    @asynccontextmanager
    async def dead_letters(self) -> AsyncIterator[DeadLetterReader]:
        async with self._pool.connection() as conn:
            yield DeadLetterStore(conn, self._redis, key_prefix=self._redis_prefix)

    @asynccontextmanager
    async def registry(self) -> AsyncIterator[ModelRegistryAccess]:
        async with self._pool.connection() as conn:
            yield ModelRegistryStore(conn)

    @asynccontextmanager
    async def work_orders(self) -> AsyncIterator[WorkOrderReader]:
        async with self._pool.connection() as conn:
            yield WorkOrderStore(conn)

    @asynccontextmanager
    async def tokens(self) -> AsyncIterator[TokenAdmin]:
        # No connection up front: most requests only authenticate, and the cache answers.
        yield _CachedTokens(self._pool, self._token_cache)

    @asynccontextmanager
    async def health_history(self) -> AsyncIterator[HealthHistoryReader]:
        async with self._pool.connection() as conn:
            yield HealthHistoryStore(conn)

    @asynccontextmanager
    async def webhooks(self) -> AsyncIterator[WebhookAdmin]:
        async with self._pool.connection() as conn:
            yield WebhookStore(conn)


class _CachedTokens:
    """:class:`serve.http.deps.TokenAdmin` over the pool: authentication asks the cache
    first, and a revocation made here is forgotten by the cache at once."""

    def __init__(self, pool: AsyncConnectionPool, cache: TokenCache) -> None:
        self._pool = pool
        self._cache = cache

    async def authenticate(self, token: str) -> Principal:
        principal = self._cache.get(token)
        if principal is None:
            async with self._pool.connection() as conn:
                principal = await TokenStore(conn).authenticate(token)
            self._cache.put(token, principal)
        return principal

    async def create(
        self, role: Role, subject: str, *, created_by: str, ttl_s: float | None, label: str = ""
    ) -> tuple[str, TokenInfo]:
        async with self._pool.connection() as conn:
            return await TokenStore(conn).create(
                role, subject, created_by=created_by, ttl_s=ttl_s, label=label
            )

    async def list(self) -> list[TokenInfo]:
        async with self._pool.connection() as conn:
            return await TokenStore(conn).list()

    async def revoke(self, token_id: int) -> TokenInfo:
        async with self._pool.connection() as conn:
            info = await TokenStore(conn).revoke(token_id)
        self._cache.forget(token_id)
        return info
