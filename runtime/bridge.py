"""The Ray actor that runs one :class:`~serve.mqtt_bridge.MqttBridge` worker."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, cast

import ray
import redis.asyncio as aioredis
from ray.actor import ActorHandle

from runtime.metrics import EXPORT_INTERVAL_S, BridgeMetrics, export_every
from runtime.names import bridge_actor_name
from runtime.options import actor_options
from runtime.twins import ShardRouter
from serve.mqtt_bridge import BridgeConfig, BridgeStats, MqttBridge
from store import DeadLetterStore, open_postgres

__all__ = ["BridgeWorker", "start_bridge_worker"]

log = logging.getLogger(__name__)


class BridgeWorker:
    """Owns the bridge's connections; ``start`` returns once it is subscribed."""

    def __init__(self, config: BridgeConfig, namespace: str, postgres_url: str, redis_url: str, redis_prefix: str = "bms:") -> None:
        logging.basicConfig(level=logging.INFO)
        self._config = config
        self._namespace = namespace
        self._postgres_url = postgres_url
        self._redis_url = redis_url
        self._redis_prefix = redis_prefix
        self._bridge: MqttBridge | None = None
        self._task: asyncio.Task[None] | None = None
        self._metrics = BridgeMetrics()
        self._metrics_task: asyncio.Task[None] | None = None
        self._stack = contextlib.AsyncExitStack()

    async def start(self, timeout_s: float = 30.0) -> None:
        if self._task is None:
            conn = await self._stack.enter_async_context(open_postgres(self._postgres_url, application_name="bms-bridge"))
            redis = aioredis.Redis.from_url(self._redis_url, decode_responses=False)
            self._stack.push_async_callback(redis.aclose)
            letters = DeadLetterStore(conn, redis, key_prefix=self._redis_prefix)
            self._bridge = MqttBridge(
                self._config, ShardRouter(self._namespace, self._config.max_batch_attempts), letters
            )
            self._task = asyncio.get_running_loop().create_task(self._bridge.run())
            # Ingest and rejects, read from the bridge's own counters (runtime.metrics).
            self._metrics_task = asyncio.get_running_loop().create_task(
                export_every(EXPORT_INTERVAL_S, self._export_metrics, f"bridge worker {self._config.worker_index}")
            )
        assert self._bridge is not None
        await asyncio.wait_for(self._bridge.subscribed.wait(), timeout_s)

    async def stats(self) -> BridgeStats:
        if self._bridge is None:
            raise RuntimeError("Cannot read stats: the bridge worker has not been started.")
        return self._bridge.stats()

    async def _export_metrics(self) -> None:
        if self._bridge is not None:
            self._metrics.update(self._bridge.stats())

    async def stop(self) -> None:
        if self._metrics_task is not None:
            self._metrics_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._metrics_task
        if self._bridge is not None and self._task is not None:
            self._bridge.stop()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._stack.aclose()


def start_bridge_worker(
    config: BridgeConfig, namespace: str, postgres_url: str, redis_url: str, redis_prefix: str = "bms:"
) -> ActorHandle[Any]:
    # Ray types ``.remote()`` as ``ActorHandle[T] | type[T]``; what comes back is a handle.
    return cast(
        "ActorHandle[Any]",
        ray.remote(BridgeWorker)
        # The broker keeps unacknowledged messages in our persistent session, so a
        # restarted worker picks up where the dead one stopped.
        .options(**actor_options("bridge", bridge_actor_name(config.worker_index), namespace))
        .remote(config, namespace, postgres_url, redis_url, redis_prefix),
    )
