""":class:`serve.http.deps.AlertAccess` for the HTTP ingress: reads from PostgreSQL, changes
through the alert manager actor, the live stream from the Redis stream the actor writes.

The stream's ids are Redis stream ids (``<ms>-<n>``), so a client's ``Last-Event-ID`` is a
position in the stream: resuming reads exactly what was added after it (as long as the
stream still holds it: it keeps the newest ``stream_max_events``).
"""

from __future__ import annotations

import builtins
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import ray
import redis.asyncio as aioredis
from psycopg_pool import AsyncConnectionPool
from ray.actor import ActorHandle

from contracts.alerts import Alert, AlertTransition, Silence
from runtime.alerts import alert_stream_key
from runtime.api_deps import unwrapped
from runtime.names import ALERTS_NAME
from serve.http.deps import AlertEvent
from serve.http.errors import ServiceUnavailable
from store.alert_store import AlertStore

__all__ = ["RayAlertAccess"]

_STREAM_ID = re.compile(r"\d{1,20}-\d{1,20}")


class RayAlertAccess:
    """Alerts over the PostgreSQL pool, the ``bms-alerts`` actor and Redis."""

    def __init__(self, namespace: str, pool: AsyncConnectionPool, redis: aioredis.Redis, redis_prefix: str) -> None:
        self._namespace = namespace
        self._pool = pool
        self._redis = redis
        self._stream = alert_stream_key(redis_prefix)
        self._actor: ActorHandle[Any] | None = None

    def _manager(self) -> ActorHandle[Any]:
        if self._actor is None:
            try:
                self._actor = ray.get_actor(ALERTS_NAME, namespace=self._namespace)
            except ValueError:
                raise ServiceUnavailable("The alert manager is not running (needs [alerts] enabled).") from None
        return self._actor

    async def list(
        self, *, state: str | None, severity: str | None, category: str | None,
        battery_id: str | None, limit: int,
    ) -> builtins.list[Alert]:  # fmt: skip
        async with self._pool.connection() as conn:
            return await AlertStore(conn).list(
                state=state, severity=severity, category=category, battery_id=battery_id, limit=limit
            )

    async def counts(self) -> dict[str, int]:
        async with self._pool.connection() as conn:
            return await AlertStore(conn).open_counts()

    async def get(self, alert_id: int) -> tuple[Alert, builtins.list[AlertTransition]]:
        async with self._pool.connection() as conn:
            store = AlertStore(conn)
            return await store.get(alert_id), await store.history(alert_id)

    async def acknowledge(self, alert_id: int, actor: str, note: str | None) -> Alert:
        alert: Alert = await unwrapped(self._manager().acknowledge.remote(alert_id, actor, note))
        return alert

    async def silences(self, include_expired: bool) -> builtins.list[Silence]:
        async with self._pool.connection() as conn:
            return await AlertStore(conn).silences(include_expired=include_expired)

    async def add_silence(self, matchers: dict[str, str], duration_s: float, author: str, comment: str) -> Silence:
        silence: Silence = await unwrapped(self._manager().add_silence.remote(matchers, duration_s, author, comment))
        return silence

    async def expire_silence(self, silence_id: int, actor: str) -> Silence:
        silence: Silence = await unwrapped(self._manager().expire_silence.remote(silence_id, actor))
        return silence

    async def stream(self, last_event_id: str | None, keepalive_s: float) -> AsyncIterator[AlertEvent | None]:
        if last_event_id is not None and not _STREAM_ID.fullmatch(last_event_id):
            raise ValueError(f"expected an id like 1733350000000-0, got {last_event_id!r}")
        # Without an id: only what happens from now on ("$" resolved once, so nothing that
        # arrives between two reads is skipped).
        # (redis-py types its stream replies loosely; this client returns bytes.)
        r: Any = self._redis
        position = last_event_id
        if position is None:
            newest = await r.xrevrange(self._stream, count=1)
            position = newest[0][0].decode() if newest else "0-0"
        yield None  # headers go out now; the client knows it is connected
        while True:
            reply = await r.xread({self._stream: position}, count=100, block=int(keepalive_s * 1000))
            if not reply:
                yield None
                continue
            for entry_id, fields in reply[0][1]:
                position = entry_id.decode()
                data: dict[str, Any] = json.loads(fields[b"data"])
                yield position, data
