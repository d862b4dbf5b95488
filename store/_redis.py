"""Checks shared by the Redis-backed stores."""

from __future__ import annotations

import redis.asyncio as aioredis

from store.errors import StoreUsageError

__all__ = ["as_bytes", "require_bytes_responses"]


def as_bytes(value: object) -> bytes:
    """A reply value of a bytes-returning client, typed as bytes (redis types it as a union)."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    raise TypeError(f"Expected a bytes reply from Redis, got {type(value).__name__}.")


def require_bytes_responses(client: aioredis.Redis, owner: str) -> None:
    """Raise :class:`StoreUsageError` when ``client`` decodes replies to ``str``.

    The stores keep raw bytes (JSON documents, truncated MQTT payloads) that need not be
    valid UTF-8, so they need the client's default ``decode_responses=False``.
    """
    if client.connection_pool.connection_kwargs.get("decode_responses"):
        raise StoreUsageError(
            f"Expected a Redis client with decode_responses=False for {owner}, got one that "
            "decodes replies to str; create it with redis.asyncio.Redis.from_url(url)."
        )
